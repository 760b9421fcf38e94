"""Pacing of REST calls per portal, shared by every process through the Django cache.

Bitrix24 meters each portal with a leaky bucket and each method with a budget of operating time
(settings/performance/limits.md). The bucket depends on the portal's plan: Enterprise allows 250
requests, then 5 per second; every other plan 50, then 2 per second. Past it a request gets
QUERY_LIMIT_EXCEEDED (503). A method whose operating time passes its budget (about 480 s in 10
minutes) gets OPERATION_TIME_LIMIT (429) while other methods go on. The limiter keeps the app under
both by waiting before it sends. With CACHE_URL pointing at Redis the limits hold across machines;
the local-memory default covers one process.

The request pacing is GCRA (the leaky bucket as a "theoretical arrival time") with the plan's
numbers: each caller reserves the next slot under a short cache lock, then sleeps until its slot. A
slot further away than the caller may wait is not reserved at all: a web request (max_wait =
B24_REQUEST_MAX_WAIT, about a second) is refused at once instead of sleeping, and takes nothing
from the portal's budget.

The bucket adapts: when Bitrix24 answers QUERY_LIMIT_EXCEEDED anyway (a request reached it late on
a busy machine, another app on our address shares the portal's counter, the plan changed) the bucket
is taken as full; when such answers repeat the rate halves. It doubles back toward the plan's rate when a
request sent at the slowed rate is answered (`note_answered`: the counter had room; at most once a second)
and every PROBE_SECONDS without a limit answer: from its floor, 1/8, three answers a second apart or three
quiet probes. The docs' counter drains at the plan's rate whatever filled it, so once the answers stop the
plan's rate is mostly there at once; climbing back one eighth every quiet 5 s (35 s) held a backlog behind
our own pacing long after Bitrix24 would have taken it (bench/RESULTS.md, "the limit fault alone"). If the
portal still allows less, the next answer halves the rate again.

`admit` is the same arithmetic without waiting, for budgets of unverified work (verifying unknown
tokens, OAuth attempts for forged installs, the channel API's signed requests): over budget means
"refuse now". On Redis a budget is one Lua script call (atomic on the server, no lock to contend for: a
burst of a budget's own requests is never refused for a busy lock); on other caches it takes the short
lock. `single_flight` keeps one such attempt in flight per key.

When the cache (Redis) fails, each process falls back to its own memory for this state and says so
in the log (bitrix24/cache.py): pacing gets per-process instead of shared, but no request fails because of it.
"""

import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

from django.conf import settings

from . import cache as _cache
from . import metrics

# Re-exported: the apps keep their short-lived shared state through limits.cache too (placements.auth).
from .cache import cache as cache
from .errors import RETRYABLE, LimitWaitExceeded, RestError
from .wire import JSON

log = logging.getLogger(__name__)

_LOCK_TIMEOUT = 5  # seconds; a crashed holder's lock expires by itself
# settings/performance/limits.md, "Request Rate Limits": plan -> (limit before blocking X, drain per second Y)
ENTERPRISE, STANDARD = "enterprise", "standard"
PLANS = {ENTERPRISE: (250, 5.0), STANDARD: (50, 2.0)}
BACKOFF = 0.5  # the rate is multiplied by this on a QUERY_LIMIT_EXCEEDED answer ...
FLOOR = 0.125  # ... but never below this share of the plan's rate
PROBE_SECONDS = 5.0  # quiet seconds after which the rate steps up again ...
PROBE_FACTOR = 2.0  # ... multiplied by this (at most the plan's rate)


class _Counters:
    """What the limits did in this process (limit answers seen, retries, pauses): read by tests and bench."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


counters = _Counters()


def plan_of(license: str) -> str:
    """The rate plan a portal's LICENSE names: "<region>_<plan>", Enterprise plans are "ent..."

    (api-reference/common/system/app-info.md: de_ent250 ... de_ent10000; de_project, de_basic, de_std,
    de_pro100 are the others). Unknown or empty: the standard plan, the smaller bucket.
    """
    kind = str(license or "").lower().split("_", 1)[-1]
    return ENTERPRISE if kind.startswith("ent") else STANDARD


def bucket(plan: str) -> tuple[int, float]:
    """(burst, requests per second) for a plan; B24_RATE_LIMIT_BURST / _PER_SECOND override it when set."""
    burst, rate = PLANS.get(plan, PLANS[STANDARD])
    if settings.B24_RATE_LIMIT_PER_SECOND is not None:
        rate = settings.B24_RATE_LIMIT_PER_SECOND
    if settings.B24_RATE_LIMIT_BURST is not None:
        burst = settings.B24_RATE_LIMIT_BURST
    return burst, rate


class LimitWaitTooLong(Exception):
    """The wait a limit asks for exceeds B24_MAX_WAIT."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        super().__init__(f"Bitrix24 limit asks to wait {seconds:.0f}s")


