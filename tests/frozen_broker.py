"""A frozen AMQP broker of a test's own: a socket on 127.0.0.1 that accepts connections and then stops answering.

`FrozenBroker(after="accept")` never answers a connection (a broker whose process is stopped, SIGSTOP, answers
so: its kernel completes the TCP connect from the listen backlog, nobody speaks). `FrozenBroker(after="open")`
answers the AMQP handshake (Connection.Start, Tune, Open-Ok: the broker was alive when the connection was made)
and then nothing more, and reads nothing more either: the client's channel.open waits for an answer that never
comes, as on a connection that was established before its broker froze. The machine's RabbitMQ is not touched.

Fixtures: `frozen_broker` (both ways, or one by indirect parametrization) points Celery at one, with the AMQP
transport options production gives an amqp:// URL; `hang_guard` fails a test still waiting after GUARD_SECONDS.
"""

import contextlib
import signal
import socket
import struct
import threading

import pytest
from amqp import spec
from amqp.serialization import dumps

_FRAME_END = b"\xce"
GUARD_SECONDS = 120  # what "hangs" means in a test: far beyond any deadline of a send, never a figure asserted


def _method_frame(method: tuple[int, int], fmt: str, args: tuple) -> bytes:
    payload = struct.pack(">HH", *method) + (dumps(fmt, args) if fmt else b"")
    return struct.pack(">BHI", 1, 0, len(payload)) + payload + _FRAME_END


def _read_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the client went away")
        data += chunk
    return data


def _read_frame(conn: socket.socket) -> None:
    _kind, _channel, size = struct.unpack(">BHI", _read_exactly(conn, 7))
    _read_exactly(conn, size + 1)


class FrozenBroker:
    def __init__(self, *, after: str):
        assert after in ("accept", "open")
        self.after = after
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.url = f"amqp://guest:guest@127.0.0.1:{self.server.getsockname()[1]}//"
        self.accepted: list[socket.socket] = []
        self.handshakes = 0  # connections answered up to Open-Ok, then frozen
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:  # closed
                return
            self.accepted.append(conn)
            if self.after == "open":
                with contextlib.suppress(OSError):
                    self._handshake(conn)
                    self.handshakes += 1
            # From here on nothing is read or written on `conn` until close().

    @staticmethod
    def _handshake(conn: socket.socket) -> None:
        _read_exactly(conn, 8)  # AMQP 0-9-1's protocol header
        conn.sendall(_method_frame(spec.Connection.Start, "ooFSS", (0, 9, {}, "PLAIN AMQPLAIN", "en_US")))
        _read_frame(conn)  # Start-Ok
        conn.sendall(_method_frame(spec.Connection.Tune, "BlB", (2047, 131072, 0)))
        _read_frame(conn)  # Tune-Ok
        _read_frame(conn)  # Open
        conn.sendall(_method_frame(spec.Connection.OpenOk, "s", ("",)))

    def close(self) -> None:
        self.server.close()
        for conn in self.accepted:
            with contextlib.suppress(OSError):
                conn.close()


@pytest.fixture(params=["accept", "open", "redis"])
def frozen_broker(request, monkeypatch, settings):
    """CELERY_BROKER_URL at a frozen broker, with the transport options production gives such a URL: AMQP
    frozen before or after its handshake, or a Redis broker (redis://) that accepts and answers nothing."""
    broker = FrozenBroker(after="accept" if request.param == "redis" else request.param)
    options = settings.B24_AMQP_TRANSPORT_OPTIONS
    if request.param == "redis":
        broker.url = broker.url.replace("amqp://guest:guest@", "redis://").rstrip("/") + "/0"
        options = {"visibility_timeout": 3600, **settings.B24_REDIS_BROKER_TRANSPORT_OPTIONS}
    with celery_pointed_at(broker.url, options, monkeypatch):
        try:
            yield broker
        finally:
            broker.close()


@contextlib.contextmanager
def celery_pointed_at(url: str, options: dict | None, monkeypatch):
    """Celery's app sends to `url` (kombu's own transport for its scheme, with these transport options; None:
    the ones it has) for the block, with fresh connections before and after (it keeps them once made)."""
    from b24widget.celery import app

    previous = app.conf.broker_url, app.conf.broker_transport, app.conf.broker_transport_options

    def fresh_connections():
        app.close()
        app.amqp._producer_pool = None

    monkeypatch.setenv("CELERY_BROKER_URL", url)  # Celery reads the variable before its own setting
    app.conf.broker_url, app.conf.broker_transport = url, None
    if options is not None:
        app.conf.broker_transport_options = options  # as settings.py sets for such a URL
    fresh_connections()
    try:
        yield
    finally:
        monkeypatch.undo()
        app.conf.broker_url, app.conf.broker_transport, app.conf.broker_transport_options = previous
        fresh_connections()


@pytest.fixture
def hang_guard():
    """Fails the test (from inside whatever call waits) if it is still running after GUARD_SECONDS: a thread sends
    SIGALRM to this (the main) thread, whose blocked socket call it interrupts (a process-wide alarm may be taken
    by another thread, the broker's or the receiver's, and leave the blocked call alone), and again every few
    seconds, since the unwinding may wait too (a pooled connection's close waits for the broker's Close-Ok)."""

    def hung(signum, frame):
        pytest.fail(f"still waiting for the frozen broker after {GUARD_SECONDS} s: the send has no deadline")

    previous = signal.signal(signal.SIGALRM, hung)
    main, stop = threading.main_thread().ident, threading.Event()

    def alarm():
        wait = GUARD_SECONDS
        while not stop.wait(wait):
            signal.pthread_kill(main, signal.SIGALRM)
            wait = 5

    thread = threading.Thread(target=alarm, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        signal.signal(signal.SIGALRM, previous)
