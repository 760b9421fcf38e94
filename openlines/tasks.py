"""Background work: inbound messages to Bitrix24, operator messages to the outside system.

The database is the source of truth (Celery's Django layout): a row is `pending` until delivered, so a
lost task, a crashed worker or a broker outage loses nothing — `sweep` (run by beat every minute) queues
every channel with due rows again. One worker at a time holds a channel's lease per direction. Inbound
messages go in id order per channel, operator messages in id order per outside chat: a message that cannot
be delivered yet holds back the ones behind it (of its channel, of its chat) and nothing else.

Work is claimed per channel and direction, in batches: at most one task waits per channel and direction
(`queue_channel`: a burst of a thousand messages is a handful of tasks, not a thousand), and a run takes at
most OPENLINES_RUN_BATCH messages (or OPENLINES_RUN_SECONDS) before it queues its channel again, behind the
tasks of the other channels queued meanwhile: a busy channel holds a worker for one batch at a time. Its
lease is short (OPENLINES_LEASE_SECONDS) and renewed by a heartbeat while the run lives, so a worker that
dies (or loses its database) gives the channel up within one lease; only the worker that holds it renews or
releases it. Rows that can never go stop being due: those of a disconnected or revoked channel become dead
letters (staff replay them after a reconnect); operator replies on a line without a webhook URL are parked
until one is saved (`release_parked`), and become dead letters after OPENLINES_RETRY_HOURS like any other.

Bitrix24's limits (QUERY_LIMIT_EXCEEDED, OPERATION_TIME_LIMIT, or our limiter pacing us) are no failed
attempt: the rows wait as long as the bucket says (`limit_wait`, 1 s to 10 min), counting nothing toward a
dead letter and doubling nothing; a run (inbound messages, delivery statuses) does not wait out a limit in the
worker (the client's limit_retries=0), its next run takes the whole backlog at the portal's next slot.
Failures wait 5 s, 10 s, 20 s ... (`backoff`), at least 30 s unless Bitrix24 answered 5xx. A next attempt
within two minutes is queued with a countdown; later ones are the sweep's.

Past ~400 lines on purpose: both directions share the lease, the run budget, the retry schedule and the
sweep that decides what is due, and each of those rules is easier to check with its users beside it.
"""

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError, connection, connections, transaction
from django.db.models import F, Min, Q
from django.utils import timezone

from bitrix24 import http, limits
from bitrix24.errors import RestError
from inbox import queue
from inbox.tasks import RETRY_WHILE_DATABASE_AWAY
from portals.models import Portal
from portals.tokens import PortalClient

from . import outbound, retention
from .models import UNSENT, Channel, Delivery, InboundMessage, OutboundMessage

log = logging.getLogger(__name__)

_PAGE = 200
# How long a partial page of delivery statuses may wait for more replies under a backlog (_defer_statuses), and
# how many waiting inbox events are looked at to know whether more come.
STATUS_WAIT = timedelta(seconds=5)
_WAITING_SCAN = 200
# Channels the sweep queues per direction and minute, those waiting longest first.
SWEEP_CHANNELS = 1000
WAITING = (*UNSENT, Delivery.PARKED)
_SERVING = Portal.SERVING


@dataclass(frozen=True)
class Way:
    """One direction of a channel: the Channel fields of its lease (end, owner) and of its pending task."""

    until: str
    owner: str
    queued: str


INBOUND = Way("inbound_lease_until", "inbound_lease_owner", "inbound_queued_at")
OUTBOUND = Way("outbound_lease_until", "outbound_lease_owner", "outbound_queued_at")


def lease_length() -> timedelta:
    return timedelta(seconds=settings.OPENLINES_LEASE_SECONDS)


def after_commit(task, channel_id: int) -> None:
    """Queue `task(channel_id)` once the current transaction commits (unless one is pending already); a
    broker failure is left to `sweep`, and so is a database failure of the hand-off (robust: what was stored
    stays stored and the request's answer stands; the sweep finds the channel's due rows without a mark)."""
    transaction.on_commit(lambda: queue_channel(task, channel_id), robust=True)


# OPENLINES_TASKS_INLINE (test settings only): tasks run in this process, first queued first run, as one
# worker would take them from the broker (a task queued by a running one runs after it, never inside it).
_inline: deque = deque()
_inline_running = False


def enqueue(task, *args, countdown: float = 0.0) -> bool:
    """Send `task(*args)` to the broker; False when it could not be sent (the rows stay due for `sweep`)."""
    global _inline_running
    if getattr(settings, "OPENLINES_TASKS_INLINE", False):
        if countdown:  # a look once another worker's lease has ended: no other worker runs inline
            return False
        _inline.append((task, args))
        if not _inline_running:
            _inline_running = True
            try:
                for _ in range(10_000):  # (a bound, so a mistake cannot hang the tests)
                    if not _inline:
                        break
                    queued, queued_args = _inline.popleft()
                    queued.apply(args=queued_args)
            finally:
                _inline_running = False
                _inline.clear()
        return True
    try:
        task.apply_async(args=args, countdown=countdown or None, ignore_result=True)
        return True
    except Exception:  # the broker is down: the rows stay pending and sweep queues them again
        log.warning("could not queue %s; sweep will", task.name)
        return False


