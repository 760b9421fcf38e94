"""Per-portal pacing shared through the cache: no QUERY_LIMIT_EXCEEDED reaches Bitrix24's limit."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis

from portals import limits
from portals.models import Portal
from portals.rest import PortalClient, RestError

ROOT = Path(__file__).resolve().parents[2]
from tests.redis_keys import REDIS_URL, RUN_PREFIX, delete_prefixed


def test_gcra_allows_the_burst_then_paces(settings):
    settings.B24_RATE_LIMIT_BURST = 3
    settings.B24_RATE_LIMIT_PER_SECOND = 10
    waits = [limits.reserve("m-gcra", now=1000.0) for _ in range(6)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.1, 0.2, 0.3])
    # After a quiet second the bucket has drained: a burst is allowed again.
    assert limits.reserve("m-gcra", now=1002.0) == 0.0


def test_disabled_limiter_never_waits(settings):
    settings.B24_RATE_LIMIT_PER_SECOND = 0
    assert all(limits.reserve("m-off") == 0.0 for _ in range(100))


def test_operating_time_near_the_budget_pauses_the_method(settings):
    import time
    settings.B24_OPERATING_PAUSE_AT = 400
    limits.note_operating("m-op", "crm.item.list", {"operating": 450.5, "operating_reset_at": time.time() + 0.3})
    started = time.monotonic()
    limits.wait_for_method("m-op", "crm.item.list")
    assert time.monotonic() - started >= 0.25
    limits.wait_for_method("m-op", "user.current")  # other methods are not held back


def test_a_long_pause_fails_with_the_limit_code(settings, installed):
    import time
    portal, b24 = installed
    settings.B24_MAX_WAIT = 1
    limits.pause_method(portal.member_id, "user.admin", time.time() + 60)
    before = b24.calls("user.admin")  # the install asked once (is the installer an administrator?)
    with pytest.raises(RestError) as info:
        PortalClient(portal).call("user.admin")
    assert info.value.code == "OPERATION_TIME_LIMIT"
    assert b24.calls("user.admin") == before


def _limit(settings, b24):
    # The stand-in enforces a tight bucket so the test is quick; our limiter stays a little below it.
    b24.rate_limit = True
    # Headroom as in production (40 of 50): a late thread or process may send a few calls together.
    b24.rate_limit_burst = 16
    b24.rate_limit_drain = 50.0
    settings.B24_RATE_LIMIT_BURST = 6
    settings.B24_RATE_LIMIT_PER_SECOND = 30
    settings.B24_REST_MAX_RETRIES = 0  # a QUERY_LIMIT_EXCEEDED would surface, not be retried away


def _limited_answers(b24):
    return [r for r in b24.requests if r.get("status") == 503]


@pytest.mark.django_db(transaction=True)
def test_threads_sharing_one_portal_stay_under_the_limit(settings, client, b24):
    from tests.conftest import do_install
    portal = do_install(client, b24)
    _limit(settings, b24)
    errors = []

    def worker():
        from django.db import connection
        try:
            client_ = PortalClient(Portal.objects.get(pk=portal.pk))
            for _ in range(25):
                client_.call("server.time")
        except RestError as exc:
            errors.append(exc.code)
        finally:
            connection.close()  # this thread's own connection; the test database is dropped at the end

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert b24.calls("server.time") == 150
    assert _limited_answers(b24) == []


def test_without_the_limiter_the_stand_in_does_refuse(settings, installed):
    """The control: the same load with pacing off meets QUERY_LIMIT_EXCEEDED (the limit is real)."""
    portal, b24 = installed
    _limit(settings, b24)
    settings.B24_RATE_LIMIT_PER_SECOND = 0
    with pytest.raises(RestError) as info:
        for _ in range(80):
            PortalClient(portal).call("server.time")
    assert info.value.code == "QUERY_LIMIT_EXCEEDED"


PROCESS_SCRIPT = """
import json, os, sys, django
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
django.setup()
from portals.models import Portal
from portals.rest import PortalClient, RestError
spec = json.loads(sys.argv[1])
portal = Portal(member_id=spec["member_id"], domain=spec["domain"], client_endpoint=spec["endpoint"],
                access_token=spec["token"], status="active")
sys.stdin.readline()
errors = 0
for _ in range(spec["calls"]):
    try:
        PortalClient(portal).call("server.time")
    except RestError as exc:
        errors += 1
        print(exc.code, file=sys.stderr)
print(errors)
"""


@pytest.mark.django_db
def test_processes_sharing_one_portal_through_redis_stay_under_the_limit(settings, installed):
    portal, b24 = installed
    prefix = f"{RUN_PREFIX}-limiter"  # only this test's keys, on a server others may use
    try:
        delete_prefixed(REDIS_URL, prefix)
    except redis.RedisError as exc:
        pytest.fail(f"Redis is needed at {REDIS_URL} for the multi-process limiter test ({exc})")
    _limit(settings, b24)
    env = {**os.environ, "CACHE_URL": REDIS_URL, "B24_TEST_CACHE_PREFIX": prefix, "B24_RATE_LIMIT_BURST": "6", "B24_RATE_LIMIT_PER_SECOND": "30",
           "B24_REST_MAX_RETRIES": "0"}
    spec = json.dumps({"member_id": portal.member_id, "domain": portal.domain, "endpoint": portal.client_endpoint,
                       "token": portal.access_token, "calls": 50})
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS_SCRIPT, spec], cwd=ROOT, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(4)]
    import time
    time.sleep(2.5)
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
        assert out.strip() == "0", err[-2000:]
    assert b24.calls("server.time") == 200
    assert _limited_answers(b24) == []
    assert delete_prefixed(REDIS_URL, prefix) > 0  # the processes did share their limiter under the prefix
