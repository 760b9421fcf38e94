"""Offline events: the portal's queue of them, ``event.offline.get`` / ``.list`` / ``.clear`` / ``.error``,
and the ``ONOFFLINEEVENT`` notification.

Pages (api-reference/events/): offline-events.md (the mechanism), event-offline-get.md, event-offline-list.md,
event-offline-clear.md, event-offline-error.md, on-offline-event.md; event-bind.md (``event_type=offline``,
``options.minTimeout``; the binding itself is ``rest_event.py``); common/system/feature-get.md
(``rest_offline_extended``, answered in ``rest_app.py``).

What the stand-in keeps, as offline-events.md describes it: one record per object and event, not one per
change ("If the same deal is modified 1000 times, only one record with the timestamp of the last change will
remain"), holding "the event name and the identifiers of the modified object". A record is
``{ID, TIMESTAMP_X, EVENT_NAME, EVENT_DATA, EVENT_ADDITIONAL, MESSAGE_ID, PROCESS_ID, ERROR}`` (the fields of
event-offline-list.md's example). ``event.offline.get`` with ``clear=0`` marks what it hands out with a
``process_id`` and hides it from other requests; ``event.offline.clear`` deletes by process (and ``id`` or
``message_id``); ``event.offline.error`` marks records as erroneous (returned only with ``error=1``); a
reserved record is kept 30 days, then deleted.

Choices the pages do not settle (each is listed in docs/bitrix24.md as unverified, with what would settle it):

- ``EVENT_DATA``: the event's ``data`` reduced to ids. For the connector message events (``MESSAGES``) each
  element keeps its ``im`` and ``chat`` blocks (Bitrix24's chat and message ids, the outside chat id) and
  loses ``message`` (text, author); other events keep their ``data`` as it is (it holds ids or a bare id).
  The pages' examples show ``false`` for CRM events.
- ``MESSAGE_ID``: a number per object (event name and ``EVENT_DATA``), given in order and kept by the object's
  later records, so its next change finds its record. The pages' examples show ``"1"``, ``"2"`` (equal to ``ID``);
  b24pysdk reads it as an integer (``objects/event/offline.py``: ``IntField("MESSAGE_ID")``; its
  ``event.offline.clear``/``.error`` take integers). ``EVENT_ADDITIONAL`` is ``false`` as in the examples.
- A change to an object whose record is reserved (``PROCESS_ID`` set) or marked erroneous adds a new record;
  an unreserved record only takes the new ``TIMESTAMP_X``.
- ``event.offline.get`` with a ``process_id``: first the records still reserved under it (not cleared, not
  erroneous), then unreserved ones, all marked with it; without one, a new id (32 hex digits).
- ``error=1`` returns the erroneous records whatever process reserved them; ``event.offline.error`` without
  ``message_id`` marks every record of the process.
- ``ONOFFLINEEVENT`` is sent when a *new* record is added (on-offline-event.md: "notifies about new entries");
  ``minTimeout`` (default 1): ``0`` one notification per call that added records, ``n`` at most one per ``n``
  seconds, and nothing is sent later for records added in between (the next new record after the pause is).
- Without ``rest_offline_extended`` (``Portal.set_feature``) the offline binding and these methods answer
  403 ``ACCESS_DENIED`` ("Offline events are not available on this plan"), and nothing is recorded.
- ``auth_connector`` (separate queues per source) is not modelled: every record is the app's one queue.
"""

from __future__ import annotations

import json
import secrets

from .errors import ApiError
from .http import iso, truthy
from .rest import LIST_PAGE_SIZE, Page, list_start, method

__all__ = ["FEATURE", "record", "records", "dump_state", "load_state", "offline_bindings", "RESERVED_SECONDS"]

_DOC = "api-reference/events/"
FEATURE = "rest_offline_extended"  # api-reference/common/system/feature-get.md
RESERVED_SECONDS = 30 * 86400  # offline-events.md: "The reserved batch is stored for up to 30 days"
_GET_DEFAULT_LIMIT = 50  # event-offline-get.md: limit, "Default is 50"
_NOT_ON_PLAN = "Offline events are not available on this plan"  # not documented (see above)
_GET_FIELDS = ("ID", "TIMESTAMP_X", "EVENT_NAME", "MESSAGE_ID")  # event-offline-get.md's filter and order fields
_LIST_FIELDS = (*_GET_FIELDS, "PROCESS_ID", "ERROR")  # event-offline-list.md adds these two