@lru_cache(maxsize=4)
def _mark_sql(field: str, *, replace_later: bool) -> str:
    """queue_channel's conditional UPDATE, built once from the model's metadata: it runs after every accepted
    message, and compiling it through the ORM each time cost more CPU than running it (bench/ingest.py). The
    mark is taken when there is none, when it is older than OPENLINES_REQUEUE_AFTER (a lost task) or, for a
    task for now, when it waits for a countdown."""
    meta = Channel._meta
    column = next(f.column for f in meta.concrete_fields if f.name == field)
    free = f"{column} IS NULL OR {column} < %s" + (f" OR {column} > %s" if replace_later else "")
    return f"UPDATE {meta.db_table} SET {column} = %s WHERE {meta.pk.column} = %s AND ({free})"


def queue_channel(task, channel_id: int, *, countdown: float = 0.0) -> bool:
    """Send `task(channel_id)` unless one is pending for the channel in that direction already: at most one
    task waits per channel and direction, so a burst of a thousand messages is a handful of tasks. The mark
    (`*_queued_at`: when the task may start) is cleared when a run starts; a mark older than
    OPENLINES_REQUEUE_AFTER is a task the broker lost, and is sent again. A task for now replaces one waiting
    for a countdown."""
    way = INBOUND if task is deliver_inbound else OUTBOUND
    now = timezone.now()
    mark = now + timedelta(seconds=countdown)
    lost = now - timedelta(seconds=settings.OPENLINES_REQUEUE_AFTER)
    adapt = connection.ops.adapt_datetimefield_value
    params = [adapt(mark), channel_id, adapt(lost)] + ([] if countdown else [adapt(now)])
    with connection.cursor() as cursor:
        cursor.execute(_mark_sql(way.queued, replace_later=not countdown), params)
        if cursor.rowcount != 1:
            return False
    if not enqueue(task, channel_id, countdown=countdown):
        Channel.objects.filter(pk=channel_id, **{way.queued: mark}).update(**{way.queued: None})
        return False
    return True


def enqueue_channel(model, channel_id: int) -> None:
    queue_channel(deliver_inbound if model is InboundMessage else deliver_outbound, channel_id)


def backoff(attempts: int, at_least: float = 30.0) -> timedelta:
    """One doubling schedule, 5 s, 10 s, 20 s ... at most an hour between attempts, and never less than
    `at_least` (30 s for a failure that is not a Bitrix24 5xx: 30, 30, 30, 40, 80 s ...).

    One schedule for every failure, so the wait stays about as long as the row has been failing whatever
    failed: with a 30 s schedule for some failures and a 5 s one for others, a row whose early attempts met
    5xx answers (fast attempts) and whose later ones met another failure waited 30 x 2^attempts, minutes
    for a fault of seconds (bench/RESULTS.md, "limit waits")."""
    return timedelta(seconds=min(max(TRANSIENT_FIRST_WAIT * 2 ** max(attempts - 1, 0), at_least), 3600))


# --- Bitrix24's answers: a limit is "later", a 5xx "soon", anything else a failed attempt ----------------
# settings/performance/limits.md: QUERY_LIMIT_EXCEEDED (503) while the portal's request counter is full (it
# drains 2 or 5 a second), OPERATION_TIME_LIMIT (429) until the method's budget resets. Our own limiter says
# the same before sending (LimitWaitExceeded, with the seconds until a slot). Neither is the message's failure.
LIMIT_CODES = frozenset({"QUERY_LIMIT_EXCEEDED", "OPERATION_TIME_LIMIT"})
LIMIT_WAIT_MIN = 1.0  # seconds: a slot comes every 0.2-0.5 s; a shorter countdown is only another task
LIMIT_WAIT_MAX = 600.0  # seconds: the operating-time window is ten minutes; the bucket drains in 25-50 s
# The first wait after Bitrix24 answered 5xx (then doubling, as `backoff`): a server error is mostly brief.
TRANSIENT_FIRST_WAIT = 5.0
# A next attempt this close is queued with a countdown (a task held by a worker); later ones are the sweep's
# (a broker holds an unacknowledged countdown task only so long: RabbitMQ's consumer_timeout).
COUNTDOWN_UP_TO = 120.0


def limit_wait(portal: Portal, exc: RestError) -> timedelta | None:
    """How long a call Bitrix24 (or our limiter) answered with a limit waits, following the bucket: the
    seconds the limiter named (LimitWaitExceeded), the method's reset (OPERATION_TIME_LIMIT) or the portal's
    next request slot (QUERY_LIMIT_EXCEEDED: the bucket was taken as full and slowed by the client); between
    LIMIT_WAIT_MIN and LIMIT_WAIT_MAX. None: not a limit answer."""
    seconds = limits.retry_in(portal.member_id, exc, plan=portal.rest_plan or limits.STANDARD)
    if seconds is None:
        return None
    return timedelta(seconds=min(max(seconds, LIMIT_WAIT_MIN), LIMIT_WAIT_MAX))


