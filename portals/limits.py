"""Pacing of REST calls per portal, shared by every process through the Django cache.

Bitrix24 meters each portal with a leaky bucket (about 50 requests of burst, draining 2 per second)
and each method with a budget of operating time (about 480 s per 10 minutes). Exceeding either
gets QUERY_LIMIT_EXCEEDED (503) or OPERATION_TIME_LIMIT (429). The limiter keeps the app under both
by waiting before it sends. With CACHE_URL pointing at Redis the limits hold across machines; the
local-memory default covers one process.

The request pacing is GCRA (the leaky bucket as a "theoretical arrival time"): each caller reserves
the next slot under a short cache lock, then sleeps until its slot. A slot further away than the
caller may wait is not reserved at all: a web request (max_wait = B24_REQUEST_MAX_WAIT, about a
second) is refused at once instead of sleeping, and takes nothing from the portal's budget.

`admit` is the same arithmetic without waiting, for budgets of unverified work (verifying unknown
tokens, OAuth attempts for forged installs): over budget means "refuse now". `single_flight` keeps
one such attempt in flight per key.

When the cache (Redis) fails, each process falls back to its own memory for this state and says so
in the log: pacing gets per-process instead of shared, but no request fails because of it.
"""
import contextlib
import logging
import time
import uuid

from django.conf import settings
from django.core.cache import cache as shared_cache
from django.core.cache.backends.locmem import LocMemCache

from b24widget import metrics

log = logging.getLogger(__name__)

_LOCK_TIMEOUT = 5  # seconds; a crashed holder's lock expires by itself
_fallback = LocMemCache("b24widget-limits-fallback", {"OPTIONS": {"MAX_ENTRIES": 50000}})
_last_warning = [0.0]


class _SafeCache:
    """The shared cache, or this process's memory while the shared one raises."""

    def __getattr__(self, name):
        operation = getattr(shared_cache, name)

        def call(*args, **kwargs):
            try:
                return operation(*args, **kwargs)
            except Exception as exc:  # redis.ConnectionError, TimeoutError, ...: any cache failure
                if time.monotonic() - _last_warning[0] > 10:
                    _last_warning[0] = time.monotonic()
                    log.warning("shared cache failed; limits use this process's memory",
                                extra={"error": type(exc).__name__})
                return getattr(_fallback, name)(*args, **kwargs)

        return call


cache = _SafeCache()


class LimitWaitTooLong(Exception):
    """The wait a limit asks for exceeds B24_MAX_WAIT."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        super().__init__(f"Bitrix24 limit asks to wait {seconds:.0f}s")


def _lock(key: str):
    token = uuid.uuid4().hex
    deadline = time.monotonic() + _LOCK_TIMEOUT * 2
    while not cache.add(key, token, _LOCK_TIMEOUT):
        if time.monotonic() > deadline:
            # The holder is gone or the cache is struggling: go on rather than stall every caller.
            log.warning("rate limiter lock not acquired; proceeding", extra={"lock": key})
            return None
        time.sleep(0.001)
    return token


def _unlock(key: str, token) -> None:
    if token is not None and cache.get(key) == token:
        cache.delete(key)


def _gcra(key: str, *, rate: float, burst: int, max_wait: float, now: float | None = None) -> float:
    """Reserve the next slot of a GCRA bucket if it comes within `max_wait`; returns the wait.

    Raises LimitWaitTooLong (nothing reserved) when the slot is further away.
    """
    interval = 1.0 / rate
    tolerance = max(burst - 1, 0) * interval
    token = _lock(key + ":lock")
    try:
        now = time.time() if now is None else now
        tat = max(cache.get(key) or 0.0, now)
        send_at = max(tat - tolerance, now)
        if send_at - now > max_wait:
            raise LimitWaitTooLong(send_at - now)
        cache.set(key, tat + interval, int(tolerance + interval) + 60)
    finally:
        _unlock(key + ":lock", token)
    return send_at - now


def reserve(member_id: str, now: float | None = None, *, max_wait: float | None = None) -> float:
    """Reserve a request slot for the portal; returns the seconds to wait before sending."""
    rate = settings.B24_RATE_LIMIT_PER_SECOND
    if rate <= 0:
        return 0.0
    return _gcra(f"b24widget:rl:{member_id}", rate=rate, burst=settings.B24_RATE_LIMIT_BURST,
                 max_wait=settings.B24_MAX_WAIT if max_wait is None else max_wait, now=now)


def pace(member_id: str, *, max_wait: float | None = None) -> None:
    """Wait for the portal's next request slot; LimitWaitTooLong when it is further than `max_wait`."""
    wait = reserve(member_id, max_wait=max_wait)
    if wait > 0:
        metrics.limit_wait("rate", wait)
        time.sleep(wait)


def admit(key: str, *, per_minute: float, burst: int) -> bool:
    """Take one unit of a budget without waiting; False when the budget is spent (nothing taken)."""
    if per_minute <= 0:
        return True
    try:
        _gcra(f"b24widget:budget:{key}", rate=per_minute / 60.0, burst=burst, max_wait=0.0)
    except LimitWaitTooLong:
        return False
    return True


@contextlib.contextmanager
def single_flight(key: str, ttl: float):
    """Yields True for the one holder of `key` (for at most `ttl` seconds), False for everyone else."""
    name = f"b24widget:flight:{key}"
    token = uuid.uuid4().hex
    held = bool(cache.add(name, token, max(int(ttl) + 1, 1)))
    try:
        yield held
    finally:
        if held:
            _unlock(name, token)


def _operating_key(member_id: str, method: str) -> str:
    return f"b24widget:op:{member_id}:{method}"


def wait_for_method(member_id: str, method: str, *, max_wait: float | None = None) -> None:
    """If the method's operating budget is spent, wait until Bitrix24 resets it (at most `max_wait`)."""
    reset_at = cache.get(_operating_key(member_id, method))
    if not reset_at:
        return
    wait = reset_at - time.time()
    if wait <= 0:
        return
    if wait > (settings.B24_MAX_WAIT if max_wait is None else max_wait):
        raise LimitWaitTooLong(wait)
    log.info("method paused for its operating-time budget",
             extra={"member_id": member_id, "method": method, "wait": round(wait, 1)})
    metrics.limit_wait("operating", wait)
    time.sleep(wait)


def note_operating(member_id: str, method: str, time_block) -> None:
    """Read `time.operating` / `operating_reset_at` from an answer; pause the method near its budget."""
    if not isinstance(time_block, dict):
        return
    try:
        operating = float(time_block.get("operating") or 0)
        reset_at = float(time_block.get("operating_reset_at") or 0)
    except (TypeError, ValueError):
        return
    if operating >= settings.B24_OPERATING_PAUSE_AT and reset_at > time.time():
        pause_method(member_id, method, reset_at)


def pause_method(member_id: str, method: str, until: float) -> None:
    """Hold back calls of `method` on the portal until `until` (a Unix time)."""
    timeout = max(int(until - time.time()) + 1, 1)
    cache.set(_operating_key(member_id, method), until, timeout)
