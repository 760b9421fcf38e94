"""How long a send from a request thread waits on a frozen broker (issue 26), and what a freeze loses.

Run: .venv/bin/python bench/broker_freeze.py [--wait 60] [--no-io-timeout]

Three brokers that accept connections and answer nothing, each sent to the way a request sends (`send_task`
from a thread, Celery's pooled producer, the settings' CELERY_BROKER_CONNECTION_TIMEOUT and publish retry policy,
and the AMQP transport options production gives an amqp:// URL, B24_AMQP_TRANSPORT_OPTIONS):

  handshake: a socket that accepts and never answers (tests/frozen_broker.py): a fresh connection's handshake;
  opened:    a socket that answers the AMQP handshake, then nothing: the connection's channel.open;
  rabbitmq:  a RabbitMQ node of this run's own (as bench/soak.py's: own port, cookie and folder), one send made,
             then its Erlang VM SIGSTOPped: sends on the established connection until one fails (the socket's
             buffers full), then SIGCONT and the queue's message count (what the broker got of what was "sent").

Per case: the sends that returned at once, the failing send's seconds and error, or "still waiting" after --wait
seconds (the thread is left behind). `--no-io-timeout` leaves B24_BROKER_IO_TIMEOUT out (what main did).
"""

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "b24widget.settings")
os.environ["CELERY_QUEUE"] = f"bench-freeze-{os.getpid()}"

import django

django.setup()

from django.conf import settings  # noqa: E402

from b24widget.celery import app  # noqa: E402
from bench.soak import LOGS, OwnRabbit  # noqa: E402
from tests.frozen_broker import FrozenBroker  # noqa: E402


def point_at(url: str, options: dict) -> None:
    app.conf.broker_url, app.conf.broker_transport, app.conf.broker_transport_options = url, None, options
    app.close()  # Celery keeps its connections and producer pool once made
    app.amqp._producer_pool = None


def sends(wait: float, *, until_failure: bool) -> dict:
    """Send from a thread (until one fails, or once); what happened within `wait` seconds."""
    out: dict = {"ok": 0, "failed": None}

    def run():
        n = 0
        while True:
            began = time.monotonic()
            try:
                app.send_task("inbox.process_event", (n, "x" * 2000))
            except Exception as exc:  # noqa: BLE001 - what the send raised is the figure
                out["failed"] = (time.monotonic() - began, f"{type(exc).__name__}: {exc}"[:80])
                return
            out["ok"] += 1
            n += 1
            if not until_failure:
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(wait)
    out["waiting"] = thread.is_alive()
    return out


def report(name: str, out: dict, wait: float, extra: str = "") -> None:
    if out["waiting"]:
        what = f"still waiting after {wait:.0f} s"
    elif out["failed"]:
        what = f"failed after {out['failed'][0]:.2f} s ({out['failed'][1]})"
    else:
        what = "sent"
    print(f"{name:10} sends returned at once before: {out['ok']:5}; then {what}{extra}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wait", type=float, default=60.0)
    parser.add_argument("--no-io-timeout", action="store_true")
    args = parser.parse_args()
    options = {} if args.no_io_timeout else dict(settings.B24_AMQP_TRANSPORT_OPTIONS)
    print(
        f"transport options {options}; connect timeout {settings.CELERY_BROKER_CONNECTION_TIMEOUT} s; "
        f"publish retry {settings.CELERY_TASK_PUBLISH_RETRY_POLICY}",
        flush=True,
    )
    for name, after in (("handshake", "accept"), ("opened", "open")):
        broker = FrozenBroker(after=after)
        point_at(broker.url, options)
        report(name, sends(args.wait, until_failure=False), args.wait, f"; connections {len(broker.accepted)}")

    LOGS.mkdir(parents=True, exist_ok=True)
    rabbit = OwnRabbit(Path(f"/tmp/bench-freeze-{os.getpid()}"))
    rabbit.start()
    try:
        point_at(rabbit.url, options)
        app.send_task("inbox.process_event", (-1,))  # the connection established, the queue declared
        rabbit.freeze()
        try:
            out = sends(args.wait, until_failure=True)
        finally:
            rabbit.thaw()
        time.sleep(5)
        listed = subprocess.run(
            [str(rabbit.BIN / "rabbitmqctl"), "-n", rabbit.node, "list_queues", "name", "messages"],
            env=rabbit.env, capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip
        queue = os.environ["CELERY_QUEUE"]
        got = next((line.split()[1] for line in listed.splitlines() if line.startswith(queue)), "?")
        report("rabbitmq", out, args.wait, f"; in the queue after the thaw: {got} of {out['ok'] + 1} sent")
    finally:
        rabbit.stop()


if __name__ == "__main__":
    main()
