"""Offline events: what Bitrix24 could not deliver, pulled from the portal's own queue into the inbox.

Bitrix24 never resends an event (api-reference/events/index.md): when our server is down or answers an
error, the online delivery is lost. Every event the app handles is therefore also bound offline
(api-reference/events/offline-events.md; portals/install.py binds both), and Bitrix24 keeps, per object,
a record of its latest change with the object's ids. A *pull* fetches those records and feeds each through
the inbox like any event: stored as an InboxItem (`source` offline, `queue.accept_offline`), handled by the
same registered handler. Handlers confirm with the portal anyway, so a record that carries only ids is
enough; one seen online too is applied once (queue.idempotency_key says why and how).

One pull of one portal, a batch request per page (settings/how-to-call-rest-api/batch.md):

1. `event.offline.get` with `clear=0` and our `process_id` (event-offline-get.md): the records are reserved
   for us and hidden from other requests; the same process_id fetches again what a pull that stopped
   halfway left reserved. Pages of 50, oldest record (`ID`) first, at most B24_OFFLINE_PULL_MAX records.
2. each record is stored in the inbox (its own short transaction, committed before step 3);
3. `event.offline.clear` with the process_id and the ids of the records stored (event-offline-clear.md),
   and `event.offline.error` with the MESSAGE_IDs of those that cannot be (event-offline-error.md: an event
   nobody registered, an EVENT_DATA that is no object): Bitrix24 keeps those aside, marked, instead of
   handing them out again. Steps 3 of a page and 1 of the next share one batch request.

Its cost per portal is bounded: at most ceil(B24_OFFLINE_PULL_MAX / 50) + 1 requests, each paced by the
client's limiter (bitrix24/limits.py) like every other call of the portal; an empty queue costs one. A pull
that stopped at the cap says so (`more`) and its caller queues another. One pull per portal at a time
(a short single-flight in the cache). Beat pulls every serving portal every B24_OFFLINE_PULL_INTERVAL
seconds; ONOFFLINEEVENT (on-offline-event.md), bound online, wakes a pull at once.

The portals app answers, through the directory (inbox/registry.py), which portals to pull with which
client, and what an error of the pull means (the app gone from the portal, offline events refused): the
inbox imports nothing above it. Call a pull outside a transaction: what it stores must be committed
before it clears the records in Bitrix24.
"""

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass

from celery import current_app
from django.conf import settings

from bitrix24 import limits, wire
from bitrix24.errors import LimitWaitExceeded, RestError, TransportError

from . import queue
from .registry import Later, Refused, Retry, directory
from .registry import register as register_handler

log = logging.getLogger(__name__)

ONOFFLINEEVENT = "ONOFFLINEEVENT"  # api-reference/events/on-offline-event.md
FEATURE = "rest_offline_extended"  # api-reference/common/system/feature-get.md
PAGE = 50  # event-offline-get.md: limit, "Default is 50"
PULL_TASK = "inbox.pull_offline_chunk"
_DATA_MAX = 64 * 1024  # bytes of JSON an offline record's EVENT_DATA may take in the inbox
# Pulls ONOFFLINEEVENT may wake per portal (a burst, then per minute). Bitrix24 sends at most one per minTimeout
# (B24_OFFLINE_MIN_TIMEOUT, a minute); every user of a portal knows its application_token and could post more:
# past this, beat's pull takes over.
_WAKE_BURST, _WAKE_PER_MINUTE = 4, 4.0
# Errors that say "try again later", not "this portal will not be pulled".
_TRANSIENT = frozenset({"QUERY_LIMIT_EXCEEDED", "OPERATION_TIME_LIMIT", "INTERNAL_SERVER_ERROR"})


@dataclass
class Pulled:
    """What one pull did."""

    fetched: int = 0  # records Bitrix24 handed out
    stored: int = 0  # new inbox rows (the rest were rows already stored: a record fetched again)
    refused: int = 0  # records reported with event.offline.error
    more: bool = False  # stopped at B24_OFFLINE_PULL_MAX: records may be left
    skipped: str = ""  # why nothing was asked
    failed: str = ""  # the error code that ended it
    transient: bool = False  # the failure may pass (limits, transport)
    # A Bitrix24 limit ended it: seconds until the portal may be asked again (bitrix24.limits.retry_in); the
    # pull's calls wait out no limit in the worker (the directory's offline client has limit_retries=0).
    limited_for: float | None = None

    def __str__(self) -> str:
        if self.skipped:
            return f"skipped: {self.skipped}"
        text = f"{self.fetched} offline record(s), {self.stored} new, {self.refused} refused"
        if self.more:
            text += "; more left"
        if self.failed:
            text += f"; failed: {self.failed}"
        return text


