"""Redis for tests: a key prefix owned by this run, and clean-up that deletes only keys under it.

The Redis server on a developer's machine or CI is shared; a test must never empty a whole Redis
database (a Django RedisCache's `clear()` does exactly that), so tests put every key under RUN_PREFIX
and delete by prefix.
"""

import os
import uuid

import redis

import tests.run_env  # noqa: F401  (first: an inherited prefix is another process's)

# Unique per test run: two runs at once on one server never touch each other's keys. Kept in the
# environment so that processes a test starts (tests/settings.py) use the same prefix.
RUN_PREFIX = os.environ.setdefault("B24_TEST_CACHE_PREFIX", f"b24widget-test-{uuid.uuid4().hex[:12]}")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/7")


def delete_prefixed(url: str, prefix: str) -> int:
    """Delete the keys that start with `prefix` (Django's cache keys are `<KEY_PREFIX>:<version>:<key>`)."""
    client = redis.Redis.from_url(url)
    deleted = 0
    for key in client.scan_iter(match=f"{prefix}*", count=500):
        deleted += client.delete(key)
    return deleted


def clear_cache(cache) -> None:
    """cache.clear(), except that a Redis cache loses only its own prefix's keys, never the database; and the
    budgets' units this process holds (bitrix24.limits leases), which belong to what was cleared."""
    from django.core.cache.backends.redis import RedisCache

    from bitrix24 import limits

    with limits._leases_lock:
        limits._leases.clear()

    if isinstance(cache, RedisCache):
        if not cache.key_prefix:
            raise RuntimeError("a test Redis cache needs a KEY_PREFIX (tests/redis_keys.py: RUN_PREFIX)")
        # The server list is private to RedisCache (django-stubs leaves it out); Django keeps it there.
        for location in cache._servers:  # type: ignore[attr-defined]
            delete_prefixed(location, cache.key_prefix + ":")
    else:
        cache.clear()
