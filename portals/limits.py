"""Pacing of REST calls per portal, shared by every process through the Django cache.

Bitrix24 meters each portal with a leaky bucket (about 50 requests of burst, draining 2 per second)
and each method with a budget of operating time (about 480 s per 10 minutes). Exceeding either
gets QUERY_LIMIT_EXCEEDED (503) or OPERATION_TIME_LIMIT (429). The limiter keeps the app under both
by waiting before it sends. With CACHE_URL pointing at Redis the limits hold across machines; the
local-memory default covers one process.

The request pacing is GCRA (the leaky bucket as a "theoretical arrival time"): each caller reserves
the next slot under a short cache lock, then sleeps until its slot.
"""
import logging
import time
import uuid

from django.conf import settings
from django.core.cache import cache

from b24widget import metrics

log = logging.getLogger(__name__)

_LOCK_TIMEOUT = 5  # seconds; a crashed holder's lock expires by itself


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


def reserve(member_id: str, now: float | None = None) -> float:
    """Reserve a request slot for the portal; returns the seconds to wait before sending."""
    rate = settings.B24_RATE_LIMIT_PER_SECOND
    if rate <= 0:
        return 0.0
    interval = 1.0 / rate
    tolerance = max(settings.B24_RATE_LIMIT_BURST - 1, 0) * interval
    key = f"b24widget:rl:{member_id}"
    token = _lock(key + ":lock")
    try:
        now = time.time() if now is None else now
        tat = max(cache.get(key) or 0.0, now)
        send_at = max(tat - tolerance, now)
        cache.set(key, tat + interval, int(tolerance + interval) + 60)
    finally:
        _unlock(key + ":lock", token)
    return send_at - now


def pace(member_id: str) -> None:
    """Wait for the portal's next request slot (and for any method pause noted by `note_operating`)."""
    wait = reserve(member_id)
    if wait > settings.B24_MAX_WAIT:
        raise LimitWaitTooLong(wait)
    if wait > 0:
        metrics.limit_wait("rate", wait)
        time.sleep(wait)


def _operating_key(member_id: str, method: str) -> str:
    return f"b24widget:op:{member_id}:{method}"


def wait_for_method(member_id: str, method: str) -> None:
    """If the method's operating budget is spent, wait until Bitrix24 resets it."""
    reset_at = cache.get(_operating_key(member_id, method))
    if not reset_at:
        return
    wait = reset_at - time.time()
    if wait <= 0:
        return
    if wait > settings.B24_MAX_WAIT:
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