class _Queue:
    """One portal's offline records (every app's, each record naming its app) and the notification clock."""

    def __init__(self):
        self.records: list[dict] = []
        self.next_id = 1
        self.messages: dict[str, int] = {}  # an object's key (event name and EVENT_DATA) -> its MESSAGE_ID
        self.notified_at: dict[str, float] = {}  # app -> when ONOFFLINEEVENT was last sent


def _queue(portal) -> _Queue:
    with portal._standin.lock:
        if not hasattr(portal, "_offline"):
            portal._offline = _Queue()
        return portal._offline


def records(portal, client_id=None) -> list[dict]:
    """A copy of the app's records (ours by default), oldest first, ``TIMESTAMP_X`` as the stand-in's clock."""
    client_id = client_id or portal._standin.client_id
    queue = _queue(portal)
    with portal._standin.lock:
        return [{k: v for k, v in r.items() if k != "app"} for r in queue.records if r["app"] == client_id]


def dump_state(portal) -> dict | None:
    """The queue as JSON data for the sandbox's state file (the lock is held)."""
    queue = getattr(portal, "_offline", None)
    if queue is None:
        return None
    return {
        "records": queue.records,
        "next_id": queue.next_id,
        "notified_at": queue.notified_at,
        "messages": queue.messages,
    }


def load_state(portal, saved: dict) -> None:
    """Put back what ``dump_state`` kept (the lock is held)."""
    queue = _Queue()
    queue.records = [dict(r) for r in saved.get("records") or []]
    queue.next_id = int(saved.get("next_id") or 1)
    queue.notified_at = dict(saved.get("notified_at") or {})
    queue.messages = {k: int(v) for k, v in (saved.get("messages") or {}).items()}
    portal._offline = queue


def offline_bindings(portal, event=None, client_id=None) -> list[dict]:
    """The app's offline bindings (``event.bind`` with ``event_type=offline``), of one event or all."""
    with portal._standin.lock:
        return [
            dict(b)
            for b in portal.bindings.setdefault("offline", [])
            if (event is None or b["event"] == event) and (client_id is None or b["app"] == client_id)
        ]


def _ids_only(data):
    """offline-events.md: a record "contains the event name and the identifiers of the modified object"."""
    if isinstance(data, dict) and isinstance(data.get("MESSAGES"), list):
        messages = [
            {key: m[key] for key in ("im", "chat") if key in m} for m in data["MESSAGES"] if isinstance(m, dict)
        ]
        return {**{k: v for k, v in data.items() if k != "MESSAGES"}, "MESSAGES": messages}
    return data


def _object_key(app, event, data) -> str:
    return json.dumps([app, event, data], sort_keys=True, separators=(",", ":"), default=str)


def record(portal, event: str, data) -> list[str]:
    """An event happened on the portal: put it in the offline queue of every app that bound it offline.

    Returns the apps (client ids) for which a *new* record was added; each is then notified with
    ONOFFLINEEVENT as its binding's ``minTimeout`` allows (``notify``). Nothing before ``installFinish`` (as for
    online events, installation-finish.md) or without the feature.
    """
    event = event.upper()
    if event == "ONOFFLINEEVENT":
        return []  # the notification about the queue is never queued itself
    standin = portal._standin
    with standin.lock:
        if not portal.install_finished or not portal.feature_available(FEATURE):
            return []
        apps = sorted({b["app"] for b in portal.bindings.setdefault("offline", []) if b["event"] == event})
    if not apps:
        return []
    data = _ids_only(data)
    queue = _queue(portal)
    added = []
    now = standin.clock()
    with standin.lock:
        for app in apps:
            message_id = str(queue.messages.setdefault(_object_key(app, event, data), len(queue.messages) + 1))
            same = next(
                (
                    r
                    for r in queue.records
                    if r["app"] == app and r["MESSAGE_ID"] == message_id and not r["PROCESS_ID"] and not r["ERROR"]
                ),
                None,
            )
            if same is not None:
                same["TIMESTAMP_X"] = now  # "only one record with the timestamp of the last change will remain"
                continue
            queue.records.append(
                {
                    "ID": queue.next_id,
                    "TIMESTAMP_X": now,
                    "EVENT_NAME": event,
                    "EVENT_DATA": json.loads(json.dumps(data)),
                    "EVENT_ADDITIONAL": False,
                    "MESSAGE_ID": message_id,
                    "PROCESS_ID": "",
                    "ERROR": 0,
                    "reserved_at": None,
                    "app": app,
                }
            )
            queue.next_id += 1
            added.append(app)
    return added


