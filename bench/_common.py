"""What the benches share: the environment, a throw-away database, the stand-in, figures and a header.

Each bench script puts the repository root on sys.path and imports `bench._common`; the order is
always: start the stand-in (if any), then `setup_django()` (settings are read once, with the
stand-in's address), then `bench_database()`. Nothing here asserts anything about time.
"""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import socket
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARTIFACTS = ROOT / "test-artifacts" / "bench"  # logs of child processes (test-artifacts/ is git-ignored)
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
# Benches that start no stand-in still must never reach the real OAuth server: a closed loopback port.
_NO_OAUTH = "http://127.0.0.1:9/oauth/token/"


def prepare_environment(*, oauth_url: str | None = None) -> None:
    """Point this process and its children at bench.settings (secrets, database, cache from there)."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    os.environ["B24_OAUTH_URL"] = oauth_url or os.environ.get("B24_OAUTH_URL") or _NO_OAUTH
    os.environ.setdefault("BENCH_CACHE_PREFIX", f"b24bench-{os.getpid()}-{secrets.token_hex(3)}")
    from bench import _env

    _env.apply()  # inherited by the child processes (gunicorn, manage.py) too
    ARTIFACTS.mkdir(parents=True, exist_ok=True)


def setup_django(*, oauth_url: str | None = None) -> None:
    prepare_environment(oauth_url=oauth_url)
    import django

    django.setup()


def client_credentials() -> tuple[str, str]:
    """The app's client id and secret as bench.settings will read them (for the stand-in)."""
    from bench import _env

    _env.apply()
    return os.environ["B24_CLIENT_ID"], os.environ["B24_CLIENT_SECRET"]


# --- database -----------------------------------------------------------------------------------------


def _database_name(db: dict) -> str:
    return str(db["NAME"])


def _check_bench_database(db: dict) -> None:
    name = _database_name(db)
    if "bench" not in Path(name).name:
        raise SystemExit(
            f"refusing to use database {name!r}: the bench drops and re-creates its database, "
            "so its name must contain 'bench' (e.g. postgres://postgres@127.0.0.1:5432/b24bench)"
        )


def _maintenance_connection(db: dict):
    import psycopg2

    connection = psycopg2.connect(
        dbname="postgres",
        user=db.get("USER") or None,
        password=db.get("PASSWORD") or None,
        host=db.get("HOST") or None,
        port=db.get("PORT") or None,
    )
    connection.autocommit = True
    return connection


def _drop(db: dict) -> None:
    if db["ENGINE"] == "django.db.backends.sqlite3":
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{db['NAME']}{suffix}")
        return
    _maintenance(db, "DROP DATABASE IF EXISTS {} WITH (FORCE)")


def _create(db: dict) -> None:
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return  # created by the first connection
    _maintenance(db, "CREATE DATABASE {}")


def _maintenance(db: dict, statement: str) -> None:
    """Run a DROP/CREATE DATABASE statement naming the bench database, from the maintenance database."""
    from psycopg2 import sql

    connection = _maintenance_connection(db)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL(statement).format(sql.Identifier(db["NAME"])))
    finally:
        connection.close()


@contextlib.contextmanager
def bench_database(*, keep: bool = False):
    """A fresh, migrated database named by DATABASE_URL (it must be a bench database); dropped afterwards."""
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    db = settings.DATABASES["default"]
    _check_bench_database(db)
    _drop(db)
    _create(db)
    call_command("migrate", verbosity=0)
    try:
        yield db
    finally:
        connections.close_all()
        if keep:
            print(f"(database {db['NAME']} kept)")
        else:
            _drop(db)


@contextlib.contextmanager
def bench_cache():
    """Delete this run's cache keys (under BENCH_CACHE_PREFIX) afterwards; never flushes a shared Redis."""
    try:
        yield
    finally:
        from django.core.cache import cache

        backend = getattr(cache, "_cache", None)
        prefix = os.environ.get("BENCH_CACHE_PREFIX")
        if prefix and backend is not None and hasattr(backend, "get_client"):
            with contextlib.suppress(Exception):
                client = backend.get_client(write=True)
                keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
                if keys:
                    client.delete(*keys)


def database_label() -> str:
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            return f"PostgreSQL {cursor.fetchone()[0].split()[0]}"
    import sqlite3

    return f"SQLite {sqlite3.sqlite_version}"


