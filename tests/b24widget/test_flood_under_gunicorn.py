"""A flood of forged widget opens against the README's gunicorn config (a few threads per worker):
/healthz and an already verified open keep answering, the forged opens cost a bounded number of calls
to Bitrix24 and no rows. A liveness test: every probe must be answered (within a generous client
timeout); how fast is for bench/flood.py."""

import http.client
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest

from portals.models import Portal, PortalEvent, Rejection
from tests.conftest import do_install
from tests.helpers import database_url, free_port

ROOT = Path(__file__).resolve().parents[2]
# slow: gunicorn in a subprocess under a flood of requests.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _post(port, path, fields, timeout=10.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(
            "POST", path, body=urlencode(fields), headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _get(port, path, timeout=10.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": "localhost"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.fixture
def gunicorn(standin):
    port = free_port()
    prefix = f"flood-{uuid.uuid4().hex[:12]}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        "B24_OAUTH_URL": standin.oauth_url,
        "LOG_LEVEL": "ERROR",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "2",
        "GUNICORN_THREADS": "4",
        "CACHE_URL": f"redis://127.0.0.1:6379/0?key_prefix={prefix}",
        "B24_VERIFY_BURST": "10",
        "B24_VERIFY_PER_MINUTE": "6",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:b24widget.gunicorn", "--no-control-socket", "b24widget.wsgi"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _get(port, "/healthz", timeout=2) == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not start: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        import redis

        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)


def test_forged_opens_do_not_stall_the_deployment(client, b24, standin, gunicorn):
    port = gunicorn
    portal = do_install(client, b24)
    verified = b24.placement_post(user_id="2")
    assert _post(port, "/placement/", verified) == 200  # verified once; the verdict is shared through Redis
    rows_before = (PortalEvent.objects.count(), Rejection.objects.count())
    server_before, portal_before = len(standin.server_requests), len(b24.requests)

    forged_statuses, probes, stop = [], [], threading.Event()
    lock = threading.Lock()

    def flood(worker):
        for n in range(10):
            fields = dict(verified, AUTH_ID=f"{worker:08x}{n:024x}")
            try:
                status = _post(port, "/placement/", fields, timeout=30)
            except OSError:
                status = "error"
            with lock:
                forged_statuses.append(status)

    def probe():
        while not stop.is_set():
            for kind, call in (
                ("healthz", lambda: _get(port, "/healthz")),
                ("verified", lambda: _post(port, "/placement/", verified)),
            ):
                started = time.monotonic()
                try:
                    status = call()
                except OSError as exc:  # a timeout: the deployment stalled
                    status = type(exc).__name__
                probes.append((kind, status, time.monotonic() - started))
            time.sleep(0.1)

    prober = threading.Thread(target=probe)
    prober.start()
    flooders = [threading.Thread(target=flood, args=(w,)) for w in range(30)]
    for thread in flooders:
        thread.start()
    for thread in flooders:
        thread.join(120)
    stop.set()
    prober.join(30)

    assert len(forged_statuses) == 300 and set(forged_statuses) <= {403, 429}
    assert forged_statuses.count(429) >= 280  # beyond the small verification budget: refused at once
    assert probes and all(status == 200 for _kind, status, _t in probes), probes
    # Bounded work for strangers: the budget's few verifications, nothing else; no history rows.
    assert len(standin.server_requests) - server_before <= 12
    assert len(b24.requests) == portal_before
    assert PortalEvent.objects.count() == rows_before[0]
    assert Rejection.objects.count() - rows_before[1] <= 2
    assert Portal.objects.get(pk=portal.pk).status == Portal.Status.ACTIVE
