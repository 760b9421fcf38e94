"""App events: the payload Bitrix24 POSTs to a handler, and its delivery over HTTP.

Payloads follow ``api-reference/common/events/on-app-install.md``, ``on-app-uninstall.md`` and
``on-app-update.md``; handlers come from ``event.bind`` (``api-reference/events/event-bind.md``).
Events arrive form-encoded (``auth[...]``, ``data[...]``), as ``api-reference/events/index.md`` shows.
"""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from urllib.parse import urlencode

from .http import flatten, parse_php_params

__all__ = ["event_payload", "deliver_event", "data_of", "undelivered"]

# How much of the app's answer deliver_event keeps, and the User-Agent sent. Not documented: what the
# portals' event queue sends as User-Agent.
_EVENT_BODY_KEPT = 2000
_EVENT_USER_AGENT = "Bitrix24 Webhook Engine (b24widget stand-in)"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """An event POST is not re-sent elsewhere: a 3xx is the handler's answer."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


# No proxies: the handlers are local apps, and environment proxies must not see event payloads. One TLS context
# for every delivery (urllib would build one per https request: loading the CA store costs ~30 ms each).
_EVENT_OPENER = urllib.request.build_opener(
    urllib.request.ProxyHandler({}), _NoRedirect(), urllib.request.HTTPSHandler(context=ssl.create_default_context())
)


# on-app-install.md, on-app-update.md and api-reference/events/on-offline-event.md mark auth[access_token] and
# auth[refresh_token] required; settings/oauth/simple-way.md: "Event handlers usually do not receive
# refresh_token" otherwise.
_TOKENS_BY_DEFAULT = {"ONAPPINSTALL", "ONAPPUPDATE", "ONOFFLINEEVENT"}


def event_payload(portal, event, *, data=None, with_tokens=None, user_id="1", application_token=None, client_id=None):
    """The flat form fields Bitrix24 POSTs to an event handler."""
    event = event.upper()
    if with_tokens is None:
        with_tokens = event in _TOKENS_BY_DEFAULT
    defaults = {
        "ONAPPINSTALL": {
            "VERSION": str(portal.version),
            "ACTIVE": "Y",
            "INSTALLED": "Y",
            "LANGUAGE_ID": portal.language_id,
        },
        "ONAPPUNINSTALL": {"LANGUAGE_ID": portal.language_id, "CLEAN": "0"},
        "ONAPPUPDATE": {
            "VERSION": str(portal.version),
            "PREVIOUS_VERSION": str(max(portal.version - 1, 0)),
            "LANGUAGE_ID": portal.language_id,
        },
    }.get(event, {})
    payload = {"event": event, "event_handler_id": str(portal._event_handler_id(event))}
    flatten("data", {**defaults, **(data or {})}, payload)
    payload["ts"] = str(int(time.time()))
    auth = {
        "domain": portal.domain,
        "client_endpoint": portal.client_endpoint,
        "server_endpoint": portal._standin.server_endpoint,
        "member_id": portal.member_id,
    }
    # on-app-uninstall.md lists no status in auth; the install and update events carry it.
    if event != "ONAPPUNINSTALL":
        auth["status"] = portal.app_status
    auth["application_token"] = application_token or portal.application_token
    if with_tokens:
        tokens = portal.issue_tokens(user_id, client_id=client_id)
        auth.update(
            {
                "access_token": tokens["access_token"],
                "refresh_token": tokens["refresh_token"],
                "expires": str(tokens["expires"]),
                "expires_in": str(tokens["expires_in"]),
                "scope": portal.scope,
                "user_id": str(user_id),
            }
        )
    flatten("auth", auth, payload)
    return payload


def deliver_event(portal, event, handlers, payload, timeout):
    """POST ``payload`` form-encoded to each handler; one result entry per handler."""
    body = urlencode(payload).encode("utf-8")
    results = []
    for handler in handlers:
        entry = {
            "event": event.upper(),
            "member_id": portal.member_id,
            "handler": handler,
            "status": None,
            "body": "",
            "error": "",
            "at": time.time(),
        }
        request = urllib.request.Request(
            handler,
            data=body,
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded", "User-Agent": _EVENT_USER_AGENT},
        )
        try:
            with _EVENT_OPENER.open(request, timeout=timeout) as answer:
                entry["status"] = answer.status
                entry["body"] = answer.read(_EVENT_BODY_KEPT).decode("utf-8", "replace")
        except urllib.error.HTTPError as error:
            entry["status"] = error.code
            entry["body"] = error.read(_EVENT_BODY_KEPT).decode("utf-8", "replace")
            error.close()
        except (urllib.error.URLError, OSError) as error:
            entry["error"] = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
        results.append(entry)
    return results


def data_of(payload) -> object:
    """The ``data`` block of a flat payload, nested again (``data[MESSAGES][0][im][chat_id]``), or its bare value."""
    if "data" in payload:
        return payload["data"]
    return parse_php_params([(k, v) for k, v in payload.items() if k.startswith("data[")]).get("data", {})


def undelivered(portal, event, handler, reason):
    """The record of a delivery that was never sent (``Portal.app_unreachable``): no status, the reason."""
    return {
        "event": event.upper(),
        "member_id": portal.member_id,
        "handler": handler,
        "status": None,
        "body": "",
        "error": f"unreachable: {reason}",
        "at": time.time(),
    }