def first_wait(exc: RestError) -> float:
    """The least retry wait after a failed call: none beyond `backoff`'s for Bitrix24's 5xx answers
    (transient), else 30 s."""
    status = exc.http_status or 0
    return 0.0 if status >= 500 else 30.0


def queue_retry(task, channel_id: int, at: datetime | None) -> None:
    """Queue the channel's next run for `at` (its first row's next attempt) when that is near; else the sweep
    queues it once due (at most OPENLINES_SWEEP_INTERVAL later)."""
    if at is None:
        return
    wait = (at - timezone.now()).total_seconds()
    if wait <= COUNTDOWN_UP_TO:
        queue_channel(task, channel_id, countdown=max(wait, 0.0) + 0.1)


# --- leases, heartbeats and run budgets ------------------------------------------------------------------
class _Lease:
    """This worker's hold on one direction of a channel: short (OPENLINES_LEASE_SECONDS) and renewed by a
    heartbeat while the run lives, so a worker that dies gives the channel up within one lease. `owner` is
    its token: a worker that took over an expired lease wrote its own, so renewing or releasing a lost lease
    touches nothing."""

    def __init__(self, channel_id: int, way: Way):
        self.channel_id, self.way = channel_id, way
        self.owner = uuid.uuid4().hex
        self.until: datetime | None = None  # set by take()
        self.other_until: datetime | None = None  # when another worker's lease ends (take() failed)

    def _mine(self):
        return Channel.objects.filter(pk=self.channel_id, **{self.way.owner: self.owner})

    def take(self) -> bool:
        """Take the lease if it is free or expired; either way this task is no longer pending."""
        now = timezone.now()
        w = self.way
        free = Q(**{f"{w.until}__isnull": True}) | Q(**{f"{w.until}__lt": now})
        taken = Channel.objects.filter(free, pk=self.channel_id).update(
            **{w.until: now + lease_length(), w.owner: self.owner, w.queued: None}
        )
        if taken != 1:
            Channel.objects.filter(pk=self.channel_id).update(**{w.queued: None})
            self.other_until = Channel.objects.filter(pk=self.channel_id).values_list(w.until, flat=True).first()
            return False
        self.until = now + lease_length()
        return True

    def renew(self) -> bool:
        until = timezone.now() + lease_length()
        if self._mine().update(**{self.way.until: until}) != 1:
            return False
        self.until = until
        return True

    def keep(self) -> bool:
        """Whether the lease is still this worker's (renewed here when half of it is gone: the heartbeat may
        be unable to, e.g. inside a transaction it cannot see); False once another worker took it over."""
        assert self.until is not None  # kept only once taken
        if self.until - timezone.now() < lease_length() / 2:
            return self.renew()
        # More than half of it left: no other worker can have taken it (only an expired lease is taken), so
        # no query (one saved per call or POST).
        return True

    def release(self) -> bool:
        try:
            return self._mine().update(**{self.way.until: None, self.way.owner: ""}) == 1
        except DatabaseError:  # the database is gone: the lease runs out by itself within one lease
            log.warning("channel lease not released; it expires by itself", extra={"channel": self.channel_id})
            return False


class _Heartbeat(threading.Thread):
    """Renews a run's lease every third of its length, until the run ends (or its last step could have
    ended): a worker killed mid-call stops renewing and another worker takes the channel a lease later."""

    def __init__(self, lease: _Lease, ends: float):
        super().__init__(name=f"lease-{lease.channel_id}", daemon=True)
        self.lease, self.ends = lease, ends
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.wait(settings.OPENLINES_LEASE_SECONDS / 3):
                if time.monotonic() > self.ends:
                    return  # a run past its budget and its longest step is stuck: let the lease expire
                try:
                    if not self.lease.renew():
                        return  # taken over (or not visible from here): the run finds out at its next step
                except DatabaseError:
                    log.warning("channel lease not renewed", extra={"channel": self.lease.channel_id})
        finally:
            connections.close_all()  # this thread's own connections only

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=settings.OPENLINES_LEASE_SECONDS)