def cache_label() -> str:
    from django.conf import settings

    cache = settings.CACHES["default"]
    location = cache.get("LOCATION") or ""
    if isinstance(location, (list, tuple)):
        location = ",".join(location)
    return f"{cache['BACKEND'].rsplit('.', 1)[-1]} {location}".strip()


# --- the stand-in -------------------------------------------------------------------------------------


@contextlib.contextmanager
def standin():
    """A running Bitrix24 stand-in with the bench app's credentials; stopped afterwards."""
    from sandbox.standin import StandIn

    client_id, client_secret = client_credentials()
    server = StandIn(client_id, client_secret).start()
    os.environ["B24_OAUTH_URL"] = server.oauth_url
    try:
        yield server
    finally:
        server.stop()
        if server.errors:
            print(f"stand-in errors ({len(server.errors)}):\n{server.errors[0]}")


def add_virtual_portals(server, count: int, *, address: str, user_id: str = "1") -> list:
    """`count` stand-in portals, each with a minted token pair, without an HTTP server each.

    `StandIn.add_portal()` starts a server per portal (a socket, a thread and a 50 ms poll loop):
    right for tests, far too heavy for 10,000 portals, and the stand-in has no bulk API. These
    portals share `address` (give it a real stand-in portal's) and are complete at the OAuth server
    (refresh works and rotates their tokens); their REST is that address's. Bench-local, and the
    only use of the stand-in's internals: the `Portal` constructor and its `_domain`/`_addresses`
    fields. Tokens come from the public `issue_tokens()`. Returns [(stand-in portal, tokens)].
    """
    from sandbox.standin import DEFAULT_SCOPE, DEFAULT_USERS
    from sandbox.standin import Portal as StandInPortal

    out = []
    for _ in range(count):
        portal = StandInPortal(server, member_id=None, app_status="F", scope=DEFAULT_SCOPE, users=DEFAULT_USERS)
        with server.lock:
            portal._domain = address
            portal._addresses.append(address)
            portal.installed = portal.install_finished = True
            server.portals.append(portal)
        out.append((portal, portal.issue_tokens(user_id)))
    return out


# --- figures ------------------------------------------------------------------------------------------


def serve_hook(handler) -> tuple:
    """A local HTTP server for `handler` (a BaseHTTPRequestHandler class) on a free port of 127.0.0.1, served by
    a daemon thread: (the server, its /hook URL), for the benches' webhook receivers."""
    import threading
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/hook"


