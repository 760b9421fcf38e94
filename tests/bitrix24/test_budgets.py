"""Budgets of unverified or signed work (bitrix24.limits.admit / refused_for): the same arithmetic on Redis
(one script call, atomic on the server) as on any other cache, and this process's memory while Redis fails."""

import socket
import threading
import time
import uuid

import pytest
import redis

from bitrix24 import cache as _cache
from bitrix24 import limits
from tests.redis_keys import REDIS_URL, RUN_PREFIX, delete_prefixed

PREFIX = f"{RUN_PREFIX}-budgets"
REDIS = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL, "KEY_PREFIX": PREFIX}


@pytest.fixture(params=["locmem", "redis"])
def budget_cache(request, settings):
    working = settings.CACHES
    if request.param == "redis":
        backend = REDIS
    else:
        backend = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": f"budgets-{uuid.uuid4()}"}
    settings.CACHES = {"default": backend}
    yield request.param
    settings.CACHES = working
    if request.param == "redis":
        delete_prefixed(REDIS_URL, PREFIX + ":")


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


def test_a_budget_takes_its_burst_then_refuses_with_the_wait_and_takes_nothing(budget_cache):
    mine, other = key(), key()
    # 6 a minute: one unit every 10 s, after a burst of 3.
    assert [limits.refused_for(mine, per_minute=6, burst=3) for _ in range(3)] == [None, None, None]
    wait = limits.refused_for(mine, per_minute=6, burst=3)
    assert wait is not None and 9.0 < wait <= 10.0
    again = limits.refused_for(mine, per_minute=6, burst=3)  # a refusal took nothing: the wait did not grow
    assert again is not None and again <= wait
    assert limits.admit(other, per_minute=6, burst=3)  # budgets are per key


def test_a_budget_holds_under_concurrent_takers(budget_cache):
    mine, taken, lock = key(), [], threading.Lock()

    def take():
        for _ in range(10):
            if limits.admit(mine, per_minute=1, burst=20):
                with lock:
                    taken.append(1)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(taken) == 20


def test_on_redis_a_budget_is_one_key_and_takes_no_lock(settings):
    settings.CACHES = {"default": REDIS}
    mine = key()
    try:
        assert limits.admit(mine, per_minute=60, burst=5)
        stored = sorted(k.decode() for k in redis.Redis.from_url(REDIS_URL).scan_iter(match=f"{PREFIX}:*{mine}*"))
        # One script call: the arrival time under its own key, no lock key ever written.
        assert stored == [f"{PREFIX}:1:b24widget:budget:{mine}:tat"]
    finally:
        delete_prefixed(REDIS_URL, PREFIX + ":")


@pytest.fixture
def redis_down(settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    working = settings.CACHES
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{closed}/0",
            "KEY_PREFIX": PREFIX,
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }
    yield
    settings.CACHES = working  # before the suite's own fixtures clear the cache


def test_with_redis_down_a_budget_still_counts_in_this_process(redis_down):
    mine = key()
    assert [limits.admit(mine, per_minute=6, burst=2) for _ in range(3)] == [True, True, False]


def test_a_connection_the_server_closed_is_replaced_without_leaving_redis(settings):
    """Each thread keeps one connection for the budget's script (bitrix24/cache.py): one the server closed while
    it was kept (an idle timeout, a restart) is replaced at the next call, which still counts on Redis."""
    settings.CACHES = {"default": REDIS}
    mine = key()
    try:
        assert limits.admit(mine, per_minute=6, burst=2)
        held = _cache._held.connection[1]
        held.send_command("CLIENT", "ID")
        redis.Redis.from_url(REDIS_URL).client_kill_filter(_id=held.read_response())
        assert limits.admit(mine, per_minute=6, burst=2)
        assert _cache._cache_down_until[0] < time.monotonic()  # the breaker stayed closed
        assert _cache._held.connection[1] is not held or held._sock is not None
        assert not limits.admit(mine, per_minute=6, burst=2)  # the two takes were Redis's: the third is refused
    finally:
        delete_prefixed(REDIS_URL, PREFIX + ":")


def _tat_ahead(mine: str) -> float:
    stored = redis.Redis.from_url(REDIS_URL).get(f"{PREFIX}:1:b24widget:budget:{mine}:tat")
    return float(stored) - time.time()


def test_a_busy_budget_takes_its_units_several_at_a_time_and_never_more_than_it_has(settings):
    """`lease=10` on Redis: a key taken again within LEASE_HOT takes ten units in one call and spends them in this
    process; at the budget's edge one unit is asked for, so exactly the burst is admitted, as without a lease."""
    settings.CACHES = {"default": REDIS}
    mine, edge = key(), key()
    try:
        # 60 a minute: one unit a second. 1 (not busy yet) + 10 (busy: a lease) + 9 spent locally + 10 again.
        assert [limits.refused_for(mine, per_minute=60, burst=100, lease=10) for _ in range(12)] == [None] * 12
        assert 19.0 < _tat_ahead(mine) <= 21.0  # 21 units taken from Redis in 3 calls: 1 + 10 + 10
        # A burst of 25, refilling one unit every 10 s: 25 admitted, whatever the leases, then refusals.
        answers = [limits.refused_for(edge, per_minute=6, burst=25, lease=10) for _ in range(40)]
        assert answers[:25] == [None] * 25 and all(a is not None for a in answers[25:])
    finally:
        delete_prefixed(REDIS_URL, PREFIX + ":")
        limits._leases.clear()


def test_a_quiet_budget_takes_one_unit_at_a_time(settings):
    settings.CACHES = {"default": REDIS}
    mine = key()
    try:
        for _ in range(3):
            assert limits.refused_for(mine, per_minute=60, burst=100, lease=10) is None
            time.sleep(limits.LEASE_HOT * 1.5)  # (not busy: more than LEASE_HOT between takes)
        assert 1.5 < _tat_ahead(mine) <= 3.0  # 3 units, one each
    finally:
        delete_prefixed(REDIS_URL, PREFIX + ":")
        limits._leases.clear()


def test_with_a_lease_the_burst_is_still_exact_on_any_cache(budget_cache):
    mine = key()
    try:
        answers = [limits.refused_for(mine, per_minute=6, burst=15, lease=10) for _ in range(30)]
        assert answers[:15] == [None] * 15 and all(a is not None for a in answers[15:])
    finally:
        limits._leases.clear()
