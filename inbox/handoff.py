"""Hand-offs: rows a request stored, queued for the workers by the worker's dispatcher instead of the request.

A request that stores a message (the channel API) or an event (`/events/`) answers once its row is committed;
who sends the row's task to the broker is decided here:

- **in the request** (B24_HANDOFF=request, and `auto` on SQLite): after its commit, the request itself marks
  and queues the row's channel or lane (`openlines.tasks.queue_channel`, `inbox.queue._release_stored`), as
  before.
- **by the dispatcher** (B24_HANDOFF=dispatcher, and `auto` on PostgreSQL): a trigger on the table announces
  each committed row (PostgreSQL's NOTIFY, sent at commit: an uncommitted row is never announced), and one
  thread in the Celery worker's main process (`Dispatcher`, the holder of a PostgreSQL advisory lock; every
  other worker's waits to take over) queues what was announced, a batch at a time: the keys announced while it
  worked (a channel, a portal lane) are queued once each. The request's own work is the INSERT; the mark, the
  lane's question and the broker's send leave the web process (issue 26: each round trip on the hot path costs
  the web process more than the check it serves, bench/RESULTS.md "ingest.py").

Nothing waits for a missed announcement longer than before: when the dispatcher takes the lock (at start, after
a lost connection, after another worker's died) it queues everything due first (each registration's `catch_up`),
and beat's sweeps queue every due row each minute, as they always did. An announcement sent while no dispatcher
listened is lost; the row is not.

Apps register a hand-off (`register`) from `ready()`, like the inbox's other registries; the triggers are in
their migrations (PostgreSQL only), sending `<name>:<key>` on NOTIFY_CHANNEL.
"""

import contextlib
import logging
import select
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, migrations

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "b24widget_handoff"
# The advisory lock whose holder is the one dispatcher (per database: PostgreSQL scopes advisory locks to it).
LOCK_KEY = zlib.crc32(b"b24widget.inbox.handoff")
# How long a waiting dispatcher sleeps between tries of the lock, and the leader between checks of its
# connection while nothing is announced (seconds).
RETRY_SECONDS = 5.0
IDLE_CHECK_SECONDS = 30.0


@dataclass(frozen=True)
class HandOff:
    """`handle(keys)` queues the work of the announced keys (each once, sorted); `catch_up()` queues everything
    due, as a sweep would (the announcements the dispatcher may have missed)."""

    name: str
    handle: Callable[[list[str]], object]
    catch_up: Callable[[], object]


_registry: dict[str, HandOff] = {}


def register(name: str, *, handle: Callable[[list[str]], object], catch_up: Callable[[], object]) -> None:
    if ":" in name:
        raise ValueError("a hand-off's name holds no ':' (it separates the name from the key)")
    _registry[name] = HandOff(name, handle, catch_up)


def registered() -> list[HandOff]:
    return list(_registry.values())


