"""Real Celery workers for the suite: `celery -A b24widget worker` processes on the suite's broker.

The broker is the suite's own (tests/settings.py): the embedded filesystem broker in a per-run folder,
or the RabbitMQ named by CELERY_BROKER_URL, always on this run's own queue. Workers use the solo pool
(one process: a SIGKILL hits the process that runs the task) and short inbox timings.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

from tests.helpers import database_url

ROOT = Path(__file__).resolve().parents[1]

FAST_INBOX = {
    "B24_INBOX_BACKOFF": "0.3",
    "B24_INBOX_BACKOFF_MAX": "2",
    "B24_INBOX_LEASE": "3",
    "B24_INBOX_REQUEUE_AFTER": "1",
    "B24_INBOX_SWEEP_INTERVAL": "0.5",
    "B24_RATE_LIMIT_PER_SECOND": "0",
    "CELERY_POLLING_INTERVAL": "0.05",
    # Retries come every second or two here (not minutes): the per-portal budget of unverified OAuth
    # attempts must not turn an outage's retries into a dead letter before the OAuth server is back.
    "B24_UNVERIFIED_OAUTH_BURST": "50",
    "B24_UNVERIFIED_OAUTH_PER_MINUTE": "600",
}


def uses_rabbitmq() -> bool:
    return settings.CELERY_BROKER_URL.startswith(("amqp:", "pyamqp:"))


# Workers started and not yet stopped: a wait that times out shows the end of their logs.
LIVE: list["Worker"] = []


class Worker:
    """One worker process; its log (JSON lines) goes to a file."""

    def __init__(self, standin, folder: Path, name: str, *, beat: bool = False, env: dict | None = None):
        self.name = name
        self.log_path = Path(folder) / f"{name}.log"
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "b24widget",
            "worker",
            "--pool",
            "solo",
            "-n",
            # The node name names the worker's remote-control queue on the broker: unique to this run (another
            # run, or another xdist worker, on the same RabbitMQ starts its own "w1").
            f"{name}-{os.environ.get('CELERY_QUEUE', os.getpid())}@%h",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "INFO",
        ]
        if beat:
            command += ["--beat", "--schedule", str(Path(folder) / f"{name}-beat-schedule")]
        environment = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": database_url(),
            "B24_OAUTH_URL": standin.oauth_url,
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "json",
            **FAST_INBOX,
            **(env or {}),
        }
        # The worker writes to its own copy of the descriptor: ours is closed once it has started.
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        LIVE.append(self)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> "Worker":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker {self.name} exited ({self.process.returncode}):\n{self.log()[-3000:]}")
            if " ready." in self.log() or '"ready."' in self.log() or "ready." in self.log():
                return self
            time.sleep(0.1)
        raise AssertionError(f"worker {self.name} did not start:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM: Celery's warm shutdown (the task in flight finishes); returns the exit status."""
        if self in LIVE:
            LIVE.remove(self)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode


def wait_for(predicate, *, timeout: float = 60, what: str = "the condition", every: float = 0.1, detail=None):
    """Poll until `predicate()` is truthy (a worker works in another process); fail after `timeout`
    with `detail()` in the message, or else the end of each live worker's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    if detail is None and LIVE:

        def detail():
            return "\n".join(
                f"--- worker {w.name} (exit {w.process.poll()}), end of its log:\n{w.log()[-2000:]}" for w in LIVE
            )

    raise AssertionError(f"timed out waiting for {what}" + (f":\n{detail()}" if detail else ""))


def lose_the_queue() -> int:
    """What a broker restarted without persistence does: every message of this run's queue is gone."""
    from b24widget.celery import app

    with app.connection_for_write() as conn:
        return conn.default_channel.queue_purge(settings.CELERY_TASK_DEFAULT_QUEUE) or 0
