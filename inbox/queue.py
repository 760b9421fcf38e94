"""The durable inbox of Bitrix24 events: accepted in the request, processed by Celery workers.

Bitrix24 never resends an event our server failed to take (api-reference/events/index.md), so
`/events/` only checks what is cheap (shape, known portal, `application_token`), writes one row in
the request's transaction and answers at once; everything that calls out runs in a worker through
the handler registered for the event code. The database, not the broker, is the source of truth:
a task that got lost (broker restarted, worker killed) is sent again by `sweep`.

Handlers and the portal directory are registered (inbox/registry.py). Attempts are bounded; the last
failure leaves the row `failed` (a dead letter) until `replay`. A handler's `Later` (a Bitrix24 limit) is no
failure: the row waits as long as it says, and the attempt is not counted.

Under floods (issue 23; docs/architecture.md, "The inbox under floods"): each row is in a *lane*, proven
(the portal's application_token matched, or pulled offline with our tokens) or unproven, and a portal's
order holds within a lane only; a key marks a duplicate only once a row of it was applied (idempotency_key);
proven events have a budget per portal, unproven ones one for the deployment; at most
B24_INBOX_PORTAL_WINDOW tasks per portal and lane are in the broker (`_release`), the rest wait in the
table, held; and finished rows are pruned after their retention (`prune`).

A task that finishes an event goes on with its lane's next ordered event itself, within B24_INBOX_CHAIN_EVENTS
and B24_INBOX_CHAIN_SECONDS (issue 26; `process` says why that is safe).
"""

import contextlib
import hashlib
import hmac
import json
import logging
import random
import threading
import time
import uuid
from datetime import datetime, timedelta
from functools import lru_cache, partial
from typing import TypedDict, cast

from celery import current_app
from django.conf import settings
from django.db import DatabaseError, connection, connections, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from bitrix24 import limits
from bitrix24.wire import JSON

from . import handoff, rows
from .models import InboxItem, PruneRun
from .registry import Later, Refused, Reject, Retry, directory, ordered_codes, registration

log = logging.getLogger(__name__)
State = InboxItem.State
# The task's name since the inbox lived in portals: kept, so tasks queued by an older release still run.
PROCESS_TASK = "portals.process_inbox_item"
# The least wait of a row whose handler said `Later` (seconds): a shorter countdown is only another task.
LATER_MIN = 1.0


# --- in the request ------------------------------------------------------------------------------


def idempotency_key(
    event_code: str,
    *,
    member_id: str,
    ts: str,
    data: JSON,
    event_handler_id: str = "",
    application_token: str = "",
    offline_record: str = "",
    lane: str = InboxItem.Lane.PROVEN,
) -> str:
    """A keyed digest (HMAC under SECRET_KEY) of what a repeated delivery of one event repeats.

    Online (POSTed to /events/): event code, handler id, member_id, `ts` and the whole `data` block identify
    the event, with the `application_token`. The access and refresh tokens are left out: they are credentials
    of the delivery, not the event. `lane` is part of the namespace: an unproven row (no stored portal vouched
    for it at accept) never shares a key with a proven one.

    Every user of a portal holds its application_token and can predict the rest (the `ts` is seconds), so an
    online key can be *taken in advance*: a forger posts the administrator's uninstall before Bitrix24 does.
    That is why a key only marks a duplicate once a row of it was applied: `/events/` answers "duplicate"
    (storing nothing) only when a row of the key is `done`; otherwise the delivery gets a row of its own and
    the dedupe happens in the worker (`_claim`): the first row of a key that is applied wins, later rows of it
    wait while an earlier one is unfinished and are finished as duplicates once one is done. A rejected or
    failed row absorbs nothing. So Bitrix24's real duplicates (one event delivered twice) are applied once,
    and a forged row that was rejected never swallows the genuine delivery.

    Offline (pulled from the portal's queue, inbox/offline.py): `offline_record` names the record *in the
    state it was fetched*: its ID, MESSAGE_ID and TIMESTAMP_X (a later change of the same object moves
    TIMESTAMP_X, so it is a new row). The material starts with "offline", a namespace of its own, which only
    our own pull (with the app's tokens) writes: nobody can take it in advance, so there any row of the key
    absorbs a record fetched again (a pull that stopped before `event.offline.clear`, then fetched again under
    the same process_id): it is stored once.

    Why one event seen both ways is two rows, and still applied once: the two deliveries share no field that
    names the change (online: `ts`, the full `data`, the handler id; offline: the object's ids, TIMESTAMP_X,
    MESSAGE_ID). A key on the object's ids alone would fold two distinct online edits of one message into
    one (the second lost), and would let anyone who knows the portal's application_token (every user of
    the portal does) pre-empt a genuine event by posting its ids first. So the two rows run the same
    handler, and "applied once" is the handler's contract (inbox/registry.py: idempotent): the portal's
    own state decides (ONAPP*: the lifecycle state and app.info; connector messages: one webhook row per
    add and delete, an edit relayed only when the portal shows a new text, openlines/events.py).
    """
    if offline_record:
        parts = ["offline", event_code.upper(), member_id, offline_record]
    else:
        parts = [event_code.upper(), str(event_handler_id), member_id, str(ts), data, application_token]
        if lane != InboxItem.Lane.PROVEN:  # (proven keys keep the material they always had)
            parts = [str(lane), *parts]
    material = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(settings.SECRET_KEY.encode(), material.encode(), hashlib.sha256).hexdigest()