def process_id(member_id: str) -> str:
    """Our process_id for the portal's queue: the same on every pull (so a pull fetches again what a crashed one
    left reserved, event-offline-get.md "re-select any unprocessed records"), and nobody else's."""
    digest = hmac.new(settings.SECRET_KEY.encode(), f"offline:{member_id}".encode(), hashlib.sha256).hexdigest()
    return f"b24widget{digest[:23]}"


def pull(member_id: str, *, limit: int | None = None) -> Pulled:
    """Pull the portal's offline queue into the inbox (at most `limit` records, B24_OFFLINE_PULL_MAX by default)."""
    client = directory().offline_client(member_id)
    if client is None:
        return Pulled(skipped="no serving portal with offline events bound")
    with limits.single_flight(f"offline-pull:{member_id}", settings.B24_OFFLINE_PULL_LEASE) as held:
        if not held:
            return Pulled(skipped="another pull of this portal is running")
        pulled = Pulled()
        try:
            _pull(client, member_id, limit or settings.B24_OFFLINE_PULL_MAX, pulled)
        except RestError as exc:
            pulled.failed = exc.code
            pulled.transient = isinstance(exc, (TransportError, LimitWaitExceeded)) or exc.code in _TRANSIENT
            pulled.limited_for = limits.retry_in(member_id, exc)
            log.warning(
                "offline pull failed",
                extra={"member_id": member_id, "code": exc.code, "method": exc.method, "fetched": pulled.fetched},
            )
            if not pulled.transient:
                directory().offline_failed(member_id, code=exc.code, description=exc.description)
    log.info(
        "offline pull",
        extra={
            "member_id": member_id,
            "fetched": pulled.fetched,
            "stored": pulled.stored,
            "refused": pulled.refused,
            "more": pulled.more,
        },
    )
    return pulled


def _pull(client, member_id: str, budget: int, pulled: Pulled) -> None:
    own = process_id(member_id)
    to_clear: dict[str, list[str]] = {}  # process_id -> ids of the records stored
    to_refuse: dict[str, list[str]] = {}  # process_id -> MESSAGE_IDs of those that cannot be
    asking = True
    while True:
        commands: dict = {}
        # Clear and refuse first: a batch runs its commands in order, and the next page must not fetch again
        # (under our process_id) what this pull has just stored.
        for n, (pid, ids) in enumerate(to_clear.items()):
            commands[f"clear_{n}"] = ("event.offline.clear", {"process_id": pid, "id": ids})
        for n, (pid, message_ids) in enumerate(to_refuse.items()):
            commands[f"error_{n}"] = ("event.offline.error", {"process_id": pid, "message_id": message_ids})
        want = min(PAGE, budget - pulled.fetched) if asking else 0
        if want > 0:
            commands["get"] = (
                "event.offline.get",
                {"process_id": own, "clear": 0, "limit": want, "order": {"ID": "ASC"}},
            )
        if not commands:
            return
        result = client.batch(commands)
        to_clear, to_refuse = {}, {}
        if "get" in commands:
            if "get" in result.errors:
                raise result.errors["get"]
            records, pid = _records(result.result.get("get"), own)
            for record in records:
                pulled.fetched += 1
                outcome = _store(member_id, record)
                if outcome is None:
                    message_id = wire.clip(record.get("MESSAGE_ID"), 64)
                    if message_id:
                        to_refuse.setdefault(pid, []).append(message_id)
                    pulled.refused += 1
                else:
                    to_clear.setdefault(pid, []).append(str(record["ID"]))
                    pulled.stored += outcome
            asking = len(records) >= want and pulled.fetched < budget
            pulled.more = len(records) >= want and pulled.fetched >= budget
        for key, error in result.errors.items():
            if key != "get":
                # What was stored is safe in the inbox; the records stay reserved under our process_id and the
                # next pull fetches them again (stored once: the same key).
                raise error