def notify(portal, apps: list[str]) -> list[dict]:
    """on-offline-event.md: ONOFFLINEEVENT, online, to each app's bound handlers, as ``minTimeout`` allows."""
    standin = portal._standin
    queue = _queue(portal)
    deliveries = []
    for app in apps:
        with standin.lock:
            bound = [
                b
                for b in portal.bindings["events"]
                if b["event"] == "ONOFFLINEEVENT" and b.get("app", standin.client_id) == app
            ]
            if not bound:
                continue
            timeout = min(_min_timeout(b) for b in bound)
            now = standin.clock()
            last = queue.notified_at.get(app)
            if timeout > 0 and last is not None and now - last < timeout:
                continue  # "the next will not be sent until the specified number of seconds has passed"
            queue.notified_at[app] = now
        if app != standin.client_id:
            continue  # another app's handlers are not ours to reach
        payload = portal.event_payload("ONOFFLINEEVENT", with_tokens=True)
        deliveries += portal.deliver_event("ONOFFLINEEVENT", handlers=[b["handler"] for b in bound], payload=payload)
    return deliveries


def _min_timeout(binding) -> float:
    options = binding.get("options") or {}
    try:
        return max(float(options.get("minTimeout", 1)), 0.0)  # event-bind.md: "Default is 1"
    except (TypeError, ValueError):
        return 1.0


# --- the methods -----------------------------------------------------------------------------------------
def _check(portal, grant):
    """Every event.offline.* page: "Who can execute the method: administrator"; and the plan's feature."""
    if not portal.is_admin(grant.user_id):
        raise ApiError("ACCESS_DENIED", "Access denied!")
    if not portal.feature_available(FEATURE):
        raise ApiError("ACCESS_DENIED", _NOT_ON_PLAN)


def _expire(portal, queue):
    """offline-events.md: a reserved batch "is stored for up to 30 days and is then automatically deleted"."""
    now = portal._standin.clock()
    queue.records[:] = [
        r for r in queue.records if not (r["reserved_at"] is not None and now - r["reserved_at"] > RESERVED_SECONDS)
    ]


def _value(record, field):
    value = record[field]
    if field == "TIMESTAMP_X":
        return iso(value)
    if field in ("ID", "ERROR"):
        return int(value)
    return str(value)


def _matches(record, conditions, fields):
    """Bitrix24's filter keys: the operation before the field name (``=ID``, ``>=ID``, ``!EVENT_NAME``, ``ID``)."""
    for key, wanted in conditions.items():
        stripped = str(key).lstrip("=<>!")
        operation = str(key)[: len(str(key)) - len(stripped)] or "="
        field = stripped.upper()
        if field not in fields:
            continue  # not documented: an unknown field; ignored
        have = _value(record, field)
        options = wanted if isinstance(wanted, list) else [wanted]
        try:
            options = [int(v) if isinstance(have, int) else str(v) for v in options]
        except (TypeError, ValueError):
            return False
        if operation in ("=", "!", "!="):
            if (have in options) == (operation != "="):
                return False
            continue
        target = options[0]
        compare = {">": have > target, ">=": have >= target, "<": have < target, "<=": have <= target}
        if not compare.get(operation, True):
            return False
    return True


def _ordered(found, order, fields, default):
    order = order if isinstance(order, dict) and order else default
    for field, direction in reversed(list(order.items())):
        field = str(field).upper()
        if field in fields:
            found.sort(key=lambda r, f=field: _value(r, f), reverse=str(direction).upper() == "DESC")
    return found


def _shown(record, *, listing: bool):
    shown = {
        "ID": str(record["ID"]),
        "TIMESTAMP_X": iso(record["TIMESTAMP_X"]),
        "EVENT_NAME": record["EVENT_NAME"],
        "EVENT_DATA": record["EVENT_DATA"],
        "EVENT_ADDITIONAL": record["EVENT_ADDITIONAL"],
        "MESSAGE_ID": record["MESSAGE_ID"],
    }
    if listing:  # event-offline-list.md's example; event-offline-get.md's shows neither
        shown["PROCESS_ID"] = record["PROCESS_ID"]
        shown["ERROR"] = str(record["ERROR"])
    return shown


def _int(value, default):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _ids(value) -> list[str]:
    if isinstance(value, dict):
        value = list(value.values())
    if value is None or value == "":
        return []
    return [str(v) for v in (value if isinstance(value, list) else [value])]