def accept(
    event_code: str,
    *,
    member_id: str,
    data: dict[str, JSON],
    auth: dict[str, JSON],
    ts: str = "",
    event_handler_id: str = "",
) -> tuple[InboxItem, bool]:
    """Run the cheap checks and store the event; returns (item, created). A duplicate changes nothing.

    Raises Refused (nothing stored; 429 past an admission budget). Once the surrounding transaction commits,
    the row goes to the broker within its portal lane's window (`_release`), or waits there, held.
    """
    entry = registration(event_code)
    if entry is None:
        raise Refused(f"unknown event {event_code[:40]}", status=400)
    presented = auth.get("application_token")
    application_token = presented if isinstance(presented, str) else ""
    # A precheck judges more of the row than the INSERT's condition re-checks (ONAPPUPDATE: the portal's status),
    # so those events read it as it is now; the others may use this process's copy of it.
    portal = directory().find(member_id, fresh=entry.precheck is not None)
    proven = portal is not None and portal.application_token_is(application_token)
    if portal is not None and not proven:  # (this process's copy of the row may be older than the token)
        portal = directory().find(member_id, fresh=True)
        proven = portal is not None and portal.application_token_is(application_token)
    if entry.needs_application_token:
        if portal is None:
            raise Refused("unknown portal", status=404)
        if not proven:
            raise Refused("application_token does not match")
    elif not proven:
        _admit_unproven(member_id)
    if proven:
        # Every user of the portal holds its application_token: proven events get a budget per portal too
        # (generous; what Bitrix24 could not deliver meanwhile the offline pull recovers, inbox/offline.py).
        wait = limits.refused_for(
            f"inbox-portal:{member_id}",
            per_minute=settings.B24_INBOX_PORTAL_PER_MINUTE,
            burst=settings.B24_INBOX_PORTAL_BURST,
            lease=_PORTAL_BUDGET_LEASE,
        )
        if wait is not None:
            raise Refused("too many events for this portal", status=429, retry_after=max(wait, 1.0))
    if entry.precheck is not None:
        entry.precheck(portal, auth, data)
    lane = InboxItem.Lane.PROVEN if proven else InboxItem.Lane.UNPROVEN
    key = idempotency_key(
        entry.event_code,
        member_id=member_id,
        ts=ts,
        data=data,
        event_handler_id=event_handler_id,
        application_token=application_token,
        lane=lane,
    )
    stored = {
        "member_id": member_id,
        "data": data,
        "key": key,
        "sealed_auth": json.dumps(auth),
        "ts": str(ts),
        "event_handler_id": event_handler_id,
        "source": InboxItem.Source.ONLINE,
        "lane": lane,
    }
    # A proven event is stored only if the portal's row still holds the token's digest as read (the row may be
    # this process's copy of it): checked inside the INSERT.
    unchanged = directory().unchanged(portal) if proven and portal is not None else None
    try:
        return _store(entry.event_code, portal=portal, unchanged=unchanged, **stored)
    except _PortalChanged:
        # The token changed since this process read the row: judged again on the row as it is now.
        portal = directory().find(member_id, fresh=True)
        if portal is None or not portal.application_token_is(application_token):
            raise Refused("application_token does not match") from None
        return _store(entry.event_code, portal=portal, unchanged=None, **stored)


def _holds(sql: str, params: list) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone() is not None


class _PortalChanged(Exception):
    """Nothing stored: the portal's row no longer holds the digest it was read with."""


# A portal sending many events takes its budget's units ten at a time per web process (bitrix24.limits,
# LEASE_HOT): one Redis call per ten events. The budget is generous (B24_INBOX_PORTAL_BURST, 3,000), so what a
# process leaves unspent when a lease ends (at most 9 units a second) is no loss to the portal.
_PORTAL_BUDGET_LEASE = 10


def _admit_unproven(member_id: str) -> None:
    """Anyone may send these: bound the rows (and later the OAuth attempts) a stranger can cause, per portal
    and for the whole deployment (per minute, and in total waiting). Raises Refused (429)."""
    waiting = InboxItem.objects.filter(lane=InboxItem.Lane.UNPROVEN, state__in=InboxItem.UNFINISHED)
    cap = settings.B24_INBOX_UNPROVEN_MAX_WAITING
    if waiting[:cap].count() >= cap:  # (a bounded count: it stops at the cap)
        raise Refused("too many unverified events waiting", status=429, retry_after=60)
    if not limits.admit(
        f"inbox:{member_id}",
        per_minute=settings.B24_INBOX_UNVERIFIED_PER_MINUTE,
        burst=settings.B24_INBOX_UNVERIFIED_BURST,
    ):
        raise Refused("too many unverified events for this portal", status=429, retry_after=30)
    wait = limits.refused_for(
        "inbox-unproven",
        per_minute=settings.B24_INBOX_UNPROVEN_PER_MINUTE,
        burst=settings.B24_INBOX_UNPROVEN_BURST,
    )
    if wait is not None:
        raise Refused("too many unverified events", status=429, retry_after=max(wait, 1.0))


def accept_offline(event_code: str, *, member_id: str, data: dict, record: str, ts: str = "") -> tuple[InboxItem, bool]:
    """Store one record of the portal's offline queue (inbox/offline.py); returns (item, created).

    No request-time check runs: the record was fetched from the portal with the app's own tokens, so the
    portal itself is the sender (and it carries no application_token to check). `record` names the record's
    state (see idempotency_key); `data` is its EVENT_DATA as an object. Raises Refused for an event nobody
    registered (nothing stored).
    """
    entry = registration(event_code)
    if entry is None:
        raise Refused(f"unknown event {event_code[:40]}", status=400)
    key = idempotency_key(entry.event_code, member_id=member_id, ts=ts, data=data, offline_record=record)
    return _store(
        entry.event_code,
        portal=directory().find(member_id),
        member_id=member_id,
        data=data,
        key=key,
        sealed_auth="",
        ts=ts,
        event_handler_id="",
        source=InboxItem.Source.OFFLINE,
        lane=InboxItem.Lane.PROVEN,  # fetched from the portal with the app's own tokens
    )


def _store(
    event_code: str, *, portal, member_id, data, key, sealed_auth, ts, event_handler_id, source, lane, unchanged=None
) -> tuple[InboxItem, bool]:
    """One row for the event, or the row that already answers for its key (a duplicate changes nothing).

    Online, only a row of the key that was applied (`done`) answers for it; offline, any row (see
    idempotency_key). Otherwise a new row, deduplicated in the worker (`_claim`).

    The check is part of the INSERT (`INSERT ... SELECT ... WHERE NOT EXISTS (the absorbing row) RETURNING id`,
    one round trip where it took two); only when nothing was stored is the absorbing row read. Its race is no
    wider than the check-then-insert it replaces: a row of the key committed after the statement's snapshot
    (another delivery stored at the same moment, or a row applied meanwhile) is not seen by it, just as one
    committed between a separate check and the INSERT was not, and the stored row is then deduplicated by the
    worker as before (`_claim`: it waits while an earlier row of its key is unfinished, and ends as
    "duplicate of #N" once one is done). The window only shrank, from two statements to one."""
    now = timezone.now()
    online = source == InboxItem.Source.ONLINE
    item = InboxItem(
        portal_id=None if portal is None else portal.pk,  # the directory's portal, known by its pk
        member_id=member_id,
        event=event_code,
        event_handler_id=event_handler_id[:32],
        source=source,
        lane=lane,
        data=data,
        sealed_auth=sealed_auth,
        ts=ts[:32],
        idempotency_key=key,
        received_at=now,
        next_attempt_at=now,
        enqueued_at=None,  # held in the table until _release sends it (the portal lane's window)
    )
    # InboxItem.objects.create without its per-call SQL compilation, unless a row answers for the key (inbox/rows.py)
    condition, params = f"WHERE NOT EXISTS ({_absorbing_sql(online)})", _absorbing_params(key, online=online)
    if unchanged is not None:  # (the portal's row as read: see accept)
        condition, params = f"{condition} AND EXISTS ({unchanged[0]})", [*params, *unchanged[1]]
    if not rows.insert_where(item, condition, params):
        if unchanged is not None and not _holds(*unchanged):
            raise _PortalChanged  # (judged before the duplicate: the event may no longer be proven at all)
        existing = _absorbing(key, online=online)
        if existing is not None:
            log.info(
                "duplicate event delivery",
                extra={"member_id": member_id, "event": event_code, "inbox_id": existing.pk, "source": source},
            )
            return existing, False
        # The row that answered was pruned in between (its retention ended): stored as if checked after that.
        rows.insert(item)
    if not handoff.by_dispatcher():  # (else the worker's dispatcher releases it: inbox/handoff.py)
        entry = registration(event_code)
        ordered = entry is None or entry.ordered
        # robust: the answer is 200 once the row is committed, whatever happens to the send afterwards.
        transaction.on_commit(partial(_release_stored, item.pk, member_id, lane, ordered=ordered), robust=True)
    log.info(
        "event accepted", extra={"member_id": member_id, "event": event_code, "inbox_id": item.pk, "source": source}
    )
    return item, True