def _lock(key: str, max_wait: float = _LOCK_TIMEOUT * 2) -> str | None:
    """The bucket's short lock, or None once `max_wait` (at most 10 s) passed without it."""
    token = uuid.uuid4().hex
    deadline = time.monotonic() + min(max(max_wait, 0.05), _LOCK_TIMEOUT * 2)
    while not cache.add(key, token, _LOCK_TIMEOUT):
        if time.monotonic() > deadline:
            log.warning("rate limiter lock not acquired", extra={"lock": key})
            return None
        time.sleep(0.001)
    return token


def _unlock(key: str, token: str | None) -> None:
    if token is not None and cache.get(key) == token:
        cache.delete(key)


# _gcra on Redis, in one round trip (atomic on the server): the bucket's theoretical arrival time is a plain
# number under "<key>:tat" (the generic path keeps a pickled one under "<key>", so the two never mix). The
# answer is a string: the wait when a slot was reserved, or "-" and the wait when it is too far (nothing taken).
_GCRA_SCRIPT = _cache.Script("""
local now, interval, tolerance, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local units = tonumber(ARGV[5] or '1')
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') or 0, now)
local wait = math.max(tat + (units - 1) * interval - tolerance, now) - now
if wait > max_wait then
  return '-' .. string.format('%.6f', wait)
end
local next_tat = tat + units * interval
redis.call('SET', KEYS[1], string.format('%.6f', next_tat), 'EX', math.floor(tolerance + units * interval) + 60)
return string.format('%.6f', wait)
""")


def _take_units(key: str, *, rate: float, burst: int, units: int) -> bool:
    """Take `units` of a GCRA bucket at once if they are all free now (Redis only: False elsewhere, or while it
    fails, and the caller takes one unit the usual way)."""
    interval = 1.0 / rate
    tolerance = max(burst - 1, 0) * interval
    try:
        answer = _GCRA_SCRIPT.run(f"{key}:tat", repr(time.time()), repr(interval), repr(tolerance), "0", str(units))
    except _cache.NoScripts:
        return False
    text = answer.decode() if isinstance(answer, bytes) else str(answer)
    return not text.startswith("-")


def _gcra(key: str, *, rate: float, burst: int, max_wait: float, now: float | None = None) -> float:
    """Reserve the next slot of a GCRA bucket if it comes within `max_wait`; returns the wait.

    Raises LimitWaitTooLong (nothing reserved) when the slot is further away. On Redis one script call;
    on any other cache (or while Redis fails) under the cache's short lock.
    """
    interval = 1.0 / rate
    tolerance = max(burst - 1, 0) * interval
    try:
        at = time.time() if now is None else now
        answer = _GCRA_SCRIPT.run(f"{key}:tat", repr(at), repr(interval), repr(tolerance), repr(max_wait))
    except _cache.NoScripts:
        pass
    else:
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        if text.startswith("-"):
            raise LimitWaitTooLong(float(text[1:]))
        return float(text)
    token = _lock(key + ":lock", max_wait)
    if token is None and max_wait < _LOCK_TIMEOUT:
        # A caller that may not wait long (a web request, an unverified budget) is refused; a background
        # caller goes on without the lock rather than stall.
        raise LimitWaitTooLong(1.0)
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


def _state(value: Any, now: float) -> tuple[float, float, float, float]:
    """A portal bucket's cached state: (theoretical arrival time, share of the plan's rate, when the
    share last changed, when Bitrix24 last answered QUERY_LIMIT_EXCEEDED).

    `value` is Any as the shared cache hands it back (Django types cached values so): the four numbers,
    or the bare arrival time an older version stored, or nothing."""
    if isinstance(value, (list, tuple)) and len(value) == 4:
        return float(value[0]), float(value[1]), float(value[2]), float(value[3])
    return float(value or 0.0), 1.0, now, 0.0