class _Run:
    """One worker's run on a channel: a time budget (OPENLINES_RUN_SECONDS), a batch (OPENLINES_RUN_BATCH
    messages, then it yields: queued again behind the other channels' tasks) and the lease it works under."""

    def __init__(self, lease: _Lease):
        self.lease = lease
        self.ends = time.monotonic() + settings.OPENLINES_RUN_SECONDS
        self.left = settings.OPENLINES_RUN_BATCH
        # "budget spent" or "batch done" (queue the channel again) or "lease lost" (its new owner goes on)
        self.stopped = ""
        # Delivery statuses kept for a fuller call (_defer_statuses): owed, but no reason to run again now.
        self.statuses_deferred = False

    def may_start(self, *, messages: bool = True) -> bool:
        """Whether to start a step (one call or POST); `messages` steps count against the batch (reporting
        statuses does not: it is bounded by what this run sent)."""
        if time.monotonic() >= self.ends:
            self.stopped = "budget spent"
        elif messages and self.left <= 0:
            self.stopped = "batch done"
        elif not self.lease.keep():
            self.stopped = "lease lost"
        return not self.stopped

    def spent(self, count: int) -> None:
        self.left -= count


def _webhook_step() -> float:
    """The longest one webhook POST can take (portals.http.send's worst case with the channel's settings)."""
    deadline = settings.OPENLINES_WEBHOOK_DEADLINE
    return http.worst_case(min(5.0, deadline), deadline, deadline)


def _rest_step() -> float:
    """About the longest one background call to Bitrix24 takes: a limit wait, then the request."""
    return settings.B24_MAX_WAIT + http.worst_case(
        settings.B24_CONNECT_TIMEOUT, settings.B24_READ_TIMEOUT, settings.B24_REST_DEADLINE
    )


def _under_lease(channel_id: int, way: Way, deliver, task) -> str:
    """`deliver(channel, run)` while this worker holds the channel's lease for one direction (renewed by a
    heartbeat); "busy" if another does, and the channel is looked at again once that lease would end (its
    holder may have died). A run that stopped at its budget or batch queues the channel again, behind the
    tasks queued meanwhile; one that finished queues it when rows became due while it ran."""
    lease = _Lease(channel_id, way)
    if not lease.take():
        if lease.other_until is not None:
            wait = max((lease.other_until - timezone.now()).total_seconds(), 0.0) + 0.5
            queue_channel(task, channel_id, countdown=wait)
        return "busy"
    run = _Run(lease)
    heartbeat = _Heartbeat(lease, run.ends + max(_rest_step(), _webhook_step()))
    heartbeat.start()
    try:
        outcome = deliver(Channel.objects.select_related("portal").get(pk=channel_id), run)
    finally:
        heartbeat.stop()
        lease.release()
    if run.stopped in ("budget spent", "batch done") or (
        not run.stopped and _has_due(way, channel_id, statuses=not run.statuses_deferred)
    ):
        after_commit(task, channel_id)
    return outcome


def _has_due(way: Way, channel_id: int, *, statuses: bool = True) -> bool:
    """Whether the channel has rows a run would take now (those that came while this run went on); `statuses`
    False: owed delivery statuses do not count (the run kept them for a fuller call, and queued a look)."""
    now = timezone.now()
    if way is INBOUND:
        return InboundMessage.objects.filter(inbound_due(now), channel_id=channel_id).exists()
    unsent = Q(
        state__in=UNSENT, next_attempt_at__lte=now, channel__state=Channel.State.CONNECTED, channel__webhook_url__gt=""
    )
    due = outbound_due(now) if statuses else unsent
    return OutboundMessage.objects.filter(due, channel_id=channel_id).exists()


def inbound_due(now) -> Q:
    return Q(
        state__in=UNSENT,
        next_attempt_at__lte=now,
        channel__state=Channel.State.CONNECTED,
        channel__portal__status__in=_SERVING,
    )


def outbound_due(now) -> Q:
    connected = Q(channel__state=Channel.State.CONNECTED)
    return connected & (
        Q(state__in=UNSENT, next_attempt_at__lte=now, channel__webhook_url__gt="")
        | (_status_due(now) & Q(channel__portal__status__in=_SERVING))
    )


def _retry_later(rows, error: str, since: str, *, at_least: timedelta | None = None, first: float = 30.0):
    """Count a failed attempt on each row and schedule the next (`backoff`, at least `first` seconds, or
    def _retry_later(rows, error: str, since: str, *, at_least: timedelta | None = None, first: float = 30.0):
        letter instead. Returns when the first row is tried again (None: it is a dead letter now)."""
    now = timezone.now()
    first_at = None
    for i, row in enumerate(rows):
        attempts = row.attempts + 1
        dead = now - getattr(row, since) > timedelta(hours=settings.OPENLINES_RETRY_HOURS)
        wait = max(backoff(attempts, first), at_least or timedelta(0))
        type(row).objects.filter(pk=row.pk).update(
            attempts=attempts,
            last_error=error,
            next_attempt_at=now + wait,
            state=Delivery.DEAD if dead else Delivery.FAILED,
        )
        if i == 0 and not dead:
            first_at = now + wait
    return first_at