@lru_cache(maxsize=2)
def _absorbing_sql(online: bool) -> str:
    """The rows that answer for a key (online: the applied ones), as the INSERT's NOT EXISTS: built once from the
    model's metadata (the ORM's compilation of it cost more CPU than running it)."""
    meta = InboxItem._meta
    column = {f.name: f.column for f in meta.concrete_fields}
    done = f" AND {column['state']} = %s" if online else ""
    return f"SELECT 1 FROM {meta.db_table} WHERE {column['idempotency_key']} = %s{done}"


def _absorbing_params(key: str, *, online: bool) -> list[str]:
    return [key, str(State.DONE)] if online else [key]


def _absorbing(key: str, *, online: bool) -> InboxItem | None:
    """The (oldest) row that answers for `key` (online: one that was applied), or None: read only for a duplicate."""
    rows_of_key = InboxItem.objects.filter(idempotency_key=key)
    if online:
        rows_of_key = rows_of_key.filter(state=State.DONE)
    return rows_of_key.order_by("pk").first()


@lru_cache(maxsize=8)
def _behind_sql(codes: int) -> str:
    meta = InboxItem._meta
    column = {f.name: f.column for f in meta.concrete_fields}
    return (
        f"SELECT 1 FROM {meta.db_table} WHERE {column['member_id']} = %s AND {column['lane']} = %s "
        f"AND {column['state']} IN (%s, %s) AND {meta.pk.column} < %s "
        f"AND {column['event']} IN ({', '.join(['%s'] * codes)}) LIMIT 1"
    )


@lru_cache(maxsize=1)
def _window_sql() -> tuple[str, str]:
    """(the count of a portal lane's rows in the broker: queued or being processed, as `_release` counts them;
    the conditional mark of one pending, held row as sent)."""
    meta = InboxItem._meta
    column = {f.name: f.column for f in meta.concrete_fields}
    state, sent = column["state"], column["enqueued_at"]
    count = (
        f"SELECT COUNT(*) FROM {meta.db_table} WHERE {column['member_id']} = %s AND {column['lane']} = %s "
        f"AND {state} IN (%s, %s) AND ({state} = %s OR {sent} IS NOT NULL)"
    )
    mark = f"UPDATE {meta.db_table} SET {sent} = %s WHERE {meta.pk.column} = %s AND {state} = %s AND {sent} IS NULL"
    return count, mark


def _release_stored(item_id: int, member_id: str, lane: str, *, ordered: bool) -> int:
    """After a row was stored and committed: send it if its portal lane lets it go now; returns 1 if sent.

    An ordered row with an older ordered row of its lane unfinished cannot run before that one (ordered rows
    run one at a time, the lane's oldest first), and that one's end releases it: `_release_next` runs after
    that row's outcome is committed, and this row was committed before this check, so one of the two always
    sees the other (a row found finished here is not "unfinished"; a row still unfinished here finishes
    later and sees this one). So under a portal's burst a stored row costs one indexed lookup, not the
    window's count and picks, which grew with the lane's backlog (bench/RESULTS.md, ingest).

    Otherwise the row is its lane's first ordered row, the one `_release` would pick: it goes if the window
    has room (the same count), by the same conditional mark, else the end of a row in the broker sends it
    (by the same argument). Unordered rows take `_release` itself. The sweeper covers a send the broker
    refused, as before."""
    codes = ordered_codes()
    if not ordered or not codes:
        return _release(member_id, lane)
    pending, processing = str(State.PENDING), str(State.PROCESSING)
    count, mark = _window_sql()
    with connection.cursor() as cursor:
        cursor.execute(_behind_sql(len(codes)), [member_id, lane, pending, processing, item_id, *codes])
        if cursor.fetchone() is not None:
            return 0
        cursor.execute(count, [member_id, lane, pending, processing, processing])
        (in_broker,) = cursor.fetchone()
        if in_broker >= settings.B24_INBOX_PORTAL_WINDOW:
            return 0
        cursor.execute(mark, [connection.ops.adapt_datetimefield_value(timezone.now()), item_id, pending])
        if cursor.rowcount != 1:
            return 0  # another release sent it
    return int(enqueue(item_id))


def enqueue(item_id: int, *, countdown: float | None = None) -> bool:
    """Send the item's task to the broker; False (logged) when the broker is unavailable: the sweeper re-sends."""
    try:
        current_app.send_task(PROCESS_TASK, (item_id,), countdown=countdown)
    except Exception as exc:  # the broker is down: the row is safe, the sweeper re-sends it
        log.warning(
            "could not send an inbox task; the sweeper will", extra={"inbox_id": item_id, "error": type(exc).__name__}
        )
        with contextlib.suppress(DatabaseError):  # the sweeper finds it anyway, a little later
            InboxItem.objects.filter(pk=item_id).update(enqueued_at=None)
        return False
    return True


# --- in the worker -------------------------------------------------------------------------------


def backoff(attempts: int, *, after: float | None = None) -> float:
    """Seconds before attempt `attempts + 1`: exponential from B24_INBOX_BACKOFF, capped, with jitter."""
    base = min(settings.B24_INBOX_BACKOFF * (2 ** max(attempts - 1, 0)), settings.B24_INBOX_BACKOFF_MAX)
    # "Equal jitter": at least half the step, so retries of many rows spread without collapsing to zero.
    delay = base / 2 + random.uniform(0, base / 2)
    return max(delay, min(after or 0.0, settings.B24_INBOX_BACKOFF_MAX))