def _shape(burst: int, rate: float) -> tuple[float, float]:
    """(interval at the plan's rate, GCRA tolerance in seconds) for a bucket.

    The tolerance is the burst less B24_RATE_LIMIT_MARGIN seconds: a request reserved at its slot
    reaches Bitrix24 a little later, and not always in the order reserved.
    """
    interval = 1.0 / rate
    return interval, max((burst - 1) * interval - settings.B24_RATE_LIMIT_MARGIN, 0.0)


@dataclasses.dataclass
class _Bucket:
    """A portal bucket's state read under its lock (`_locked_bucket`): the plan's interval and tolerance, the
    moment it was read, and the four cached numbers (`_state`), which the holder changes and `save`s."""

    key: str
    now: float
    interval: float
    tolerance: float
    tat: float
    share: float
    changed: float
    limited: float

    def save(self) -> None:
        ttl = max(int(self.tat - self.now), 0) + 60
        cache.set(self.key, [self.tat, self.share, self.changed, self.limited], ttl)


@contextlib.contextmanager
def _locked_bucket(
    member_id: str, *, plan: str, now: float | None, lock_wait: float | None = None
) -> Iterator[_Bucket | None]:
    """The portal's bucket under its cache lock, or None when the plan sets no rate. `lock_wait`: how long to wait
    for the lock; a caller that may not wait long (below the lock's own timeout) is refused with
    LimitWaitTooLong rather than spin, as in `_gcra`; a background caller goes on without it rather than stall."""
    burst, rate = bucket(plan)
    if rate <= 0:
        yield None
        return
    key = f"b24widget:rl:{member_id}"
    interval, tolerance = _shape(burst, rate)
    token = _lock(key + ":lock") if lock_wait is None else _lock(key + ":lock", lock_wait)
    if token is None and lock_wait is not None and lock_wait < _LOCK_TIMEOUT:
        raise LimitWaitTooLong(1.0)
    try:
        at = time.time() if now is None else now
        yield _Bucket(key, at, interval, tolerance, *_state(cache.get(key), at))
    finally:
        _unlock(key + ":lock", token)


def reserve(member_id: str, now: float | None = None, *, max_wait: float | None = None, plan: str = STANDARD) -> float:
    """Reserve a request slot for the portal; returns the seconds to wait before sending.

    Raises LimitWaitTooLong (nothing reserved) when the slot is further away than `max_wait`.
    """
    return _reserve(member_id, now, max_wait=max_wait, plan=plan)[0]


def _reserve(member_id: str, now: float | None, *, max_wait: float | None, plan: str) -> tuple[float, float]:
    """reserve's (wait, share of the plan's rate the slot was reserved at)."""
    max_wait = settings.B24_MAX_WAIT if max_wait is None else max_wait
    with _locked_bucket(member_id, plan=plan, now=now, lock_wait=max_wait) as b:
        if b is None:
            return 0.0, 1.0
        if b.share < 1.0 and b.now - max(b.changed, b.limited) >= PROBE_SECONDS:
            b.share, b.changed = min(1.0, b.share * PROBE_FACTOR), b.now  # probe up toward the plan's rate
        slot = max(b.tat, b.now)
        send_at = max(slot - b.tolerance, b.now)
        if send_at - b.now > max_wait:
            raise LimitWaitTooLong(send_at - b.now)
        b.tat = slot + b.interval / b.share
        b.save()
        return send_at - b.now, b.share


def note_limited(member_id: str, *, plan: str = STANDARD, now: float | None = None) -> None:
    """Bitrix24 answered QUERY_LIMIT_EXCEEDED: its counter is full now. Take the bucket as full; when such
    answers keep coming (again within PROBE_SECONDS), also halve the rate.

    A lone answer is mostly a request that reached Bitrix24 later than reserved (a busy machine): filling
    the bucket puts the pacing back in step with the portal's counter. Repeated answers mean the portal
    allows less than the plan says (another app on our address, another plan). Answers arriving
    together (several callers sent into the same full counter) halve the rate once.
    """
    counters.add("limit_answers")
    metrics.limit_answer("QUERY_LIMIT_EXCEEDED")
    with _locked_bucket(member_id, plan=plan, now=now) as b:
        if b is None:
            return
        if b.now - b.limited < PROBE_SECONDS and b.now - b.changed >= 1.0:
            b.share, b.changed = max(FLOOR, b.share * BACKOFF), b.now
        # Full: the next slot is one (slowed) interval from now.
        b.tat, b.limited = max(b.tat, b.now + b.tolerance + b.interval / b.share), b.now
        b.save()
        share = b.share
    log.info("portal answered QUERY_LIMIT_EXCEEDED; pacing slowed", extra={"member_id": member_id, "share": share})


