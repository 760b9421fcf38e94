"""Plain logs keep the structured fields on the line (JSON logs carry them as keys); every process (gunicorn,
the Celery worker and beat) writes one stream of JSON lines."""

import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from pythonjsonlogger.json import JsonFormatter

from b24widget.logformat import PlainFormatter
from tests.helpers import free_port


def record(message, **extra):
    logger = logging.getLogger("portals.lifecycle")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 1, message, (), None, extra=extra)


def test_plain_lines_carry_every_extra_field_as_key_value():
    line = PlainFormatter("%(levelname)s %(name)s %(message)s").format(
        record(
            "rest error",
            member_id="abc123",
            method="crm.item.list",
            code="QUERY_LIMIT_EXCEEDED",
            http_status=503,
            request_id="r-1",
            detail="two words",
        )
    )
    assert line == (
        "INFO portals.lifecycle rest error member_id=abc123 method=crm.item.list "
        'code=QUERY_LIMIT_EXCEEDED http_status=503 request_id=r-1 detail="two words"'
    )


def test_a_line_without_fields_is_unchanged_and_a_traceback_stays_below():
    formatter = PlainFormatter("%(levelname)s %(message)s")
    assert formatter.format(record("portal event")) == "INFO portal event"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = record("failed", member_id="m1")
        failed.exc_info = sys.exc_info()
    first, *rest = formatter.format(failed).split("\n")
    assert first == "INFO failed member_id=m1" and rest[-1] == "ValueError: boom"


def test_the_configured_formats_carry_the_same_fields(settings):
    plain = settings.LOGGING["formatters"]["plain"]
    assert plain["()"] == "b24widget.logformat.PlainFormatter"
    line = JsonFormatter("%(levelname)s %(message)s").format(record("portal event", member_id="m1", event="installed"))
    assert json.loads(line)["member_id"] == "m1"


# --- one JSON stream from every process (gunicorn's error and access logs, Celery's worker and beat) ----------

ROOT = Path(__file__).resolve().parents[2]


def _environment(tmp_path, **extra):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "GUNICORN_", "LOG_", "XDG_"))}
    return {
        **base,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "CELERY_BROKER_URL": "filesystem://",
        "CELERY_BROKER_DIR": str(tmp_path / "broker"),
        "CELERY_QUEUE": f"b24widget-test-logs-{uuid.uuid4().hex[:12]}",
        **extra,
    }


def _get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": "localhost"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _start_gunicorn(env, log):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:b24widget.gunicorn", "b24widget.wsgi"],
        cwd=ROOT,
        env={**env, "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "2"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            _get(port, "/nothing-here/")
            return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not start (exit {process.poll()})") from None
            time.sleep(0.2)


def _stop(process):
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def _json_lines(path) -> list[dict]:
    text = path.read_text()
    assert text.strip(), "the process wrote nothing"
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}\nwhole log:\n{text}") from None
    return lines


@pytest.mark.slow  # starts gunicorn
def test_gunicorn_writes_only_json_lines_with_the_access_log_as_fields(tmp_path):
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        process, port = _start_gunicorn(_environment(tmp_path), log)
    try:
        assert _get(port, "/nothing-here/?secret=abc") == 404
    finally:
        _stop(process)
    lines = _json_lines(log_path)
    assert {"gunicorn.error", "gunicorn.access"} <= {line["logger"] for line in lines}
    assert any(line["message"].startswith("Listening at") for line in lines)
    access = [line for line in lines if line["logger"] == "gunicorn.access" and line["status"] == 404]
    assert access and access[-1]["method"] == "GET" and access[-1]["path"] == "/nothing-here/"
    assert isinstance(access[-1]["duration_ms"], int) and "secret" not in log_path.read_text()


@pytest.mark.slow  # starts a Celery worker and beat
@pytest.mark.parametrize("program", ["worker", "beat"])
def test_celery_writes_only_json_lines_without_banners(program, tmp_path):
    log_path = tmp_path / f"{program}.log"
    command = [sys.executable, "-m", "celery", "-A", "b24widget", program, "--loglevel", "INFO"]
    command += ["--pool", "solo"] if program == "worker" else ["--schedule", str(tmp_path / "beat-schedule")]
    ready = "ready." if program == "worker" else "beat: Starting..."

    def started() -> bool:
        # Beat logs "Starting..." before it opens its schedule (shelve, importing dbm): stopped in between, its
        # signal handler opened the schedule again inside that import and printed a traceback. Its schedule
        # file exists once the open is done.
        return ready in log_path.read_text() and (program == "worker" or any(tmp_path.glob("beat-schedule*")))

    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=_environment(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not started():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
    finally:
        _stop(process)
    lines = _json_lines(log_path)
    assert any(line["message"].endswith(ready) for line in lines)
    if program == "worker":  # Celery prints this one straight to the terminal
        assert any("Warm shutdown" in line["message"] for line in lines)


@pytest.mark.slow  # starts two gunicorn instances
def test_two_gunicorn_instances_on_one_host_share_no_control_socket(tmp_path):
    """gunicorn's default control socket is one path per user ($XDG_RUNTIME_DIR/gunicorn.ctl): the second
    instance would take it over. Off by default; GUNICORN_CONTROL_SOCKET gives each instance its own."""
    runtime = tmp_path / "run"
    runtime.mkdir()
    env = _environment(tmp_path, XDG_RUNTIME_DIR=str(runtime), HOME=str(tmp_path))
    started = []
    try:
        for name in ("a", "b"):
            with open(tmp_path / f"{name}.log", "wb") as log:
                started.append(_start_gunicorn(env, log))
        assert all(_get(port, "/nothing-here/") == 404 for _process, port in started)
        assert list(runtime.iterdir()) == [] and not (tmp_path / ".gunicorn").exists()
        for name in ("c", "d"):
            own = {**env, "GUNICORN_CONTROL_SOCKET": str(runtime / f"{name}.ctl")}
            with open(tmp_path / f"{name}.log", "wb") as log:
                started.append(_start_gunicorn(own, log))
        deadline = time.monotonic() + 30
        while sorted(p.name for p in runtime.iterdir()) != ["c.ctl", "d.ctl"]:
            assert time.monotonic() < deadline, sorted(p.name for p in runtime.iterdir())
            time.sleep(0.2)
    finally:
        for process, _port in started:
            _stop(process)