def _older_unfinished(item: InboxItem) -> bool:
    """An older ordered row of the item's portal lane is unfinished (`_behind_sql`, built once)."""
    codes = ordered_codes()
    if not codes:
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            _behind_sql(len(codes)),
            [item.member_id, item.lane, str(State.PENDING), str(State.PROCESSING), item.pk, *codes],
        )
        return cursor.fetchone() is not None


def _held(item: InboxItem) -> None:
    """The item's task leaves the broker without running it: the row waits in the table, held (enqueued_at
    null), and `_release` sends it again when the event it waits for is finished."""
    if item.enqueued_at is not None:
        item.enqueued_at = None
        item.save(update_fields=["enqueued_at"])


def _claim(item_id: int, owner: str):
    """In one short transaction: (item, None, None) when claimed by `owner`, or (None, why not, seconds
    left on another worker's claim or None)."""
    now = timezone.now()
    with transaction.atomic():
        item = _locked(item_id)
        if item is None:
            return None, "gone", None
        if item.finished:
            return None, f"already {item.state}", None
        if item.state == State.PROCESSING and item.lease_until and item.lease_until > now:
            return None, "being processed by another worker", (item.lease_until - now).total_seconds()
        entry = registration(item.event)
        if item.state == State.PROCESSING and item.attempts >= settings.B24_INBOX_MAX_ATTEMPTS:
            # Its worker died in every attempt (an event that kills the process): a dead letter, not a loop.
            item.state, item.finished_at = State.FAILED, now
            item.last_error = f"gave up after {item.attempts} attempts: the worker was lost while processing it"
            item.lease_owner, item.lease_until = "", None
            item.save(update_fields=["state", "finished_at", "last_error", "lease_owner", "lease_until"])
            return None, "failed: worker lost in every attempt", None
        if item.state == State.PENDING and item.next_attempt_at > now + timedelta(seconds=1):
            return None, "not due yet", None
        if entry is not None and entry.ordered and _older_unfinished(item):
            _held(item)
            return None, "waiting for an older event of the portal", None
        applied, earlier = _same_event_rows(item)
        if applied is not None:  # another delivery of the same event was applied: this one is a duplicate
            item.state, item.finished_at, item.outcome = State.DONE, now, f"duplicate of #{applied}"
            item.sealed_auth, item.lease_owner, item.lease_until = "", "", None
            item.save(update_fields=["state", "finished_at", "outcome", "sealed_auth", "lease_owner", "lease_until"])
            return None, f"duplicate of #{applied}", None
        if earlier:
            _held(item)
            return None, "waiting for an earlier delivery of the same event", None
        item.state = State.PROCESSING
        item.attempts += 1
        item.lease_owner = owner
        item.lease_until = now + timedelta(seconds=settings.B24_INBOX_LEASE)
        _update(item.pk, state=item.state, attempts=item.attempts, lease_owner=owner, lease_until=item.lease_until)
    return item, None, None


_NAMES = tuple(f.attname for f in InboxItem._meta.concrete_fields)


@lru_cache(maxsize=2)
def _locked_sql(alias: str) -> str:
    meta = InboxItem._meta
    lock = " FOR UPDATE" if connections[alias].features.has_select_for_update else ""
    columns = ", ".join(str(f.column) for f in meta.concrete_fields)
    return f"SELECT {columns} FROM {meta.db_table} WHERE {meta.pk.column} = %s{lock}"


def _locked(item_id: int) -> InboxItem | None:
    """The row, locked for the claim's transaction (SELECT ... FOR UPDATE where the database has it, as
    `select_for_update` does), loaded as the ORM would; the statement built once."""
    with connection.cursor() as cursor:
        cursor.execute(_locked_sql(connection.alias), [item_id])
        found = cursor.fetchone()
    if found is None:
        return None
    return cast(InboxItem, rows.load(InboxItem, _NAMES, found, using=connection.alias))


@lru_cache(maxsize=1)
def _same_event_sql() -> str:
    meta = InboxItem._meta
    column = {f.name: f.column for f in meta.concrete_fields}
    pk, state = meta.pk.column, column["state"]
    return (
        f"SELECT MAX(CASE WHEN {state} = %s THEN {pk} END), "
        f"COUNT(CASE WHEN {pk} < %s AND {state} IN (%s, %s) THEN 1 END) "
        f"FROM {meta.db_table} WHERE {column['idempotency_key']} = %s AND {pk} <> %s"
    )


def _same_event_rows(item: InboxItem) -> tuple[int | None, bool]:
    """Of the other rows of the item's key, in one statement: the newest applied one (or None), and whether an
    earlier one is unfinished (online keys may have several rows; offline keys never have two)."""
    with connection.cursor() as cursor:
        cursor.execute(
            _same_event_sql(),
            [str(State.DONE), item.pk, str(State.PENDING), str(State.PROCESSING), item.idempotency_key, item.pk],
        )
        applied, earlier = cursor.fetchone()
    return applied, bool(earlier)


@lru_cache(maxsize=32)
def _update_sql(names: tuple[str, ...], conditional: bool) -> tuple[str, tuple]:
    meta = InboxItem._meta
    by_name = {f.name: f for f in meta.concrete_fields}
    fields = tuple(by_name[name] for name in names)
    column = {f.name: f.column for f in meta.concrete_fields}
    sets = ", ".join(f"{f.column} = %s" for f in fields)
    where = f"{meta.pk.column} = %s" + (
        f" AND {column['state']} = %s AND {column['lease_owner']} = %s" if conditional else ""
    )
    return f"UPDATE {meta.db_table} SET {sets} WHERE {where}", fields


def _update(item_id: int, *, _owner: str | None = None, **values) -> int:
    """UPDATE one row's `values` (field names) by its pk; with `_owner`, only while it is processing under that
    claim. Each value prepared by its field as `QuerySet.update` does; the statement built once per set of
    names. Returns the rows updated."""
    sql, fields = _update_sql(tuple(values), _owner is not None)
    params = [f.get_db_prep_save(values[f.name], connection) for f in fields]
    params.append(item_id)
    if _owner is not None:
        params += [str(State.PROCESSING), _owner]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _finish(item: InboxItem, owner: str, **fields) -> bool:
    """Record the outcome if the claim is still ours (a lost lease means another worker took over)."""
    return bool(_update(item.pk, _owner=owner, lease_owner="", lease_until=None, **fields))


