"""The shared cache (Django's, Redis in production) for the client's state, or this process's memory
while the shared one fails.

Pacing, budgets and single-flight markers must outlive no outage: when Redis stops answering, each process
keeps them in its own memory for a while (pacing per process instead of shared), logs that once in a
while, and tries the shared cache again a few seconds later. No request fails because the cache did.
"""

import hashlib
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

from django.core.cache import DEFAULT_CACHE_ALIAS, caches
from django.core.cache import cache as shared_cache
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from django.core.signals import setting_changed
from redis.exceptions import NoScriptError

log = logging.getLogger(__name__)

_fallback = LocMemCache("b24widget-limits-fallback", {"OPTIONS": {"MAX_ENTRIES": 50000}})
_last_warning = [0.0]
_CACHE_RETRY_AFTER = 5.0  # seconds a failed shared cache is left alone before it is tried again
_cache_down_until = [0.0]


class _SafeCache:
    """The shared cache, or this process's memory while the shared one fails.

    After a failure the shared cache is not tried again for _CACHE_RETRY_AFTER seconds (a breaker):
    a Redis host that stops answering costs one socket timeout per process every few seconds, not
    one per cache operation."""

    # Any method of Django's cache, with its arguments and result as Django types them (a cached value is Any).
    def __getattr__(self, name: str) -> Callable[..., Any]:
        operation = getattr(shared_cache, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if time.monotonic() < _cache_down_until[0]:
                return getattr(_fallback, name)(*args, **kwargs)
            try:
                return operation(*args, **kwargs)
            except Exception as exc:  # redis.ConnectionError, TimeoutError, ...: any cache failure
                _cache_down_until[0] = time.monotonic() + _CACHE_RETRY_AFTER
                if time.monotonic() - _last_warning[0] > 10:
                    _last_warning[0] = time.monotonic()
                    log.warning(
                        "shared cache failed; limits use this process's memory", extra={"error": type(exc).__name__}
                    )
                return getattr(_fallback, name)(*args, **kwargs)

        return call


cache = _SafeCache()


_clients: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


class NoScripts(Exception):
    """The shared cache cannot run a script now (it is not Redis, or it is failing): take the generic path."""


class Script:
    """A Lua script run on the shared cache's Redis against one key: atomic there, one round trip, where
    the generic path takes a lock and several calls. `run` raises NoScripts when the shared cache is not
    Redis or is failing (the breaker above: the caller's generic path then uses this process's memory)."""

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # Redis names a script by its SHA-1

    def run(self, key: str, *args: str | int | float) -> Any:
        backend = caches[DEFAULT_CACHE_ALIAS]  # (the backend itself: `shared_cache` is a proxy)
        if time.monotonic() < _cache_down_until[0] or not isinstance(backend, RedisCache):
            raise NoScripts
        name = backend.make_and_validate_key(key)
        try:
            # RedisCache keeps its client private and builds a redis.Redis per call,
            # which costs more CPU than the script's round trip: one is kept per backend (writes always go to
            # its first server's pool; a redis.Redis is safe to share between threads).
            owner = backend._cache
            client = _clients.get(owner)
            if client is None:
                client = _clients.setdefault(owner, owner.get_client(name, write=True))
            try:
                return client.evalsha(self.sha, 1, name, *args)
            except NoScriptError:  # the server has not seen it yet (or restarted): send it whole once
                return client.eval(self.source, 1, name, *args)
        except Exception as exc:  # redis.ConnectionError, TimeoutError, ...: as _SafeCache does
            _cache_down_until[0] = time.monotonic() + _CACHE_RETRY_AFTER
            if time.monotonic() - _last_warning[0] > 10:
                _last_warning[0] = time.monotonic()
                log.warning(
                    "shared cache failed; limits use this process's memory", extra={"error": type(exc).__name__}
                )
            raise NoScripts from None


def _reset_breaker(*, setting: str, **kwargs: object) -> None:
    # A new cache configuration (tests, a reconfigured process) starts with a closed breaker.
    if setting == "CACHES":
        _cache_down_until[0] = 0.0
        _fallback.clear()


setting_changed.connect(_reset_breaker)
