"""Handler URLs as ``placement.bind`` and ``event.bind`` check them.

api-reference/widgets/index.md ("Common Mistakes"): a HANDLER needs the ``http`` or ``https`` scheme
(else ``ERROR_UNSUPPORTED_PROTOCOL``) and a domain name (else ``ERROR_WRONG_HANDLER_URL``; "URLs without a
domain, including localhost, do not pass"). api-reference/events/event-bind.md only says the URL must be
reachable from outside; the stand-in applies the same check there (not documented: the error code).
The hosts in ``StandIn.local_handler_hosts`` pass anyway: the sandbox runs the app on this machine.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .errors import ApiError

__all__ = ["check_handler"]


def check_handler(standin, url):
    """Raise the portal's error for a handler URL it would not accept."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - a malformed port raises ValueError
    except ValueError:
        raise ApiError("ERROR_WRONG_HANDLER_URL", "Wrong handler URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ApiError("ERROR_UNSUPPORTED_PROTOCOL", "Unsupported protocol")
    if host.lower() in standin.local_handler_hosts:
        return
    labels = host.split(".")
    if len(labels) < 2 or not all(labels) or host.lower().endswith(".localhost") or parts.username:
        raise ApiError("ERROR_WRONG_HANDLER_URL", "Wrong handler URL")