@method("event.offline.get", doc=_DOC + "event-offline-get.md")
def offline_get(portal, params, grant):
    _check(portal, grant)
    p = {str(k).lower(): v for k, v in params.items()}
    clear = truthy(p["clear"]) if "clear" in p else True  # "Default is 1"
    errors = truthy(p.get("error") or "0")
    limit = max(_int(p.get("limit"), _GET_DEFAULT_LIMIT), 0)
    given = str(p.get("process_id") or "")
    conditions = p.get("filter") if isinstance(p.get("filter"), dict) else {}
    queue = _queue(portal)
    with portal._standin.lock:
        _expire(portal, queue)
        mine = [r for r in queue.records if r["app"] == grant.client_id and _matches(r, conditions, _GET_FIELDS)]
        if errors:
            candidates = [r for r in mine if r["ERROR"]]
        else:
            again = [r for r in mine if not r["ERROR"] and given and r["PROCESS_ID"] == given]
            candidates = again + [r for r in mine if not r["ERROR"] and not r["PROCESS_ID"]]
        default = {"TIMESTAMP_X": "ASC", "ID": "ASC"}  # "Default is [TIMESTAMP_X:ASC]" (ties by ID)
        chosen = _ordered(candidates, p.get("order"), _GET_FIELDS, default)[:limit] if limit else []
        shown = [_shown(r, listing=False) for r in chosen]
        if clear:
            gone = {id(r) for r in chosen}
            queue.records[:] = [r for r in queue.records if id(r) not in gone]
            return {"process_id": None, "events": shown}
        process_id = given or secrets.token_hex(16)
        now = portal._standin.clock()
        for r in chosen:
            r["PROCESS_ID"], r["reserved_at"] = process_id, now
        return {"process_id": process_id, "events": shown}


@method("event.offline.list", doc=_DOC + "event-offline-list.md")
def offline_list(portal, params, grant):
    _check(portal, grant)
    p = {str(k).lower(): v for k, v in params.items()}
    conditions = p.get("filter") if isinstance(p.get("filter"), dict) else {}
    start = list_start(p)
    queue = _queue(portal)
    with portal._standin.lock:
        _expire(portal, queue)
        mine = [r for r in queue.records if r["app"] == grant.client_id and _matches(r, conditions, _LIST_FIELDS)]
        found = [_shown(r, listing=True) for r in _ordered(mine, p.get("order"), _LIST_FIELDS, {"ID": "ASC"})]
    if start == -1:
        return Page(found[:LIST_PAGE_SIZE])
    page = found[start : start + LIST_PAGE_SIZE]
    following = start + LIST_PAGE_SIZE
    return Page(page, next=following if following < len(found) else None, total=len(found))


@method("event.offline.clear", doc=_DOC + "event-offline-clear.md")
def offline_clear(portal, params, grant):
    _check(portal, grant)
    p = {str(k).lower(): v for k, v in params.items()}
    process_id = str(p.get("process_id") or "")
    if not process_id:  # not documented: the answer to a missing process_id
        raise ApiError("ERROR_ARGUMENT", "Argument 'process_id' is null or empty", argument="process_id")
    ids, message_ids = _ids(p.get("id")), _ids(p.get("message_id"))
    queue = _queue(portal)
    with portal._standin.lock:

        def cleared(r):
            if r["app"] != grant.client_id or r["PROCESS_ID"] != process_id:
                return False
            if ids:  # "message_id ... Ignored if the id parameter is specified"
                return str(r["ID"]) in ids
            return not message_ids or r["MESSAGE_ID"] in message_ids

        queue.records[:] = [r for r in queue.records if not cleared(r)]
    return True  # b24pysdk's tests clear an unknown process_id and expect true


@method("event.offline.error", doc=_DOC + "event-offline-error.md")
def offline_error(portal, params, grant):
    _check(portal, grant)
    p = {str(k).lower(): v for k, v in params.items()}
    process_id = str(p.get("process_id") or "")
    if not process_id:
        raise ApiError("ERROR_ARGUMENT", "Argument 'process_id' is null or empty", argument="process_id")
    message_ids = _ids(p.get("message_id"))
    queue = _queue(portal)
    with portal._standin.lock:
        for r in queue.records:
            if (
                r["app"] == grant.client_id
                and r["PROCESS_ID"] == process_id
                and (not message_ids or r["MESSAGE_ID"] in message_ids)
            ):
                r["ERROR"] = 1
    return True
