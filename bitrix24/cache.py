"""The shared cache (Django's, Redis in production) for the client's state, or this process's memory
while the shared one fails.

Pacing, budgets and single-flight markers must outlive no outage: when Redis stops answering, each process
keeps them in its own memory for a while (pacing per process instead of shared), logs that once in a
while, and tries the shared cache again a few seconds later. No request fails because the cache did.
"""

import contextlib
import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from django.core.cache import DEFAULT_CACHE_ALIAS, caches
from django.core.cache import cache as shared_cache
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from django.core.signals import setting_changed
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
        # (our keys are short and plain: Django's memcached-compatibility check of each character is skipped)
        name = backend.make_key(key)
        try:
            try:
                return self._call(_connection(backend), name, args)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                # A held connection the server closed while idle (its timeout, a restart): once more on a new one.
                _drop_connection()
                return self._call(_connection(backend), name, args)
        except Exception as exc:  # redis.ConnectionError, TimeoutError, ...: as _SafeCache does
            _drop_connection()
            _cache_down_until[0] = time.monotonic() + _CACHE_RETRY_AFTER
            if time.monotonic() - _last_warning[0] > 10:
                _last_warning[0] = time.monotonic()
                log.warning(
                    "shared cache failed; limits use this process's memory", extra={"error": type(exc).__name__}
                )
            raise NoScripts from None

    def _call(self, connection: Any, name: str, args: tuple[str | int | float, ...]) -> Any:
        connection.send_command("EVALSHA", self.sha, 1, name, *args)
        try:
            return connection.read_response()
        except NoScriptError:  # the server has not seen it yet (or restarted): send it whole once
            connection.send_command("EVAL", self.source, 1, name, *args)
            return connection.read_response()


# Each thread keeps one connection of the backend's pool for the scripts (the request threads run one a request):
# redis-py's own call takes a connection from the pool and gives it back each time, with a lock and a readiness
# check of the socket, which cost as much client CPU as the round trip (bench/RESULTS.md, "the dispatcher").
# RedisCache keeps its client private and builds a redis.Redis per call: one is kept per backend (writes always
# go to its first server's pool; the pool's connections carry its timeouts and credentials).
_held = threading.local()


def _connection(backend: RedisCache) -> Any:
    owner = backend._cache
    held = getattr(_held, "connection", None)
    if held is not None and held[0] is owner and held[2] == os.getpid():
        return held[1]  # (a forked child's thread takes its own: the parent's socket is the parent's)
    client = _clients.get(owner)
    if client is None:
        client = _clients.setdefault(owner, owner.get_client(None, write=True))
    connection = client.connection_pool.get_connection()
    _held.connection = (owner, connection, os.getpid())
    return connection


def _drop_connection() -> None:
    held = getattr(_held, "connection", None)
    _held.connection = None
    if held is not None and held[2] == os.getpid():
        with contextlib.suppress(Exception):
            held[1].disconnect()


def _reset_breaker(*, setting: str, **kwargs: object) -> None:
    # A new cache configuration (tests, a reconfigured process) starts with a closed breaker.
    if setting == "CACHES":
        _cache_down_until[0] = 0.0
        _fallback.clear()


setting_changed.connect(_reset_breaker)