def _records(answer, own: str) -> tuple[list[dict], str]:
    """event-offline-get.md: `{process_id, events: [{ID, TIMESTAMP_X, EVENT_NAME, EVENT_DATA, EVENT_ADDITIONAL,
    MESSAGE_ID}]}`; the records in ID order (the order Bitrix24 queued them), and the process_id they are under."""
    events = answer.get("events") if isinstance(answer, dict) else None
    if not isinstance(events, list):
        raise TransportError("bad_answer", "event.offline.get answered without events", method="event.offline.get")
    records = [e for e in events if isinstance(e, dict) and wire.digits_or_empty(e.get("ID"))]
    records.sort(key=lambda e: int(wire.digits_or_empty(e["ID"])))
    pid = answer.get("process_id")
    return records, pid if isinstance(pid, str) and pid else own


def _store(member_id: str, record: dict) -> int | None:
    """1 (stored), 0 (stored before) or None (cannot be stored: reported with event.offline.error)."""
    name = record.get("EVENT_NAME")
    data = _data(record.get("EVENT_DATA"))
    if not isinstance(name, str) or not name or name.upper() == ONOFFLINEEVENT or data is None:
        log.warning(
            "offline record cannot be stored",
            extra={"member_id": member_id, "event": wire.clip(name, 64), "record": wire.clip(record.get("ID"), 20)},
        )
        return None
    stamp = wire.clip(record.get("TIMESTAMP_X"), 32)
    identity = "|".join((str(record["ID"]), wire.clip(record.get("MESSAGE_ID"), 64), stamp))
    try:
        _item, created = queue.accept_offline(name, member_id=member_id, data=data, record=identity, ts=stamp)
    except Refused as exc:
        log.warning("offline record refused", extra={"member_id": member_id, "event": name[:64], "reason": exc.reason})
        return None
    return 1 if created else 0


def _data(value) -> dict | None:
    """EVENT_DATA as the inbox keeps `data`: an object; `[]` (PHP's empty array) is `{}`, a bare id is
    `{"VALUE": id}` as /events/ keeps it (inbox/parsing.py); anything else (the docs' examples show `false`
    for CRM events) cannot be handled and is None."""
    if isinstance(value, list) and not value:
        return {}
    if isinstance(value, (str, int)) and not isinstance(value, bool) and len(str(value)) <= 64:
        return {"VALUE": str(value)}
    if not isinstance(value, dict):
        return None
    if len(json.dumps(value, ensure_ascii=True)) > _DATA_MAX:
        return None
    return value


def request_pull(member_id: str) -> bool:
    """Queue a pull of the portal (a follow-up of one that stopped at the cap); False when the broker is down
    (beat pulls again anyway)."""
    try:
        current_app.send_task(PULL_TASK, ([member_id],))
    except Exception:  # the broker is down: the next beat pull takes over
        log.warning("could not queue an offline pull", extra={"member_id": member_id})
        return False
    return True


# --- ONOFFLINEEVENT: the portal says its queue has new records ----------------------------------------------
def on_offline_event(item) -> str:
    """on-offline-event.md: `data` is empty, the event only says there is something to fetch: pull now."""
    if not limits.admit(f"offline-wake:{item.member_id}", per_minute=_WAKE_PER_MINUTE, burst=_WAKE_BURST):
        return "skipped: woken too often (beat's pull takes it)"
    pulled = pull(item.member_id)
    if pulled.limited_for is not None:
        # The portal's limit, not a failure: the event waits for its slot, no attempt counted (issue 26).
        raise Later(f"the offline pull met the portal's limit: {pulled.failed}", pulled.limited_for)
    if pulled.transient:
        raise Retry(f"the offline pull failed for now: {pulled.failed}")
    if pulled.more:
        request_pull(item.member_id)
    return str(pulled)


def register() -> None:
    """InboxConfig.ready(): ONOFFLINEEVENT comes through /events/ like any event (its application_token
    checked); not ordered: a pull waits for nothing, and the events it stores are ordered themselves."""
    register_handler(ONOFFLINEEVENT, on_offline_event, ordered=False)