def by_dispatcher(alias: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether the dispatcher queues the requests' rows (else each request queues its own after its commit)."""
    mode = settings.B24_HANDOFF
    if mode == "auto":
        return connections[alias].vendor == "postgresql"
    return mode == "dispatcher"


def announcing(trigger: str, *, table: str, handoff: str, column: str) -> migrations.RunPython:
    """A migration's operation (PostgreSQL only; nothing elsewhere): `table`'s trigger `trigger` announces each
    committed pending row on NOTIFY_CHANNEL as `<handoff>:<the row's column>`; reversed, it is dropped."""
    create = f"""
CREATE OR REPLACE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{NOTIFY_CHANNEL}', '{handoff}:' || NEW.{column});
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS {trigger} ON {table};
CREATE TRIGGER {trigger} AFTER INSERT ON {table}
    FOR EACH ROW WHEN (NEW.state = 'pending') EXECUTE FUNCTION {trigger}();
"""
    drop = f"DROP TRIGGER IF EXISTS {trigger} ON {table}; DROP FUNCTION IF EXISTS {trigger}();"

    def run(sql: str):
        def on_postgresql(apps, schema_editor) -> None:
            if schema_editor.connection.vendor == "postgresql":
                schema_editor.execute(sql)

        return on_postgresql

    return migrations.RunPython(run(create), run(drop), elidable=False)


def parse(payloads: Iterable[str]) -> dict[str, list[str]]:
    """The announced keys by hand-off, each once, sorted; payloads of no registered hand-off are dropped."""
    keys: dict[str, set[str]] = {}
    for payload in payloads:
        name, sep, key = payload.partition(":")
        if sep and name in _registry:
            keys.setdefault(name, set()).add(key)
    return {name: sorted(found) for name, found in keys.items()}


def _run(what: str, name: str, call: Callable[[], object]) -> None:
    """One registration's call in the dispatcher's thread: a failure is logged and left to the sweeps (the rows
    stay due), and a broken database connection of this thread is dropped for the next call to open anew."""
    try:
        call()
    except Exception as exc:  # the rows stay stored and due: beat's sweep queues them
        log.warning(
            "hand-off %s failed; the sweep will queue it", what, extra={"handoff": name, "error": type(exc).__name__}
        )
        if isinstance(exc, DatabaseError):
            with contextlib.suppress(Exception):
                connections[DEFAULT_DB_ALIAS].close()


def dispatch(payloads: Iterable[str]) -> int:
    """Queue the work of these announcements (a batch); returns the keys handled."""
    count = 0
    for name, keys in parse(payloads).items():
        _run("batch", name, partial(_registry[name].handle, keys))
        count += len(keys)
    return count


def catch_up() -> None:
    for entry in registered():
        _run("catch-up", entry.name, entry.catch_up)


class Dispatcher(threading.Thread):
    """The thread that queues announced rows while it holds the dispatcher's lock (see the module's text).

    One per Celery worker process (started by b24widget/celery.py when the worker is ready); all but one wait
    for the lock, so a worker that dies hands the role to another within RETRY_SECONDS, and its catch-up queues
    what was announced meanwhile. Its own connection listens; the queueing uses the thread's Django connection."""

    def __init__(self, alias: str = DEFAULT_DB_ALIAS, *, retry: float = RETRY_SECONDS):
        super().__init__(name="b24widget-handoff", daemon=True)
        self.alias, self.retry = alias, retry
        self._stopping = threading.Event()
        self.leading = threading.Event()  # (tests, health) set while this thread holds the lock and listens
        self.batches = 0  # (tests) batches dispatched since start

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self.join(timeout)

    def run(self) -> None:
        while not self._stopping.is_set():
            listener = connections.create_connection(self.alias)
            try:
                self._serve(listener)
            except Exception as exc:  # a lost connection, the database away: listen again after a pause
                log.warning("hand-off dispatcher lost its connection", extra={"error": type(exc).__name__})
            finally:
                self.leading.clear()
                with contextlib.suppress(Exception):
                    listener.close()
                with contextlib.suppress(Exception):
                    connections[DEFAULT_DB_ALIAS].close()
            self._stopping.wait(self.retry)
        connections.close_all()

    def _serve(self, listener) -> None:
        listener.ensure_connection()
        listener.set_autocommit(True)
        raw = listener.connection
        with raw.cursor() as cursor:
            while True:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY])
                if cursor.fetchone()[0]:
                    break
                if self._stopping.wait(self.retry):
                    return
            cursor.execute(f"LISTEN {NOTIFY_CHANNEL}")
        log.info("hand-off dispatcher listening")
        self.leading.set()
        catch_up()  # what was announced while no dispatcher listened
        checked = time.monotonic()
        while not self._stopping.is_set():
            ready, _, _ = select.select([raw], [], [], 1.0)  # (a stop is seen within a second)
            if not ready:
                if time.monotonic() - checked >= IDLE_CHECK_SECONDS:  # a round trip: a dead connection is noticed
                    with raw.cursor() as cursor:
                        cursor.execute("SELECT 1")
                    checked = time.monotonic()
                continue
            raw.poll()
            payloads = [note.payload for note in raw.notifies]
            raw.notifies.clear()
            checked = time.monotonic()
            if payloads:
                dispatch(payloads)
                self.batches += 1


def health() -> str:
    """For /healthz: "ok" while the requests hand off themselves or a dispatcher holds the lock (it listens);
    "degraded: no dispatcher listens" otherwise (no worker running, or none reaching the database)."""
    if not by_dispatcher():
        return "ok"
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s AND objid = %s "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            [LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF],
        )
        return "ok" if cursor.fetchone() is not None else "degraded: no dispatcher listens"


_started: list[Dispatcher] = []


def start() -> Dispatcher | None:
    """Start this process's dispatcher (once) when the dispatcher hands off; None when requests do."""
    if not by_dispatcher() or _started:
        return _started[0] if _started else None
    dispatcher = Dispatcher()
    dispatcher.start()
    _started.append(dispatcher)
    return dispatcher


def stop() -> None:
    while _started:
        _started.pop().stop()
