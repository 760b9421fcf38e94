"""Helpers shared by the tests: portal rows and grants made by hand, and a local HTTP server.

Fixtures stay in tests/conftest.py (and the conftest of each folder); what is here is plain functions, so
a test module imports what it uses by name.
"""

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from django.db import connection
from django.utils import timezone

from bitrix24.oauth import TokenGrant
from openlines.models import Channel
from portals.models import Portal, PortalEvent

ROOT = Path(__file__).resolve().parents[1]

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


def kinds(portal: Portal) -> list[str]:
    """The portal's history (PortalEvent kinds), oldest first."""
    return list(PortalEvent.objects.filter(portal_id=portal.pk).order_by("pk").values_list("kind", flat=True))


def portal_snapshot(portal: Portal) -> tuple:
    """Everything a refused request must leave as it was: the portal's secrets, state, last error, its
    channels and its history."""
    row = Portal.objects.get(pk=portal.pk)
    channels = list(
        Channel.objects.filter(portal_id=portal.pk).order_by("pk").values_list("state", "line_id", "secret")
    )
    history = list(row.events.order_by("pk").values_list("pk", "kind"))
    return (
        row.access_token,
        row.refresh_token,
        row.application_token,
        row.status,
        row.installed_by,
        row.last_error,
        channels,
        history,
    )


def database_url() -> str:
    """The test database as a DATABASE_URL, for the processes a test starts (workers, gunicorn, commands)."""
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    return f"sqlite:///{db['NAME']}"


def free_port() -> int:
    """A port nothing listens on right now (for a process the test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def in_threads(target, count: int, *, timeout: float = 60) -> None:
    """Run `target()` in `count` threads at once and wait for them (at most `timeout` seconds each); each thread
    closes its own database connection when done (the test database is dropped at the end)."""

    def run():
        try:
            target()
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)


def run_together(script: str, *args: str, count: int, env: dict, timeout: float = 120) -> list[tuple[str, str]]:
    """Start `count` Python processes running `script` with `args` in the project folder, let them finish
    django.setup(), release them at once (a line on their stdin: the script waits for it), and return each one's
    (stdout stripped, stderr); each must exit 0."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args],
            cwd=ROOT,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(count)
    ]
    time.sleep(2.5)  # let every process finish django.setup()
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    outputs = [process.communicate(timeout=timeout) for process in processes]
    for process, (_out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-2000:]
    return [(out.strip(), err) for out, err in outputs]


def start_server(handler, *, wrap=None) -> ThreadingHTTPServer:
    """A threaded HTTP server on 127.0.0.1 answering with `handler` (a BaseHTTPRequestHandler class), serving
    until `stop_server`: what a test puts at the HTTP boundary when the stand-in has no switch for the answer
    it needs. `server.url` is `http://127.0.0.1:<port>` (`server.port`); `wrap` may turn its socket into TLS."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if wrap is not None:
        server.socket = wrap(server.socket)
    server.port = server.server_address[1]
    server.url = f"http://127.0.0.1:{server.port}"
    # A short poll: stop_server waits for the loop to notice, and these servers live for one test only.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    return server


def stop_server(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


@contextlib.contextmanager
def local_server(handler, *, wrap=None):
    """`start_server` for the length of a `with` block; yields the server."""
    server = start_server(handler, wrap=wrap)
    try:
        yield server
    finally:
        stop_server(server)


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