def _wait_for_limit(rows, error: str, wait: timedelta) -> datetime:
    """A limit answer: the rows wait `wait` (FAILED, so a run queued meanwhile keeps to it) without counting
    an attempt, so it neither doubles the next wait nor brings a dead letter closer. Returns when they go."""
    at = timezone.now() + wait
    type(rows[0]).objects.filter(pk__in=[r.pk for r in rows]).update(
        last_error=f"waiting for Bitrix24's limit (not a failed attempt): {error}"[:255],
        next_attempt_at=at,
        state=Delivery.FAILED,
    )
    return at


def _waits(row, now) -> bool:
    """A row that failed (or met a limit: `_wait_for_limit`) waits for its next attempt. An unsent row that
    never failed is due whenever it is first in line: a later `next_attempt_at` only kept the sweep from
    queuing it behind one that waited."""
    return row.state == Delivery.FAILED and row.next_attempt_at > now


def _hold_back(model, channel: Channel, until, **chat) -> None:
    """The unsent rows behind a waiting one (of the channel, or of one chat) are not due before it is, so
    the sweep does not queue the channel for them in the meantime."""
    model.objects.filter(channel=channel, state__in=UNSENT, next_attempt_at__lt=until, **chat).update(
        next_attempt_at=until
    )


# --- rows that can never go ----------------------------------------------------------------------------
_GONE = {
    Channel.State.DISCONNECTED: "not sent: the channel was disconnected (replay after a reconnect)",
    Channel.State.REVOKED: "not sent: the channel was revoked in Bitrix24 (replay after a reconnect)",
}


def _dead_letter_gone(channel: Channel | None = None) -> int:
    """Waiting rows of disconnected or revoked channels (or of `channel`) become dead letters, saying why."""
    count = 0
    for state, why in _GONE.items():
        if channel is not None and channel.state != state:
            continue
        for model in (InboundMessage, OutboundMessage):
            rows = model.objects.filter(state__in=WAITING, channel__state=state)
            if channel is not None:
                rows = rows.filter(channel=channel)
            count += rows.update(state=Delivery.DEAD, last_error=why)
    return count


def _park(channel: Channel | None = None) -> int:
    """Unsent operator replies of connected channels without a webhook URL wait, not due, for one."""
    rows = OutboundMessage.objects.filter(
        state__in=UNSENT, channel__state=Channel.State.CONNECTED, channel__webhook_url=""
    )
    if channel is not None:
        rows = rows.filter(channel=channel)
    return rows.update(state=Delivery.PARKED, last_error="waiting for the channel's webhook URL")


def _parked_expired(now) -> int:
    return OutboundMessage.objects.filter(
        state=Delivery.PARKED, created_at__lt=now - timedelta(hours=settings.OPENLINES_RETRY_HOURS)
    ).update(state=Delivery.DEAD, last_error="not sent: no webhook URL was saved for the channel in time")


def _unpark(rows, now) -> int:
    return (
        rows.filter(state=Delivery.PARKED, channel__state=Channel.State.CONNECTED)
        .exclude(channel__webhook_url="")
        .update(state=Delivery.PENDING, next_attempt_at=now, last_error="")
    )


def release_parked(channel_id: int) -> int:
    """The channel has a webhook URL now: its parked replies are due at once (in order) and queued."""
    released = _unpark(OutboundMessage.objects.filter(channel_id=channel_id), timezone.now())
    if released:
        after_commit(deliver_outbound, channel_id)
    return released


# --- inbound: the outside system -> Bitrix24 --------------------------------------------------------
@shared_task(name="openlines.deliver_inbound", **RETRY_WHILE_DATABASE_AWAY)
def deliver_inbound(channel_id: int) -> str:
    """Send the channel's due inbound rows, in order, several per call."""
    return _under_lease(channel_id, INBOUND, _deliver_inbound, deliver_inbound)


