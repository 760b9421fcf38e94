"""Zero-downtime restarts (README): gunicorn reloaded with HUP, as `systemctl reload` does, under a steady
stream of requests refuses none of them and answers every one, and its new workers load the code again
(GUNICORN_PRELOAD=false, the systemd unit's setting). A liveness count, not a timing: how long a reload takes
is not asserted."""

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # gunicorn in a subprocess, reloaded twice under requests


def _get(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/nothing-here/", headers={"Host": "localhost"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


SETTINGS = """
import os
from tests.settings import *  # noqa: F403
with open(os.environ["IMPORTS_LOG"], "a") as log:
    log.write(f"{os.getpid()}\\n")
"""


def test_a_hup_reload_under_requests_refuses_none(tmp_path):
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_", "LOG_", "XDG_"))}
    # A settings module that notes each process importing it: every new worker must read the release on disk.
    (tmp_path / "reload_settings.py").write_text(SETTINGS)
    env = {
        **base,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "IMPORTS_LOG": str(tmp_path / "imports.log"),
        "DJANGO_SETTINGS_MODULE": "reload_settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "LOG_FORMAT": "json",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "2",
        "GUNICORN_THREADS": "2",
        "GUNICORN_PRELOAD": "false",
    }
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:b24widget.gunicorn", "b24widget.wsgi"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    answers: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                answers.append(_get(port))
            except OSError as exc:  # refused, reset, timed out
                failures.append(repr(exc))

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(port)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        for _reload in range(2):
            seen = len(answers)
            while len(answers) < seen + 50:  # requests before each reload, and between them
                assert not failures, failures[:3]
                time.sleep(0.05)
            booted = log_path.read_text().count("Booting worker")
            process.send_signal(signal.SIGHUP)
            while log_path.read_text().count("Booting worker") < booted + 2:  # the new workers
                assert process.poll() is None and time.monotonic() < deadline + 120, log_path.read_text()[-2000:]
                time.sleep(0.1)
            while log_path.read_text().count("Worker exiting") < 2 * (_reload + 1):  # the old ones gone
                assert time.monotonic() < deadline + 120, log_path.read_text()[-2000:]
                time.sleep(0.1)
        seen = len(answers)
        while len(answers) < seen + 50:  # and requests after the last reload, served by new workers only
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        stop.set()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert failures == []
    assert len(answers) >= 150 and set(answers) == {404}  # every request answered by Django
    log = log_path.read_text()
    assert "Hang up: Master" in log
    # Every worker, those the reloads started included, imported the settings itself (not the master's copy).
    booted = {line.rsplit(" ", 1)[-1].strip('"}') for line in log.splitlines() if "Booting worker with pid" in line}
    imported = set((tmp_path / "imports.log").read_text().split())
    assert len(booted) == 6 and booted <= imported