def percentile(values, q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0 for no values."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values) -> float:
    return statistics.median(values) if values else 0.0


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Timer:
    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started


class CpuClock:
    """CPU seconds used between enter and exit: by this process (the stand-in's threads), by child
    processes waited for meanwhile, and by the whole machine (/proc/stat), next to the wall time."""

    @staticmethod
    def _now():
        import resource

        me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        with open("/proc/stat") as handle:
            ticks = [int(v) for v in handle.readline().split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        return {
            "self": me.ru_utime + me.ru_stime,
            "children": children.ru_utime + children.ru_stime,
            "busy": (sum(ticks) - ticks[3] - ticks[4]) / tick,
            "wall": time.monotonic(),
        }

    def __enter__(self):
        self._start = self._now()
        return self

    def __exit__(self, *exc):
        end = self._now()
        for key, value in end.items():
            setattr(self, key, value - self._start[key])

    def describe(self, children_label: str, postgres: float | None = None) -> str:
        rest = self.busy - self.self - self.children
        parts = [f"{children_label} {self.children:.1f} s", f"stand-in (this process) {self.self:.1f} s"]
        if postgres is not None:
            parts.append(f"PostgreSQL backends {postgres:.1f} s")
            rest -= postgres
            parts.append(f"rest of the machine (other work) {rest:.1f} s")
        else:
            parts.append(f"rest of the machine (PostgreSQL, other work) {rest:.1f} s")
        return (
            f"CPU: {', '.join(parts)}; machine {self.busy / self.wall / (os.cpu_count() or 1) * 100:.0f}% "
            f"busy over {self.wall:.1f} s"
        )


class PostgresBackendCpu:
    """CPU seconds used by the PostgreSQL backends serving the bench database while it runs.

    A thread samples pg_stat_activity and /proc every `interval` seconds and keeps each backend's
    latest CPU time; backends that end between two samples lose at most one interval (the benches'
    connections live as long as their process, so little is lost). Backends already open at the start
    count from their CPU time then."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.seconds = 0.0

    def _sample(self, cursor) -> dict:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for (pid,) in cursor.fetchall():
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = Path(f"/proc/{pid}/stat").read_text()
                fields = text[text.rindex(")") + 2 :].split()
                out[pid] = (int(fields[11]) + int(fields[12])) / tick
        return out

    def _run(self):
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                for pid, seconds in self._sample(self._cursor).items():
                    self._latest[pid] = seconds

    def __enter__(self):
        import threading

        from django.conf import settings

        db = settings.DATABASES["default"]
        self._connection = None
        if db["ENGINE"] != "django.db.backends.postgresql":
            return self
        import psycopg2

        self._connection = psycopg2.connect(
            dbname=db["NAME"],
            user=db.get("USER") or None,
            password=db.get("PASSWORD") or None,
            host=db.get("HOST") or None,
            port=db.get("PORT") or None,
        )
        self._connection.autocommit = True
        self._cursor = self._connection.cursor()
        self._start = self._sample(self._cursor)
        self._latest = dict(self._start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._connection is None:
            return
        self._stop.set()
        self._thread.join()
        self._connection.close()
        self.seconds = sum(seconds - self._start.get(pid, 0.0) for pid, seconds in self._latest.items())


def machine() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    import django

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram": ram,
        "python": platform.python_version(),
        "django": django.get_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def cpu_busy(seconds: float = 2.0) -> float:
    """The fraction of all CPUs busy over the next `seconds` (from /proc/stat)."""

    def sample():
        with open("/proc/stat") as handle:
            ticks = [int(v) for v in handle.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_quiet(max_wait: float, threshold: float = 0.25) -> str:
    """Wait up to `max_wait` seconds for the machine to be mostly idle (other work skews timings);
    returns what was seen, for the header."""
    started = time.monotonic()
    busy = cpu_busy()
    while busy > threshold and time.monotonic() - started < max_wait:
        busy = cpu_busy()
    waited = time.monotonic() - started
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    note = f"{busy * 100:.0f}% busy before the run (load average {load})"
    if busy > threshold:
        note += f"; still busy after waiting {waited:.0f} s: other work on this machine skews the timings"
    elif waited > 3:
        note += f"; waited {waited:.0f} s for it to quieten"
    return note


def print_header(title: str) -> None:
    """The bench's title and what it runs on (call after setup_django). With BENCH_WAIT_QUIET=N it
    first waits up to N seconds for the machine to be mostly idle."""
    m = machine()
    quiet = wait_for_quiet(float(os.environ.get("BENCH_WAIT_QUIET") or 0))
    print(f"== {title}")
    print(
        f"machine: {m['nproc']} cores ({m['cpu']}), {m['ram']} RAM; Python {m['python']}, Django {m['django']}, "
        f"{database_label()}; cache {cache_label()}; {m['date']}"
    )
    print(f"machine load: {quiet}")
    sys.stdout.flush()


def table(rows: list[list], header: list[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --- the channel API and the broker, as several benches use them ----------------------------------------


def post_signed(client, channel, secret: str, payload: dict):
    """POST `payload` to the channel API signed as an outside system does (version 2): the test client's
    response, or a RequestFactory's request."""
    import json

    from openlines.outbound import INBOUND, sign

    body = json.dumps(payload).encode()
    ts = str(int(time.time()))
    return client.post(
        f"/channels/{channel.public_id}/messages",
        body,
        content_type="application/json",
        HTTP_X_B24WIDGET_TIMESTAMP=ts,
        HTTP_X_B24WIDGET_SIGNATURE=sign(secret, ts, body, INBOUND),
        HTTP_X_B24WIDGET_SIGNATURE_VERSION="2",
    )


def drop_own_queue(broker_dir) -> None:
    """Delete the run's own broker state: the embedded broker's folder, or the run's queue on RabbitMQ."""
    import shutil

    from django.conf import settings

    from b24widget.celery import app

    if settings.CELERY_BROKER_URL.startswith("filesystem:"):
        shutil.rmtree(broker_dir, ignore_errors=True)
    else:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(settings.CELERY_TASK_DEFAULT_QUEUE)