def _deliver_inbound(channel: Channel, run: _Run) -> str:
    if not channel.is_connected:
        return f"not connected; {_dead_letter_gone(channel)} dead letter(s)"
    if not channel.portal.is_serving:
        return "portal not serving"  # blocked: kept pending until the portal heals (the sweep skips it)
    # A limit answer ends the run (limit_wait): retried in this worker (the client's default) the call kept the
    # rows it began with while the backlog grew behind it, and held the worker a slowed slot per retry; the
    # next run, at the portal's next slot, takes every message waiting by then (bench/RESULTS.md, "the limit
    # fault alone").
    client = PortalClient(channel.portal, limit_retries=0)
    sent = 0
    while True:
        rows = list(
            InboundMessage.objects.filter(channel=channel, state__in=UNSENT).order_by("id")[
                : settings.OPENLINES_SEND_BATCH
            ]
        )
        if not rows:
            return f"sent {sent}"
        if _waits(rows[0], timezone.now()):
            _hold_back(InboundMessage, channel, rows[0].next_attempt_at)
            # Again here: the failed run's countdown was not queued if a new message's task was pending then.
            queue_retry(deliver_inbound, channel.pk, rows[0].next_attempt_at)
            return f"sent {sent}; waiting"
        if not run.may_start():
            return f"sent {sent}; {run.stopped}"
        # One call carries consecutive rows of the same action (add, update, delete), in order.
        group = [rows[0]]
        for row in rows[1:]:
            if row.action != group[0].action:
                break
            group.append(row)
        method = InboundMessage.Action(group[0].action).label
        try:
            result = client.call(
                method,
                {
                    "CONNECTOR": channel.connector_id,
                    "LINE": channel.line_id,
                    "MESSAGES": [row.payload for row in group],
                },
            )
        except RestError as exc:
            error = f"{exc.code}: {exc.description}"[:255]
            wait = limit_wait(channel.portal, exc)
            if wait is not None:  # "later, at the bucket's pace": no attempt counted, no doubling
                again = _wait_for_limit(group, error, wait)
            else:
                again = _retry_later(group, error, "received_at", first=first_wait(exc))
            if again is not None:
                _hold_back(InboundMessage, channel, again)
                queue_retry(deliver_inbound, channel.pk, again)
            log.info("inbound delivery postponed", extra={"member_id": channel.portal.member_id, "code": exc.code})
            return f"sent {sent}; {'limit' if wait is not None else 'retry'} ({exc.code})"
        _record_inbound(group, result)
        sent += len(group)
        run.spent(len(group))
        if len(group) == len(rows) < settings.OPENLINES_SEND_BATCH:
            # That was all of them (no read to find nothing): rows that came since are found by the look
            # after the lease is released (_under_lease).
            return f"sent {sent}"


def _record_inbound(rows, result) -> None:
    if rows[0].action == InboundMessage.Action.READ:
        # send-status-reading.md answers SUCCESS with an empty DATA for the whole call.
        ok = isinstance(result, dict) and result.get("SUCCESS") is True
        InboundMessage.objects.filter(pk__in=[r.pk for r in rows]).update(
            state=Delivery.SENT if ok else Delivery.DEAD,
            sent_at=timezone.now() if ok else None,
            attempts=F("attempts") + 1,
            last_error="" if ok else "Bitrix24 did not confirm the reading status",
        )
        return
    items = (((result or {}).get("DATA") or {}).get("RESULT") or []) if isinstance(result, dict) else []
    now = timezone.now()
    # One UPDATE per Open Lines chat and session the call answered (a call's messages mostly share a few),
    # not one per message: the rows' own attempts are counted in the database.
    sent: dict[tuple[str, str], list[int]] = {}
    for i, row in enumerate(rows):
        item = items[i] if i < len(items) and isinstance(items[i], dict) else {}
        if item.get("SUCCESS") is True:
            session = given if isinstance(given := item.get("session"), dict) else {}
            ids = (str(session.get("CHAT_ID") or "")[:32], str(session.get("ID") or "")[:32])
            sent.setdefault(ids, []).append(row.pk)
        else:
            # Bitrix24 refused this message itself (its content): retrying will not help; replay after a fix.
            errors = item.get("ERRORS") or ["no result for this message"]
            InboundMessage.objects.filter(pk=row.pk).update(
                state=Delivery.DEAD, attempts=row.attempts + 1, last_error="; ".join(map(str, errors))[:255]
            )
    for (im_chat_id, session_id), pks in sent.items():
        InboundMessage.objects.filter(pk__in=pks).update(
            state=Delivery.SENT,
            sent_at=now,
            attempts=F("attempts") + 1,
            last_error="",
            im_chat_id=im_chat_id,
            session_id=session_id,
        )


# --- outbound: Bitrix24's operators -> the outside system --------------------------------------------
@shared_task(name="openlines.deliver_outbound", **RETRY_WHILE_DATABASE_AWAY)
def deliver_outbound(channel_id: int) -> str:
    """POST the channel's due operator messages to its webhook, in order per chat; report delivery to Bitrix24."""
    return _under_lease(channel_id, OUTBOUND, _deliver_outbound, deliver_outbound)


def _deliver_outbound(channel: Channel, run: _Run) -> str:
    if not channel.is_connected:
        return f"not connected; {_dead_letter_gone(channel)} dead letter(s)"
    if not channel.webhook_url:
        return f"no webhook URL; {_park(channel)} parked"
    counts = {"delivered": 0, "refused": 0, "retry": 0}
    held: dict[str, datetime] = {}  # chat -> when its first unsent message is due again
    behind: set[str] = set()  # chats with rows behind it
    last_id = 0
    while run.may_start():  # (a long queue behind waiting chats is read page by page within the budget too)
        page = list(
            OutboundMessage.objects.filter(channel=channel, state__in=UNSENT, id__gt=last_id).order_by("id")[:_PAGE]
        )
        for row in page:
            last_id = row.id
            chat = row.external_chat_id
            if chat in held:
                if row.next_attempt_at < held[chat]:
                    behind.add(chat)
                continue
            if _waits(row, timezone.now()):
                held[chat] = row.next_attempt_at
                continue
            if not run.may_start():
                break
            outcome, again = _post(channel, row)
            counts[outcome] += 1
            run.spent(1)
            if again is not None:
                held[chat] = again
        if len(page) < _PAGE:
            break
    for chat in behind:
        _hold_back(OutboundMessage, channel, held[chat], external_chat_id=chat)
    reported = _report_delivery(channel, run)
    return (
        f"delivered {counts['delivered']}, refused {counts['refused']}, retry {counts['retry']}, "
        f"waiting chats {len(held)}; {reported} status(es) reported" + (f"; {run.stopped}" if run.stopped else "")
    )


