"""`manage.py devserver`: the app for development, with what it needs beside it, in one command.

Django's runserver and one Celery worker (solo pool, beat embedded) on the default broker (the embedded
filesystem one under CELERY_BROKER_DIR): `/events/` only stores each event, the worker applies it, so
the app is incomplete without one. Ctrl-C (or SIGTERM) stops both; the worker's stop is warm (the task
in flight finishes). Available where the sandbox app is (DEBUG or B24_SANDBOX), never in production,
which runs gunicorn, a worker and beat as the README's production section shows.
"""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Run the app for development: runserver and a Celery worker (with beat) on the embedded broker. "
        "Ctrl-C stops both."
    )

    def add_arguments(self, parser):
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000", help="as for runserver")

    def handle(self, *args, addrport, **options):
        base = str(settings.BASE_DIR)
        schedule = settings.B24_CELERY_DIR / "beat-schedule"
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "b24widget",
                "worker",
                "--pool",
                "solo",
                "--beat",
                "--schedule",
                str(schedule),
                "--loglevel",
                "INFO",
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=base,
            env=os.environ.copy(),
        )
        # Its own process group: runserver's autoreloader runs the server in a child process, and the
        # whole group is stopped together.
        server = subprocess.Popen(
            [sys.executable, os.path.join(base, "manage.py"), "runserver", addrport],
            cwd=base,
            env=os.environ.copy(),
            start_new_session=True,
        )
        stopping = []
        previous = signal.signal(signal.SIGTERM, lambda *a: stopping.append(True))
        try:
            while not stopping and server.poll() is None and worker.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            for child in (worker, server):  # the worker first: SIGTERM is its warm shutdown
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
                    try:
                        child.wait(30)
                    except subprocess.TimeoutExpired:
                        child.kill()
            try:
                os.killpg(server.pid, signal.SIGTERM)  # the autoreloader's server child too
            except (ProcessLookupError, PermissionError):
                pass
        if not stopping and worker.returncode not in (None, 0, -signal.SIGTERM):
            raise CommandError(f"the Celery worker stopped (exit code {worker.returncode})")
