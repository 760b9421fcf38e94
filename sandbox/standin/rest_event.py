"""REST methods of event binding: ``event.bind``, ``event.unbind``, ``event.get``.

Online bindings (a handler URL) live in ``portal.bindings["events"]``; offline ones (``event_type=offline``,
api-reference/events/offline-events.md: no handler, the portal keeps a queue instead, ``rest_offline.py``)
in ``portal.bindings["offline"]``. Offline bindings are for administrators only (event-bind.md,
event-unbind.md: "Access denied! Offline events binding requires administrator access rights").
"""

from __future__ import annotations

import json

from .errors import ApiError
from .handlers import check_handler
from .rest import method
from .rest_offline import FEATURE

_EVENT_TYPES = ("online", "offline")


def _mine(binding, grant):
    """Handlers belong to the app that bound them (event.get lists "the application's" handlers)."""
    return binding.get("app", grant.portal._standin.client_id) == grant.client_id


def _event_type(p):
    """event-bind.md, event-unbind.md: ``event_type`` is ``online|offline``, ``online`` by default."""
    value = str(p.get("event_type") or "online").strip().lower()
    if value not in _EVENT_TYPES:  # not documented: the answer to another value
        raise ApiError("ERROR_ARGUMENT", "Argument 'event_type' must be online or offline", argument="event_type")
    return value


def _options(p):
    """event-bind.md: ``options``, "the set of fields depends on the event" (ONOFFLINEEVENT: minTimeout).
    Form-encoded (``options[minTimeout]=30``) or, as b24pysdk sends it, a JSON string."""
    options = p.get("options")
    if isinstance(options, str) and options.strip():
        try:
            options = json.loads(options)
        except ValueError:
            options = {}
    return dict(options) if isinstance(options, dict) else {}


def _admin_only(portal, grant, what):
    if not portal.is_admin(grant.user_id):
        raise ApiError("ACCESS_DENIED", f"Access denied! Offline events {what} requires administrator access rights")


@method("event.bind", doc="api-reference/events/event-bind.md")
def event_bind(portal, params, grant):
    p = {str(k).lower(): v for k, v in params.items()}
    event = str(p.get("event") or "").strip().upper()
    handler = str(p.get("handler") or "").strip()
    auth_type = str(p.get("auth_type") or "0")
    if not event.startswith("ON"):
        raise ApiError("ERROR_EVENT_NOT_FOUND", "Event not found")
    if _event_type(p) == "offline":
        _admin_only(portal, grant, "binding")
        if not portal.feature_available(FEATURE):
            raise ApiError("ACCESS_DENIED", "Offline events are not available on this plan")  # not documented
        with portal._standin.lock:
            offline = portal.bindings.setdefault("offline", [])
            # Not documented: a second offline bind of the same event; answered as a second online one is.
            if any(b["event"] == event and _mine(b, grant) for b in offline):
                raise ApiError("ERROR_CORE", "Unable to set event handler: Handler already binded")
            offline.append({"id": portal._new_id(), "event": event, "app": grant.client_id})
        return True
    if not handler:
        raise ApiError("ERROR_ARGUMENT", "Argument 'handler' is null or empty", argument="handler")
    check_handler(portal._standin, handler)
    with portal._standin.lock:
        for b in portal.bindings["events"]:
            if (b["event"], b["handler"], b["auth_type"]) == (event, handler, auth_type) and _mine(b, grant):
                raise ApiError("ERROR_CORE", "Unable to set event handler: Handler already binded")
        portal.bindings["events"].append(
            {
                "id": portal._new_id(),
                "event": event,
                "handler": handler,
                "auth_type": auth_type,
                "app": grant.client_id,
                "options": _options(p),
            }
        )
    return True


@method("event.unbind", doc="api-reference/events/event-unbind.md")
def event_unbind(portal, params, grant):
    p = {str(k).lower(): v for k, v in params.items()}
    event = str(p.get("event") or "").strip().upper()
    handler = str(p.get("handler") or "").strip()
    auth_type = p.get("auth_type")
    if _event_type(p) == "offline":
        _admin_only(portal, grant, "unbinding")
        with portal._standin.lock:
            offline = portal.bindings.setdefault("offline", [])
            keep = [b for b in offline if not (_mine(b, grant) and (not event or b["event"] == event))]
            removed = len(offline) - len(keep)
            offline[:] = keep
        return {"count": removed}
    with portal._standin.lock:
        keep, removed = [], 0
        for binding in portal.bindings["events"]:
            if (
                _mine(binding, grant)
                and (not event or binding["event"] == event)
                and (not handler or binding["handler"] == handler)
                and (auth_type is None or binding["auth_type"] == str(auth_type or "0"))
            ):
                removed += 1
            else:
                keep.append(binding)
        portal.bindings["events"][:] = keep
    return {"count": removed}


@method("event.get", doc="api-reference/events/event-get.md")
def event_get(portal, params, grant):
    with portal._standin.lock:
        online = [
            {"event": b["event"], "handler": b["handler"], "auth_type": b["auth_type"], "offline": 0}
            for b in portal.bindings["events"]
            if _mine(b, grant)
        ]
        # event-get.md's example shows `offline: 0` rows only; an offline row has no handler (offline-events.md).
        offline = [
            {"event": b["event"], "handler": "", "auth_type": "0", "offline": 1}
            for b in portal.bindings.setdefault("offline", [])
            if _mine(b, grant)
        ]
    return online + offline