def note_answered(member_id: str, *, plan: str = STANDARD, now: float | None = None) -> None:
    """Bitrix24 answered a request sent while the rate was slowed (not QUERY_LIMIT_EXCEEDED): its counter had
    room, so the limit answers have stopped or thinned. Double the rate back toward the plan's, at most once a
    second (answers arriving together count once) and not within a second of a limit answer (a request sent
    before it). The slots already handed out ahead were spaced at the slowed rate: the next free one comes as
    much sooner as the rate is faster now (the burst stays spent)."""
    with _locked_bucket(member_id, plan=plan, now=now) as b:
        if b is None or b.share >= 1.0 or b.now - max(b.changed, b.limited) < 1.0:
            return
        slower, b.share, b.changed = b.share, min(1.0, b.share * PROBE_FACTOR), b.now
        ahead = b.tat - b.tolerance - b.now
        if ahead > 0:
            b.tat = b.now + b.tolerance + ahead * slower / b.share
        b.save()
        share = b.share
    log.info("portal answered at the slowed pace; pacing sped up", extra={"member_id": member_id, "share": share})


def next_slot_in(member_id: str, *, plan: str = STANDARD, now: float | None = None) -> float:
    """Seconds until the portal's next request slot, reserving nothing: the bucket's own answer to "when may
    a call go again" (after note_limited, one slowed interval). For a caller that waits elsewhere (the relay
    schedules its next attempt then, instead of sleeping in a worker)."""
    burst, rate = bucket(plan)
    if rate <= 0:
        return 0.0
    now = time.time() if now is None else now
    _interval, tolerance = _shape(burst, rate)
    tat, _share, _changed, _limited = _state(cache.get(f"b24widget:rl:{member_id}"), now)
    return max(tat - tolerance - now, 0.0)


def retry_in(member_id: str, exc: RestError, *, plan: str = STANDARD) -> float | None:
    """Seconds until a call answered with a limit may go again, following the bucket, for a caller that waits
    elsewhere (a task that comes back later, instead of sleeping in its worker): the seconds our limiter named
    (LimitWaitExceeded: nothing was sent), the method's reset (OPERATION_TIME_LIMIT: the client paused it) or
    the portal's next request slot (QUERY_LIMIT_EXCEEDED: the client took the bucket as full and slowed it).
    None: not a limit answer. Not bounded: each caller keeps the wait within its own bounds."""
    if exc.code not in RETRYABLE:
        return None
    if isinstance(exc, LimitWaitExceeded):
        return max(exc.retry_after, 0.0)
    if exc.code == "OPERATION_TIME_LIMIT":
        until = paused_until(member_id, exc.method) or exc.reset_at or 0.0
        return max(until - time.time(), 0.0)
    return next_slot_in(member_id, plan=plan)


def pace(member_id: str, *, max_wait: float | None = None, plan: str = STANDARD) -> float:
    """Wait for the portal's next request slot; LimitWaitTooLong when it is further than `max_wait`. Returns
    the share of the plan's rate the slot was reserved at (below 1: answer it with `note_answered`)."""
    wait, share = _reserve(member_id, None, max_wait=max_wait, plan=plan)
    if wait > 0:
        metrics.limit_wait("rate", wait)
        time.sleep(wait)
    return share


def admit(key: str, *, per_minute: float, burst: int) -> bool:
    """Take one unit of a budget without waiting; False when the budget is spent (nothing taken)."""
    return refused_for(key, per_minute=per_minute, burst=burst) is None


# A busy budget's units taken from Redis several at a time by a process (`refused_for(..., lease=N)`): a key this
# process took a unit of less than LEASE_HOT seconds ago takes N at once and spends them locally for up to
# LEASE_SECONDS, one Redis call per N takes instead of one each (the budget's call was the largest step of
# `/events/` left: bench/RESULTS.md, "the dispatcher and the per-process rows"). Never more than the budget:
# the units are taken from it before they are spent, and when N are not free one is asked for, as without a
# lease. What a process leaves unspent when its lease ends (at most N - 1 units a second per busy key and
# process) is lost to the budget's holder, so leases are for generous budgets only.
LEASE_HOT = 0.1
LEASE_SECONDS = 1.0
_leases: dict[str, list[float]] = {}  # key -> [units left, valid until, last take] (time.monotonic())
_leases_lock = threading.Lock()


