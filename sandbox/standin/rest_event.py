"""REST methods of event binding: ``event.bind``, ``event.unbind``, ``event.get``."""

from __future__ import annotations

from .errors import ApiError
from .handlers import check_handler
from .rest import method


def _mine(binding, grant):
    """Handlers belong to the app that bound them (event.get lists "the application's" handlers)."""
    return binding.get("app", grant.portal._standin.client_id) == grant.client_id


@method("event.bind", doc="api-reference/events/event-bind.md")
def event_bind(portal, params, grant):
    p = {str(k).lower(): v for k, v in params.items()}
    event = str(p.get("event") or "").strip().upper()
    handler = str(p.get("handler") or "").strip()
    auth_type = str(p.get("auth_type") or "0")
    if not event.startswith("ON"):
        raise ApiError("ERROR_EVENT_NOT_FOUND", "Event not found")
    if not handler:
        raise ApiError("ERROR_ARGUMENT", "Argument 'handler' is null or empty", argument="handler")
    check_handler(portal._standin, handler)
    with portal._standin.lock:
        for b in portal.bindings["events"]:
            if (b["event"], b["handler"], b["auth_type"]) == (event, handler, auth_type) and _mine(b, grant):
                raise ApiError("ERROR_CORE", "Unable to set event handler: Handler already binded")
        portal.bindings["events"].append(
            {"id": portal._new_id(), "event": event, "handler": handler, "auth_type": auth_type, "app": grant.client_id}
        )
    return True


@method("event.unbind", doc="api-reference/events/event-unbind.md")
def event_unbind(portal, params, grant):
    p = {str(k).lower(): v for k, v in params.items()}
    event = str(p.get("event") or "").strip().upper()
    handler = str(p.get("handler") or "").strip()
    auth_type = p.get("auth_type")
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
        return [
            {"event": b["event"], "handler": b["handler"], "auth_type": b["auth_type"], "offline": 0}
            for b in portal.bindings["events"]
            if _mine(b, grant)
        ]