def _post(channel: Channel, row: OutboundMessage):
    """One webhook POST of `row`: ("delivered" | "refused" | "retry", when its chat may go on; None: now)."""
    try:
        answer = outbound.post(channel.webhook_url, channel.secret, row.payload)
    except (http.HttpFailure, outbound.BadWebhookUrl) as exc:
        return "retry", _retry_later([row], str(exc)[:255], "created_at")
    except Exception as exc:  # noqa: BLE001 - whatever fails one delivery is that message's, not the run's
        log.exception("webhook delivery failed", extra={"member_id": channel.portal.member_id})
        return "retry", _retry_later([row], f"failed: {type(exc).__name__}", "created_at")
    verdict = outbound.verdict(answer.status)
    now = timezone.now()
    if verdict == outbound.DELIVERED:
        # The status line decides: the body (capped, maybe cut short) only may name the outside system's id.
        # next_attempt_at: the delivery status is due now (see _report_delivery).
        OutboundMessage.objects.filter(pk=row.pk).update(
            state=Delivery.SENT,
            sent_at=now,
            attempts=row.attempts + 1,
            last_error="",
            next_attempt_at=now,
            external_message_id=outbound.outside_message_id(answer),
        )
        return "delivered", None
    if verdict == outbound.REFUSED:
        OutboundMessage.objects.filter(pk=row.pk).update(
            state=Delivery.DEAD,
            attempts=row.attempts + 1,
            last_error=f"HTTP {answer.status}: the webhook refused the message (not retried)",
        )
        return "refused", None  # a dead letter holds nothing back
    return "retry", _retry_later([row], f"HTTP {answer.status}", "created_at", at_least=outbound.retry_after(answer))


def _status_due(now) -> Q:
    """Sent operator messages whose delivery status Bitrix24 has not taken yet, and may still take."""
    return Q(
        state=Delivery.SENT,
        action=OutboundMessage.Action.ADD,
        status_reported_at__isnull=True,
        next_attempt_at__lte=now,
        sent_at__gte=now - timedelta(hours=settings.OPENLINES_RETRY_HOURS),
    )


def _report_delivery(channel: Channel, run: _Run) -> int:
    """imconnector.send.status.delivery for the channel's sent messages that still owe it (several per call).

    Under a backlog the statuses wait for a full call: while more operator replies of the channel's line wait
    in the inbox (their runs come next), a partial page is kept for up to STATUS_WAIT after its oldest message
    was delivered (`_defer_statuses`), so a burst of replies costs a status call per OPENLINES_STATUS_BATCH
    messages, not one per run. A failure (a limit, Bitrix24 away) leaves them marked and tries again later,
    never POSTing the webhook again; after OPENLINES_RETRY_HOURS a status is given up (the message reached
    the outside system)."""
    if not channel.portal.is_serving:
        return 0
    # A limit answer is not sent again in this worker (limit_retries=0, as the inbound run's): the statuses wait
    # for the portal's next slot (limit_wait) and the run goes on with nothing else of this portal's to wait for.
    client, reported = PortalClient(channel.portal, limit_retries=0), 0
    while True:
        now = timezone.now()
        rows = list(
            OutboundMessage.objects.filter(_status_due(now), channel=channel).order_by("id")[
                : settings.OPENLINES_STATUS_BATCH
            ]
        )
        if not rows or not run.may_start(messages=False):
            return reported
        if len(rows) < settings.OPENLINES_STATUS_BATCH and _defer_statuses(channel, rows, now, run):
            return reported
        try:
            client.call(
                "imconnector.send.status.delivery",
                {
                    "CONNECTOR": channel.connector_id,
                    "LINE": channel.line_id,
                    "MESSAGES": [_status_message(r) for r in rows],
                },
            )
        except RestError as exc:
            log.info(
                "delivery status not reported yet", extra={"member_id": channel.portal.member_id, "code": exc.code}
            )
            limited = limit_wait(channel.portal, exc)
            if limited is not None:  # at the bucket's pace, not the overdue-based wait
                at = timezone.now() + limited
                OutboundMessage.objects.filter(pk__in=[r.pk for r in rows]).update(
                    next_attempt_at=at, last_error=f"delivery status waits for a limit: {exc.code}"[:255]
                )
                queue_retry(deliver_outbound, channel.pk, at)
                return reported
            for r in rows:
                # Waits as long as the status is overdue: 30 s, then doubling, at most an hour.
                wait = min(max(now - (r.sent_at or now), timedelta(seconds=30)), timedelta(hours=1))
                OutboundMessage.objects.filter(pk=r.pk).update(
                    next_attempt_at=now + wait, last_error=f"delivery status not reported: {exc.code}"[:255]
                )
            return reported
        OutboundMessage.objects.filter(pk__in=[r.pk for r in rows]).update(
            status_reported_at=timezone.now(), last_error=""
        )
        reported += len(rows)