class _Chain:
    """One task's budget for going on with its lane's next ordered rows itself (`process`), and the row it goes
    on with next (set by `_release`)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.events = 0  # rows this task took on (claimed, or found a duplicate)
        self.next: int | None = None

    def open(self) -> bool:
        """Room for one more row: fewer than B24_INBOX_CHAIN_EVENTS taken, B24_INBOX_CHAIN_SECONDS not over."""
        return (
            self.events < settings.B24_INBOX_CHAIN_EVENTS
            and time.monotonic() - self.started < settings.B24_INBOX_CHAIN_SECONDS
        )


def process(item_id: int, *, task_id: str = "") -> str:
    """Claim the item, run its handler, record the outcome; returns what happened to it (safe to call again).

    Then the task goes on with its lane's next ordered row itself, within a budget (issue 26: a backlog of one
    portal's replies paid a broker round trip per event, ~40-50 ms against ~14 ms of work, bench/RESULTS.md):
    when the item is finished (done, rejected, or a duplicate) and `_release` picks the lane's first ordered
    row, it marks that row sent exactly as for a task (the window counts it; the conditional mark gives it to
    one release only) but hands it to this task instead of the broker, and this task processes it through
    `_process` like any task: `_claim` (lease, heartbeat, the older-row, duplicate and due checks), handler,
    outcome, release. Unordered picks are published as before. The budget is B24_INBOX_CHAIN_EVENTS rows and
    B24_INBOX_CHAIN_SECONDS since the task started, checked before each row is taken on: past it the next
    row is published (behind the other portals' tasks) as before, so a task holds its worker at most that long
    plus the one row it started last (docs/architecture.md, fair dispatch). A handler that raised (a retry, a
    dead letter, or `Later`) ends the chain: it is usually the portal, Bitrix24 or our database in trouble (for
    `Later`, the portal's request bucket is full), which the next event would meet too, and the waiting row
    blocks its lane's ordered rows anyway; the next rows go through the broker as before. A rejection is a
    verdict on that one event (forged, malformed), cheap, and does not.

    Why a row taken on this way is never lost nor run twice:
    - It is marked sent (`enqueued_at`, autocommitted) before this task claims it, and nothing else sends it:
      `_release` picks only held rows (`enqueued_at` null), and the sweeper re-sends a pending row only once its
      mark is B24_INBOX_REQUEUE_AFTER old; even a second task for it would be turned away by the claim.
    - The worker dies between the mark and the claim: the row stays pending with its mark, like a task the broker
      lost, and the sweeper re-sends it once the mark is B24_INBOX_REQUEUE_AFTER old (until then it holds one of
      its lane's window slots). It dies after the claim: the heartbeat stops, the claim lapses within a lease, and
      the sweeper re-sends the row (a processing row past its lease), as for any task. The price, against a task
      of its own that RabbitMQ would re-deliver at once: the lane's ordered rows wait up to B24_INBOX_REQUEUE_AFTER
      plus a sweep interval after a death in the instant between the mark and the claim, and up to a lease plus
      a sweep interval (not a lease) after a death mid-handler.
    - The task's own message (acks_late, reject_on_worker_lost) is acknowledged only when the whole chain ends:
      re-delivered after a death, it finds its own row finished ("already done") and does nothing more; the rows
      of the chain are each covered by the two cases above.
    - An error escaping a chained row (the database away in its claim or outcome) gives that row, and a row
      already marked for this task, a task of their own (published as `_release` would have), so Celery's retry
      while the database is away covers them as it covers the task's own row (inbox/tasks.py), then it is
      raised as before (the task's own row is finished: its retry finds it so)."""
    chain = _Chain()
    current: int | None = item_id
    result = ""
    try:
        while current is not None:
            chain.events += 1
            _claimed, what = _process(current, task_id=task_id, send=True, chain=chain)
            if current == item_id:
                result = what
            current, chain.next = chain.next, None
    except Exception:
        for pk in (current, chain.next):
            if pk is not None and pk != item_id:
                enqueue(pk)
        raise
    if chain.events > 1:
        log.info(
            "inbox task went on with its lane's next events",
            extra={
                "inbox_id": item_id,
                "task_id": task_id,
                "events": chain.events,
                "seconds": round(time.monotonic() - chain.started, 3),
            },
        )
    return result


class _ClaimHeartbeat(threading.Thread):
    """Renews a running handler's claim every third of B24_INBOX_LEASE, so the lease can be short: a worker
    killed mid-handler stops renewing and its claim runs out within one lease (the sweeper then re-sends the
    row), not after a lease sized for the slowest handler. It stops renewing after B24_INBOX_HANDLER_MAX
    seconds (a handler stuck that long gives its row up to a fresh attempt) or once the claim is not ours."""

    def __init__(self, item_id: int, owner: str):
        super().__init__(name=f"inbox-claim-{item_id}", daemon=True)
        self.item_id, self.owner = item_id, owner
        self.done = threading.Event()
        self.ends = time.monotonic() + settings.B24_INBOX_HANDLER_MAX

    def run(self) -> None:
        try:
            while not self.done.wait(settings.B24_INBOX_LEASE / 3):
                if time.monotonic() > self.ends:
                    return
                try:
                    renewed = InboxItem.objects.filter(
                        pk=self.item_id, state=State.PROCESSING, lease_owner=self.owner
                    ).update(lease_until=timezone.now() + timedelta(seconds=settings.B24_INBOX_LEASE))
                except DatabaseError:  # the database is away: try again at the next beat; the claim may lapse
                    log.warning("inbox claim not renewed", extra={"inbox_id": self.item_id})
                    continue
                if not renewed:
                    return  # finished, or taken over after it lapsed: nothing of ours to keep
        finally:
            connections.close_all()  # this thread's own connections only


def _process(item_id: int, *, task_id: str, send: bool, chain: _Chain | None = None) -> tuple[bool, str]:
    """(claimed, what happened). `send`: follow-up tasks (retries, the portal's next event) go to the broker;
    with `chain`, the lane's next ordered row may be handed to this task instead (`process`)."""
    owner = uuid.uuid4().hex
    item, why_not, lease_left = _claim(item_id, owner)
    if item is None and why_not.startswith("duplicate of"):
        log.info("duplicate event finished", extra={"inbox_id": item_id, "outcome": why_not, "task_id": task_id})
        finished = InboxItem.objects.filter(pk=item_id).first()
        if send and finished is not None:
            _release_next(finished, chain)
        return True, why_not
    if item is None:
        log.info("inbox item skipped", extra={"inbox_id": item_id, "reason": why_not, "task_id": task_id})
        if send and lease_left is not None:
            # Maybe its worker died (the broker re-delivered this task): look again once the claim ran out.
            enqueue(item_id, countdown=lease_left + 1)
        return False, why_not
    context = {
        "member_id": item.member_id,
        "event": item.event,
        "inbox_id": item.pk,
        "task_id": task_id,
        "attempt": item.attempts,
    }
    entry = registration(item.event)
    now = timezone.now()
    failed = False
    heartbeat = _ClaimHeartbeat(item.pk, owner)
    heartbeat.start()
    try:
        if entry is None:
            raise Reject(f"no handler registered for {item.event}")
        try:
            outcome = str(entry.handler(item) or "done")[:255]
        finally:
            heartbeat.done.set()
    except Reject as exc:
        _finish(item, owner, state=State.REJECTED, last_error=exc.reason[:1000], finished_at=timezone.now())
        log.info("event rejected", extra={**context, "reason": exc.reason})
        result = f"rejected: {exc.reason}"
    except Later as exc:
        # Not a failure (a Bitrix24 limit): the attempt the claim counted is given back, nothing doubles, never a
        # dead letter; like a retry it ends the chain (the portal's bucket is full for the lane's next event too).
        delay = min(max(float(exc.after), LATER_MIN), settings.B24_INBOX_BACKOFF_MAX)
        _finish(
            item,
            owner,
            state=State.PENDING,
            attempts=max(item.attempts - 1, 0),
            last_error=f"later: {exc.reason}"[:1000],
            next_attempt_at=timezone.now() + timedelta(seconds=delay),
            enqueued_at=timezone.now() if delay <= settings.B24_INBOX_MAX_COUNTDOWN else None,
        )
        log.info("event waits, no attempt counted", extra={**context, "reason": exc.reason, "delay": round(delay, 1)})
        _send_again(item, delay, send)
        return True, f"later in {delay:.0f} s: {exc.reason}"
    except Exception as exc:
        reason, after = (exc.reason, exc.after) if isinstance(exc, Retry) else (f"{type(exc).__name__}: {exc}", None)
        if not isinstance(exc, Retry):
            log.exception("event handler failed", extra=context)
        if item.attempts >= settings.B24_INBOX_MAX_ATTEMPTS:
            _finish(
                item,
                owner,
                state=State.FAILED,
                last_error=f"gave up after {item.attempts} attempts: {reason}"[:1000],
                finished_at=timezone.now(),
            )
            log.warning("event failed for good (dead letter)", extra={**context, "reason": reason})
            result, failed = f"failed: {reason}", True
        else:
            delay = backoff(item.attempts, after=after)
            _finish(
                item,
                owner,
                state=State.PENDING,
                last_error=reason[:1000],
                next_attempt_at=now + timedelta(seconds=delay),
                # Short waits ride on the broker (a countdown task, in the lane's window); longer ones wait
                # held in the table, and the sweeper releases them when due.
                enqueued_at=timezone.now() if delay <= settings.B24_INBOX_MAX_COUNTDOWN else None,
            )
            log.info("event will be retried", extra={**context, "reason": reason, "delay": round(delay, 1)})
            _send_again(item, delay, send)
            return True, f"retry in {delay:.0f} s: {reason}"
    else:
        # A done event is never replayed: its auth (tokens) is no longer needed at rest.
        _finish(
            item, owner, state=State.DONE, outcome=outcome, last_error="", finished_at=timezone.now(), sealed_auth=""
        )
        log.info("event processed", extra={**context, "outcome": outcome})
        result = outcome
    if send:
        # The chain goes on after a done or rejected row, not after a dead letter (see `process`).
        _release_next(item, None if failed else chain)
    return True, result


def _send_again(item: InboxItem, delay: float, send: bool) -> None:
    """The item waits `delay` seconds (a retry, or `Later`). Short waits ride on the broker (a countdown task, in
    the lane's window); long ones are left to the sweeper (no hours-long ETA tasks), and the window's slot goes
    to the lane's next held row."""
    if send and delay <= settings.B24_INBOX_MAX_COUNTDOWN:
        enqueue(item.pk, countdown=delay)
    elif send:
        _release(item.member_id, item.lane)


def _release_next(item: InboxItem, chain: _Chain | None = None) -> None:
    """The item is finished: its portal lane's next rows may go to the broker (its next ordered event, a later
    delivery of the same event, unordered rows the window held back); with a `chain` that has room, the next
    ordered event goes to this task instead (`process`)."""
    _release(item.member_id, item.lane, chain=chain if chain is not None and chain.open() else None)


def _release(member_id: str, lane: str, *, chain: _Chain | None = None) -> int:
    """Send the portal lane's next runnable rows to the broker, keeping at most B24_INBOX_PORTAL_WINDOW of its
    rows there (queued or being processed); returns how many were sent.

    Fair dispatch: a portal with thousands of waiting events has at most that many tasks in the broker per lane,
    the rest wait in the table (held: `enqueued_at` null), so another portal's next event is behind at most
    window x (portal lanes with work) tasks (docs/architecture.md). Runnable: the lane's oldest unfinished
    ordered row (ordered rows run one at a time anyway), and unordered rows, oldest first; all of them pending,
    held and due. Called after a row is stored, after one is finished, and by the sweeper (which also picks
    up a row stored in the instant its predecessor finished, and a send the broker refused).

    With `chain` (a task that just finished one of the lane's rows and has budget left): the lane's first ordered
    row, when picked, is marked sent the same way but handed to that task (`chain.next`) instead of the broker
    (`process`); it is not counted in the returned number. Unordered picks go to the broker as always.
    """
    now = timezone.now()
    pending, processing = str(State.PENDING), str(State.PROCESSING)
    count, mark = _window_sql()
    lane_sql = _lane_sql()
    codes = ordered_codes()
    with connection.cursor() as cursor:
        # Raw statements built once from the model's metadata (the ORM compiled these anew for every finished
        # event: most of a release's CPU); the same queries and the same conditional mark as before.
        cursor.execute(count, [member_id, lane, pending, processing, processing])
        free = settings.B24_INBOX_PORTAL_WINDOW - cursor.fetchone()[0]
        if free <= 0:
            return 0
        due = connection.ops.adapt_datetimefield_value(now + timedelta(seconds=1))
        cursor.execute(lane_sql["unordered"](len(codes)), [member_id, lane, pending, due, *codes, free * 2])
        candidates = cursor.fetchall()
        picks = []
        for pk, key in candidates:
            # not one that waits for an earlier delivery of the same event (its task would only come back)
            cursor.execute(lane_sql["earlier"], [member_id, lane, pending, processing, key, pk])
            if cursor.fetchone() is None:
                picks.append(pk)
        picks = picks[:free]
        ordered = None
        if codes:
            # The lane's oldest unfinished ordered row, and whether it is runnable, in one statement.
            cursor.execute(lane_sql["first_ordered"](len(codes)), [due, member_id, lane, pending, processing, *codes])
            first = cursor.fetchone()
            if first is not None and first[1] == pending and first[2] and first[3]:
                picks.append(first[0])
                ordered = first[0]
        sent, failed = 0, False
        stamp = connection.ops.adapt_datetimefield_value(now)
        for pk in sorted(picks)[:free]:
            to_chain = chain if pk == ordered else None
            if failed and to_chain is None:
                # The broker just failed a send (down, or frozen: each send waits for its deadline): the other
                # picks stay held, unmarked, for the next release or the sweeper, and a request that stored one
                # event waits for at most one send, not one per pick (issue 26).
                continue
            # Conditional: of two releases at once, one sends each row (the window may be passed by one or two).
            cursor.execute(mark, [stamp, pk, pending])
            if cursor.rowcount == 1:
                if to_chain is not None:
                    to_chain.next = pk  # marked sent, like any task's row: the finishing task goes on with it
                elif enqueue(pk):
                    sent += 1
                else:
                    failed = True
    return sent


@lru_cache(maxsize=1)
def _lane_sql() -> dict:
    """`_release`'s reads of one portal lane, built once from the model's metadata."""
    meta = InboxItem._meta
    column = {f.name: f.column for f in meta.concrete_fields}
    table, pk = meta.db_table, meta.pk.column
    lane = f"{column['member_id']} = %s AND {column['lane']} = %s"

    @lru_cache(maxsize=8)
    def unordered(codes: int) -> str:
        exclude = f" AND NOT ({column['event']} IN ({', '.join(['%s'] * codes)}))" if codes else ""
        return (
            f"SELECT {pk}, {column['idempotency_key']} FROM {table} WHERE {lane} AND {column['state']} = %s "
            f"AND {column['enqueued_at']} IS NULL AND {column['next_attempt_at']} <= %s{exclude} "
            f"ORDER BY {pk} LIMIT %s"
        )

    @lru_cache(maxsize=8)
    def first_ordered(codes: int) -> str:
        return (
            f"SELECT {pk}, {column['state']}, {column['enqueued_at']} IS NULL, {column['next_attempt_at']} <= %s "
            f"FROM {table} "
            f"WHERE {lane} AND {column['state']} IN (%s, %s) AND {column['event']} IN ({', '.join(['%s'] * codes)}) "
            f"ORDER BY {pk} LIMIT 1"
        )

    earlier = (
        f"SELECT 1 FROM {table} WHERE {lane} AND {column['state']} IN (%s, %s) "
        f"AND {column['idempotency_key']} = %s AND {pk} < %s LIMIT 1"
    )
    return {"unordered": unordered, "first_ordered": first_ordered, "earlier": earlier}


def sweep(now: datetime | None = None) -> int:
    """Re-send tasks that were really lost, and release held rows the window has room for; returns how many
    tasks were sent.

    Lost: processing with an expired lease (its worker died); or pending, due, sent to the broker more than
    B24_INBOX_REQUEUE_AFTER ago and still not taken (the broker lost it). A row waiting for an older event of
    its portal lane, or held back by the window, is not lost: it is held in the table (`enqueued_at` null) and
    only `_release` sends it, within the window. A task sent twice is harmless: the claim admits one.
    """
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.B24_INBOX_REQUEUE_AFTER)
    lost = Q(state=State.PENDING, next_attempt_at__lte=now, enqueued_at__lte=stale)
    lost |= Q(state=State.PROCESSING, lease_until__lt=now)
    batch = settings.B24_INBOX_SWEEP_BATCH
    ids = list(InboxItem.objects.filter(lost).order_by("id").values_list("pk", flat=True)[:batch])
    sent = 0
    if ids:
        InboxItem.objects.filter(pk__in=ids).update(enqueued_at=now)
        sent += sum(1 for pk in ids if enqueue(pk))
    sent += release_held(now)
    if sent:
        log.info("inbox sweep sent tasks", extra={"count": sent, "lost": len(ids)})
    return sent


def release_held(now: datetime | None = None) -> int:
    """Release every portal lane with held, due rows (the sweeper's second half, and the hand-off dispatcher's
    catch-up); returns how many tasks were sent."""
    held = (
        InboxItem.objects.filter(
            state=State.PENDING, enqueued_at__isnull=True, next_attempt_at__lte=now or timezone.now()
        )
        .values_list("member_id", "lane")
        .distinct()
        .order_by()[: settings.B24_INBOX_SWEEP_BATCH]
    )
    return sum(_release(member_id, lane) for member_id, lane in list(held))


def hand_off(keys: list[str]) -> None:
    """The hand-off dispatcher's batch (inbox/handoff.py): the lanes of the announced rows, each released once,
    the proven lanes first (no unproven event holds a proven one back; unproven ones are few anyway, bounded by
    B24_INBOX_UNPROVEN_PER_MINUTE)."""
    ids = [int(key) for key in keys if key.isdigit()]
    lanes = (
        InboxItem.objects.filter(pk__in=ids, state=State.PENDING, enqueued_at__isnull=True)
        .values_list("member_id", "lane")
        .distinct()
        .order_by()
    )
    for member_id, lane in sorted(lanes, key=lambda found: found[1] != InboxItem.Lane.PROVEN):
        _release(member_id, lane)


def replay(items: QuerySet[InboxItem]) -> int:
    """Put finished rows (a dead letter, a rejection) back to pending for a fresh set of attempts."""
    count, replayed = 0, []
    for pk in items.values_list("pk", flat=True):
        updated = InboxItem.objects.filter(pk=pk, state__in=(State.FAILED, State.REJECTED)).update(
            state=State.PENDING,
            attempts=0,
            next_attempt_at=timezone.now(),
            enqueued_at=None,  # held: released within its portal lane's window
            finished_at=None,
            outcome="",
        )
        count += updated
        if updated:
            replayed.append(pk)
    groups = set(InboxItem.objects.filter(pk__in=replayed).values_list("member_id", "lane").distinct().order_by())
    for member_id, lane in groups:
        transaction.on_commit(partial(_release, member_id, lane), robust=True)
    return count


def process_pending(*, limit: int = 1000) -> int:
    """Process due rows here, oldest first (no broker, no worker): `manage.py process_inbox` and tests
    that say so. Returns how many handler runs were attempted."""
    runs = 0
    while runs < limit:
        progressed, after = False, 0
        while runs < limit:  # one pass over every due row, a page at a time (waiting rows do not end it)
            now = timezone.now()
            due = list(
                InboxItem.objects.filter(
                    Q(state=State.PENDING, next_attempt_at__lte=now) | Q(state=State.PROCESSING, lease_until__lt=now),
                    id__gt=after,
                )
                .order_by("id")
                .values_list("pk", flat=True)[:100]
            )
            if not due:
                break
            for pk in due:
                claimed, _result = _process(pk, task_id="", send=False)
                runs += claimed
                progressed |= claimed
            after = due[-1]
        if not progressed:  # nothing due, or all of it waits for something
            return runs
    return runs


def prune(now: datetime | None = None, *, batch: int = 1000) -> PruneRun:
    """Delete finished rows past their retention; returns the recorded run (shown in the admin).

    Done and rejected rows go B24_INBOX_RETENTION_DAYS after they finished: by then Bitrix24 repeats nothing
    (its duplicates come within seconds), and a rejection's reason has been seen. Failed rows (dead letters)
    are kept until replayed, or B24_INBOX_FAILED_RETENTION_DAYS when that is set. Unfinished rows never go.
    Deleted in batches of `batch` rows, each its own short statement."""
    now = now or timezone.now()
    days, failed_days = settings.B24_INBOX_RETENTION_DAYS, settings.B24_INBOX_FAILED_RETENTION_DAYS
    run = PruneRun.objects.create(
        started_at=now,
        finished_before=now - timedelta(days=days),
        failed_before=now - timedelta(days=failed_days) if failed_days else None,
        reason=(
            f"retention: done and rejected after {days} day(s) (B24_INBOX_RETENTION_DAYS); failed "
            + (
                f"after {failed_days} day(s) (B24_INBOX_FAILED_RETENTION_DAYS)"
                if failed_days
                else "kept until replayed"
            )
        )[:255],
    )
    counts = {State.DONE: 0, State.REJECTED: 0, State.FAILED: 0}
    cutoffs = {State.DONE: run.finished_before, State.REJECTED: run.finished_before, State.FAILED: run.failed_before}
    for state, cutoff in cutoffs.items():
        if cutoff is None:
            continue
        while True:
            ids = list(
                InboxItem.objects.filter(state=state, finished_at__lt=cutoff).values_list("pk", flat=True)[:batch]
            )
            if not ids:
                break
            counts[state] += InboxItem.objects.filter(pk__in=ids, state=state).delete()[0]
    run.done_deleted, run.rejected_deleted, run.failed_deleted = (
        counts[State.DONE],
        counts[State.REJECTED],
        counts[State.FAILED],
    )
    run.finished_at = timezone.now()
    run.save(update_fields=["done_deleted", "rejected_deleted", "failed_deleted", "finished_at"])
    log.info("inbox pruned", extra={"deleted": run.deleted, "reason": run.reason})
    return run


class Backlog(TypedDict):
    unfinished: int
    failed: int
    oldest_unfinished_seconds: int
    lapsed_claims: int
    oldest_lapsed_claim_seconds: int
    oldest_overdue_seconds: int
    degraded: bool


def backlog() -> Backlog:
    """What /healthz reports: unfinished rows, dead letters, the age of the oldest waiting row; and what says
    the inbox is stalled: claims past their lease (a worker died and nobody took its row over yet) and the
    oldest proven row due and not yet applied (unproven rows may wait behind a stranger's flood by design).
    `degraded` once a claim has lapsed for longer than a sweep interval and a lease, or a proven row has been
    due for longer than B24_INBOX_STALL_SECONDS."""
    now = timezone.now()
    unfinished = InboxItem.objects.filter(state__in=InboxItem.UNFINISHED)
    oldest = unfinished.order_by("received_at").values_list("received_at", flat=True).first()
    lapsed = InboxItem.objects.filter(state=State.PROCESSING, lease_until__lt=now)
    oldest_lapse = lapsed.order_by("lease_until").values_list("lease_until", flat=True).first()
    overdue = (
        InboxItem.objects.filter(lane=InboxItem.Lane.PROVEN, state=State.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("next_attempt_at", flat=True)
        .first()
    )
    lapsed_seconds = int((now - oldest_lapse).total_seconds()) if oldest_lapse else 0
    overdue_seconds = int((now - overdue).total_seconds()) if overdue else 0
    return {
        "unfinished": unfinished.count(),
        "failed": InboxItem.objects.filter(state=State.FAILED).count(),
        "oldest_unfinished_seconds": int((now - oldest).total_seconds()) if oldest else 0,
        "lapsed_claims": lapsed.count(),
        "oldest_lapsed_claim_seconds": lapsed_seconds,
        "oldest_overdue_seconds": overdue_seconds,
        "degraded": lapsed_seconds > settings.B24_INBOX_SWEEP_INTERVAL + settings.B24_INBOX_LEASE
        or overdue_seconds > settings.B24_INBOX_STALL_SECONDS,
    }


class BacklogCollector:
    """The inbox backlog for /metrics, read from the database at each scrape: the database is its truth,
    shared by every process, so no process keeps a copy that could drift."""

    def collect(self):
        try:
            figures = backlog()
        except Exception:  # the database is down: the other metrics are still served (and /healthz says why)
            return
        yield GaugeMetricFamily(
            "b24widget_inbox_unfinished", "Inbox events not processed yet.", value=figures["unfinished"]
        )
        yield GaugeMetricFamily(
            "b24widget_inbox_failed", "Inbox events given up on (dead letters; replayable).", value=figures["failed"]
        )
        yield GaugeMetricFamily(
            "b24widget_inbox_oldest_unfinished_seconds",
            "Age of the oldest unprocessed inbox event.",
            value=figures["oldest_unfinished_seconds"],
        )
        yield GaugeMetricFamily(
            "b24widget_inbox_lapsed_claims",
            "Inbox events whose worker's claim ran out (the worker died; the sweeper re-sends them).",
            value=figures["lapsed_claims"],
        )
        yield GaugeMetricFamily(
            "b24widget_inbox_oldest_overdue_seconds",
            "How long the oldest proven inbox event has been due without being applied.",
            value=figures["oldest_overdue_seconds"],
        )


def waiting(member_id: str, event_code: str, *, limit: int) -> list[dict[str, JSON]]:
    """The `data` of the portal's pending events of one code, oldest first (at most `limit`): for a handler
    that answers several waiting events with one request to Bitrix24."""
    rows = (
        InboxItem.objects.filter(member_id=member_id, event=event_code.upper(), state=State.PENDING)
        .order_by("id")
        .values_list("data", flat=True)[:limit]
    )
    return [data for data in rows if isinstance(data, dict)]