def _spend_leased(key: str, lease: int) -> bool | None:
    """True: a leased unit spent; None: none left, and the key is busy (lease more); False: not busy."""
    now = time.monotonic()
    with _leases_lock:
        held = _leases.get(key)
        if held is not None and held[0] >= 1 and now < held[1]:
            held[0] -= 1
            held[2] = now
            return True
        busy = held is not None and now - held[2] < LEASE_HOT
        if len(_leases) >= 10_000:
            _leases.clear()
        _leases[key] = [0.0, 0.0, now]
        return None if busy else False


def refused_for(key: str, *, per_minute: float, burst: int, lease: int = 1) -> float | None:
    """Take one unit of a budget without waiting: None when taken, else the seconds until the next unit
    (for a Retry-After; nothing taken). `lease` > 1: see LEASE_HOT (Redis only)."""
    if per_minute <= 0:
        return None
    if lease > 1:
        spent = _spend_leased(key, lease)
        if spent:
            return None
        if spent is None and _take_units(f"b24widget:budget:{key}", rate=per_minute / 60.0, burst=burst, units=lease):
            with _leases_lock:
                _leases[key] = [float(lease - 1), time.monotonic() + LEASE_SECONDS, time.monotonic()]
            return None
    try:
        _gcra(f"b24widget:budget:{key}", rate=per_minute / 60.0, burst=burst, max_wait=0.0)
    except LimitWaitTooLong as exc:
        return max(exc.seconds, 0.001)
    return None


@contextlib.contextmanager
def single_flight(key: str, ttl: float) -> Iterator[bool]:
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


def paused_until(member_id: str, method: str) -> float | None:
    """When the method's held-back calls may go again (a Unix time), or None when it is not held back."""
    reset_at = cache.get(_operating_key(member_id, method))
    return reset_at if reset_at and reset_at > time.time() else None


def wait_for_method(member_id: str, method: str, *, max_wait: float | None = None) -> None:
    """If the method's operating budget is spent, wait until Bitrix24 resets it (at most `max_wait`)."""
    reset_at = paused_until(member_id, method)
    if reset_at is None:
        return
    wait = reset_at - time.time()
    if wait > (settings.B24_MAX_WAIT if max_wait is None else max_wait):
        raise LimitWaitTooLong(wait)
    counters.add("operating_waits")
    log.info(
        "method paused for its operating-time budget",
        extra={"member_id": member_id, "method": method, "wait": round(wait, 1)},
    )
    metrics.limit_wait("operating", wait)
    time.sleep(max(wait, 0.0))


def note_operating(member_id: str, method: str, time_block: JSON) -> None:
    """Read `time.operating` / `operating_reset_at` from an answer; pause the method near its budget."""
    if not isinstance(time_block, dict):
        return
    try:
        operating = float(time_block.get("operating") or 0)
        reset_at = float(time_block.get("operating_reset_at") or 0)
    except (TypeError, ValueError):
        return
    if reset_at <= time.time():
        return
    if operating >= settings.B24_OPERATING_PAUSE_AT:
        pause_method(member_id, method, reset_at)
    elif operating >= settings.B24_OPERATING_PAUSE_AT / 2:
        # limits.md: an OPERATION_TIME_LIMIT is first retried at the last successful answer's reset time.
        cache.set(_operating_key(member_id, method) + ":reset", reset_at, max(int(reset_at - time.time()) + 1, 1))


def last_reset_at(member_id: str, method: str) -> float | None:
    """`operating_reset_at` of the method's last answer that came near the budget, if still ahead."""
    value = cache.get(_operating_key(member_id, method) + ":reset")
    return value if value and value > time.time() else None


def pause_method(member_id: str, method: str, until: float) -> None:
    """Hold back calls of `method` on the portal until `until` (a Unix time); other methods go on."""
    counters.add("operating_pauses")
    timeout = max(int(until - time.time()) + 1, 1)
    cache.set(_operating_key(member_id, method), until, timeout)