def _defer_statuses(channel: Channel, rows: list[OutboundMessage], now: datetime, run: _Run) -> bool:
    """Whether to keep a partial page of statuses for a later run: more replies of the line wait in the inbox
    (each queues a run of this channel once handled) and the oldest of the page was delivered less than
    STATUS_WAIT ago. A run is queued for when that wait ends, in case no other comes (the sweep would too)."""
    oldest = min((r.sent_at or now) for r in rows)
    left = (oldest + STATUS_WAIT - now).total_seconds()
    if left <= 0 or not _replies_waiting(channel):
        return False
    run.statuses_deferred = True
    queue_channel(deliver_outbound, channel.pk, countdown=left)
    return True


def _replies_waiting(channel: Channel) -> bool:
    """Whether new-message events of the channel's connector and line wait in the inbox (not yet handled)."""
    for data in queue.waiting(channel.portal.member_id, "ONIMCONNECTORMESSAGEADD", limit=_WAITING_SCAN):
        if (
            str(data.get("LINE") or "") == channel.line_id
            and str(data.get("CONNECTOR") or "").lower() == channel.connector_id.lower()
        ):
            return True
    return False


def _status_message(row: OutboundMessage) -> dict:
    """A MESSAGES element of imconnector-send-status-delivery.md: `im` holds Bitrix24's ids (from the event),
    `message.id` an array of the outside system's ids for the message, `chat.id` the outside chat."""
    return {
        "im": {"chat_id": int(row.im_chat_id), "message_id": int(row.im_message_id)},
        "message": {
            "id": [row.external_message_id or row.im_message_id],
            "date": int((row.sent_at or timezone.now()).timestamp()),
        },
        "chat": {"id": row.external_chat_id},
    }


# --- the sweep -----------------------------------------------------------------------------------------
def _due_channels(model, due: Q, **where) -> list[int]:
    """Up to SWEEP_CHANNELS connected channels with due rows, the one whose row waits longest first."""
    # An explicit GROUP BY and order: with Meta.ordering (id) a DISTINCT would select rows, not channels.
    return list(
        model.objects.filter(due, channel__state=Channel.State.CONNECTED, **where)
        .values("channel_id")
        .annotate(oldest=Min("next_attempt_at"))
        .order_by("oldest")
        .values_list("channel_id", flat=True)[:SWEEP_CHANNELS]
    )


def _due_inbound(now: datetime) -> list[int]:
    return _due_channels(
        InboundMessage, Q(state__in=UNSENT, next_attempt_at__lte=now), channel__portal__status__in=_SERVING
    )


def hand_off_inbound(keys: list[str]) -> None:
    """The hand-off dispatcher's batch (inbox/handoff.py): the channels whose inbound messages were announced,
    each queued once (unless a task is pending for it already: `queue_channel`'s mark)."""
    for key in keys:
        if key.isdigit():
            queue_channel(deliver_inbound, int(key))


def queue_due_inbound() -> None:
    """The dispatcher's catch-up when it starts listening: every channel with due inbound messages queued."""
    for channel_id in _due_inbound(timezone.now()):
        queue_channel(deliver_inbound, channel_id)


@shared_task(name="openlines.sweep")
def sweep() -> str:
    """Beat runs this each minute: rows that can never go stop being due, and every channel with due rows
    (or delivery statuses owed to Bitrix24) is queued, so nothing waits for a lost task."""
    now = timezone.now()
    dead = _dead_letter_gone() + _parked_expired(now)
    parked = _park()
    released = _unpark(OutboundMessage.objects.all(), now)
    due = Q(state__in=UNSENT, next_attempt_at__lte=now)
    inbound = _due_inbound(now)
    outbound_ = list(
        dict.fromkeys(
            _due_channels(OutboundMessage, due, channel__webhook_url__gt="")
            + _due_channels(OutboundMessage, _status_due(now), channel__portal__status__in=_SERVING)
        )
    )
    for channel_id in inbound:
        queue_channel(deliver_inbound, channel_id)
    for channel_id in outbound_:
        queue_channel(deliver_outbound, channel_id)
    return (
        f"queued {len(inbound)} inbound, {len(outbound_)} outbound; {dead} dead letter(s), {parked} parked, "
        f"{released} released"
    )


@shared_task(name="openlines.prune", acks_late=True, ignore_result=True)
def prune() -> int:
    """Beat, daily: delete messages relayed more than OPENLINES_RETENTION_DAYS ago (openlines/retention.py)."""
    return retention.prune().deleted
