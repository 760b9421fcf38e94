"""Helpers shared by the tests: portal rows and grants made by hand, and a local HTTP server.

Fixtures stay in tests/conftest.py (and the conftest of each folder); what is here is plain functions, so
a test module imports what it uses by name.
"""

import contextlib
import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from django.utils import timezone

from bitrix24.oauth import TokenGrant
from portals.models import Portal

# A portal row's state as the state machine leaves it. "bound" is what an install completes with (placements
# and events bound, the application_token known): only a bound portal becomes active.
_STATES = {
    "new": {"status": Portal.Status.NEW},
    "new (bound)": {"status": Portal.Status.NEW, "bound": True},
    "active": {"status": Portal.Status.ACTIVE, "bound": True},
    "blocked": {"status": Portal.Status.BLOCKED, "bound": True},
    "blocked (never bound)": {"status": Portal.Status.BLOCKED},
    "uninstalled": {"status": Portal.Status.UNINSTALLED, "tokens": False},
}
PORTAL_STATES = tuple(_STATES)


def make_portal(state: str = "active", *, member_id: str = "m1", domain: str = "a.bitrix24.com", **fields) -> Portal:
    """A stored Portal row in `state` (one of PORTAL_STATES), with tokens unless uninstalled; `fields` override."""
    shape = _STATES[state]
    now = timezone.now()
    values = {
        "member_id": member_id,
        "domain": domain,
        "client_endpoint": f"https://{domain}/rest/",
        "status": shape["status"],
        "installed_at": now,
    }
    if shape.get("tokens", True):
        values.update(
            access_token=f"access-{member_id}",
            refresh_token=f"refresh-{member_id}",
            access_expires_at=now + timedelta(hours=1),
        )
    if shape.get("bound"):
        values.update(bound_at=now, application_token=f"app-token-{member_id}")
    if shape["status"] == Portal.Status.UNINSTALLED:
        values.update(uninstalled_at=now)
    values.update(fields)
    return Portal.objects.create(**values)


def token_grant(portal: Portal, **overrides) -> TokenGrant:
    """A validated grant for that portal, as bitrix24.oauth.parse_grant returns one (no HTTP)."""
    values = {
        "access_token": "granted-access",
        "refresh_token": "granted-refresh",
        "expires_in": 3600,
        "member_id": portal.member_id,
        "client_endpoint": portal.client_endpoint,
        "domain": portal.domain,
        "status": portal.app_status,
        "user_id": "1",
    }
    values.update(overrides)
    return TokenGrant(**values)


@contextlib.contextmanager
def local_server(handler, *, wrap=None):
    """A threaded HTTP server on 127.0.0.1 answering with `handler` (a BaseHTTPRequestHandler class): what a
    test puts at the HTTP boundary when the stand-in has no switch for the answer it needs. Yields the server
    (`server.url` is `http://127.0.0.1:<port>`); `wrap` may turn its socket into TLS. Stopped on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if wrap is not None:
        server.socket = wrap(server.socket)
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that writes nothing to stderr; `answer(status, body, headers)` sends a whole answer."""

    def log_message(self, *args):
        pass

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status: int, body: bytes | dict | list, headers: dict | None = None) -> None:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
