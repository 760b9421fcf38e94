"""Passes that make sure every operator message reaches the outside system, whatever happened to its event.

`reconcile` (beat, every OPENLINES_RECONCILE_INTERVAL): for each connected line, the conversations with
activity in the last OPENLINES_RECONCILE_HOURS (at most CHATS_PER_CHANNEL, most recent first) are read
with `imopenlines.session.history.get` by CHAT_ID, 50 per `batch` request, through the portal's limiter.
Operator messages that were never relayed, relayed messages whose text or files changed since, and relayed
messages gone from the session they were seen in are relayed exactly as their event would have been
(events.relay: the same confirmation, the same idempotency keys, so an event that comes after all, online or
offline, relays nothing twice). Cost per channel and pass: ceil(chats / 50) requests, plus one history call
per chat with a missed edit or deletion. Longest delay for a missed message in the chat's last session:
one interval plus the pass. Its limits: only the last session of each chat is read (a reply to a session
that was closed and followed by a new one within the interval is found by its event or offline record
only), and a missed message relayed after a later one of its chat was already relayed goes out after it.

`recheck_waiting` (beat, every OPENLINES_WAITING_INTERVAL): messages that wait for someone who may read
their conversation (openlines.waiting) are confirmed again, oldest first per outside chat; a chat stops at its
first message that still waits, so order holds. What the portal now confirms is queued exactly as if its
event had just been handled (events.queue_confirmed); what it no longer shows (deleted meanwhile) is settled
as refused, with the reason kept. Cost: one history call per waiting chat per pass (confirm.py's cache and
batch), paced by the portal's limiter like every call.
"""

import logging
from datetime import datetime, timedelta

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from bitrix24.errors import RestError

from . import confirm, events, tasks, waiting
from .models import Channel, Delivery, InboundMessage, OutboundMessage, WaitingReply

log = logging.getLogger(__name__)

# Channels one pass looks at, and the longest wait between two checks of one message.
CHANNELS_PER_PASS = 200
# Conversations of one channel one reconciliation pass reads (four batch requests at most).
CHATS_PER_CHANNEL = 200
CHECK_EVERY_MAX = timedelta(hours=1)


def recheck_waiting(channel: Channel, *, now=None) -> dict[str, int]:
    """Confirm the channel's due waiting messages again; returns counts (relayed, refused, waiting)."""
    now = now or timezone.now()
    counts = {"relayed": 0, "refused": 0, "waiting": 0}
    if not channel.is_connected or not channel.portal.is_serving:
        return counts
    stopped: set[str] = set()  # outside chats whose oldest message still waits
    rows = list(WaitingReply.objects.filter(channel=channel, state=WaitingReply.State.WAITING).order_by("id"))
    for row in rows:
        if row.external_chat_id in stopped:
            counts["waiting"] += 1
            continue
        if row.next_check_at > now and row.reason != waiting.BEHIND:
            stopped.add(row.external_chat_id)
            counts["waiting"] += 1
            continue
        claim = confirm.Claim(row.im_chat_id, row.im_message_id, row.external_chat_id)
        try:
            confirmed, refused, unread = confirm.confirm(channel, row.action, [claim])
        except RestError as exc:
            _later(row, f"the portal could not be asked: {exc.code}", now)
            stopped.add(row.external_chat_id)
            counts["waiting"] += 1
            continue
        if unread:
            _later(row, unread[0][1], now)
            stopped.add(row.external_chat_id)
            counts["waiting"] += 1
            continue
        with transaction.atomic():
            if confirmed:
                events.queue_confirmed(channel, row.action, confirmed)
                state, reason = WaitingReply.State.RELAYED, ""
            else:
                state, reason = WaitingReply.State.REFUSED, "; ".join(refused)[:255]
            WaitingReply.objects.filter(pk=row.pk).update(state=state, reason=reason, settled_at=now)
        counts["relayed" if confirmed else "refused"] += 1
    if counts["relayed"]:
        tasks.after_commit(tasks.deliver_outbound, channel.pk)
        log.info("waiting operator messages confirmed", extra={"line": channel.line_id, **counts})
    return counts


def _later(row: WaitingReply, reason: str, now) -> None:
    step = min(timedelta(seconds=settings.OPENLINES_WAITING_INTERVAL) * (2 ** min(row.attempts, 6)), CHECK_EVERY_MAX)
    WaitingReply.objects.filter(pk=row.pk).update(
        attempts=row.attempts + 1, reason=reason[:255], next_check_at=now + step
    )


@shared_task(name="openlines.recheck_waiting", ignore_result=True)
def recheck_waiting_pass() -> dict[str, int]:
    """Beat: every connected channel with messages waiting for a reader, up to CHANNELS_PER_PASS of them."""
    totals = {"relayed": 0, "refused": 0, "waiting": 0}
    ids = (
        WaitingReply.objects.filter(state=WaitingReply.State.WAITING, channel__state=Channel.State.CONNECTED)
        .order_by("channel_id")
        .values_list("channel_id", flat=True)
        .distinct()[:CHANNELS_PER_PASS]
    )
    for channel in Channel.objects.select_related("portal").filter(pk__in=list(ids)):
        for key, value in recheck_waiting(channel).items():
            totals[key] += value
    return totals


# --- reconciliation: what no event brought ----------------------------------------------------------------
Action = OutboundMessage.Action


def _recent_chats(channel: Channel, since: datetime) -> dict[str, str]:
    """{Open Lines chat id: outside chat id} of the channel's conversations active since `since`, most recent
    first, at most CHATS_PER_CHANNEL."""
    latest: dict[tuple[str, str], datetime] = {}
    inbound = (
        InboundMessage.objects.filter(channel=channel, state=Delivery.SENT, sent_at__gte=since)
        .exclude(im_chat_id="")
        .values("im_chat_id", "external_chat_id")
        .annotate(at=Max("sent_at"))
    )
    outbound = (
        OutboundMessage.objects.filter(channel=channel, created_at__gte=since)
        .values("im_chat_id", "external_chat_id")
        .annotate(at=Max("created_at"))
    )
    for row in [*inbound, *outbound]:
        key = (row["im_chat_id"], row["external_chat_id"])
        latest[key] = max(latest.get(key, row["at"]), row["at"])
    chats: dict[str, str] = {}
    for (chat, external), _at in sorted(latest.items(), key=lambda kv: kv[1], reverse=True):
        if confirm._ID.fullmatch(chat) and chat not in chats:
            chats[chat] = external
        if len(chats) >= CHATS_PER_CHANNEL:
            break
    return chats


def _files(message: dict) -> list:
    return [f.get("name") for f in message.get("files") or [] if isinstance(f, dict)]


def reconcile(channel: Channel, *, now=None) -> dict[str, int]:
    """Relay what the channel's recent conversations show and no event brought; returns counts per action
    (what was queued or put to wait) and the chats read."""
    now = now or timezone.now()
    counts = {"chats": 0, "add": 0, "update": 0, "delete": 0, "unreadable": 0}
    if not channel.is_connected or not channel.portal.is_serving:
        return counts
    since = now - timedelta(hours=settings.OPENLINES_RECONCILE_HOURS)
    if channel.connected_at and channel.connected_at > since:
        since = channel.connected_at
    chats = _recent_chats(channel, since)
    if not chats:
        return counts
    # No limit waited out in the pass (issue 26): it reads many portals in one worker, and what a limit keeps
    # from it now the next pass reads (a chat refused for a limit counts as unreadable this time).
    histories = confirm.last_sessions(channel, list(chats), limit_retries=0)
    counts["chats"] = len(chats)
    relayed = OutboundMessage.objects.filter(channel=channel, im_chat_id__in=list(chats))
    added = {
        (chat, m): session
        for chat, m, session in relayed.filter(action=Action.ADD).values_list(
            "im_chat_id", "im_message_id", "im_session_id"
        )
    }
    deleted = set(relayed.filter(action=Action.DELETE).values_list("im_chat_id", "im_message_id"))
    last: dict[str, dict] = {}  # message id -> the last relayed add or edit's message
    for message_id, payload in (
        relayed.filter(action__in=[Action.ADD, Action.UPDATE]).order_by("id").values_list("im_message_id", "payload")
    ):
        if isinstance(payload, dict) and isinstance(payload.get("message"), dict):
            last[message_id] = payload["message"]
    waits = set(
        WaitingReply.objects.filter(channel=channel, state=WaitingReply.State.WAITING).values_list(
            "im_chat_id", "im_message_id"
        )
    )
    for chat, external in chats.items():
        history = histories.get(chat)
        if not isinstance(history, dict):
            counts["unreadable"] += 1  # ACCESS_DENIED and the like: the events' own path (and waiting) covers it
            continue
        shown = history["messages"]
        ids = sorted(shown, key=int)
        missed = {
            Action.ADD: [
                m
                for m in ids
                if shown[m]["kind"] == "operator"
                and not shown[m]["deleted"]
                and (chat, m) not in added
                and (chat, m) not in waits
                and events.written_since(shown[m], since)
            ],
            Action.UPDATE: [
                m
                for m in ids
                if (chat, m) in added
                and (chat, m) not in deleted
                and not shown[m]["deleted"]
                and m in last
                and (last[m].get("text") != shown[m]["text"] or _files(last[m]) != _files(shown[m]))
            ],
            Action.DELETE: sorted(
                (
                    m
                    for (c, m), session in added.items()
                    if c == chat
                    and session
                    and session == history["session"]
                    and (c, m) not in deleted
                    and (m not in shown or shown[m]["deleted"])
                ),
                key=int,
            ),
        }
        for action, message_ids in missed.items():
            if not message_ids:
                continue
            claims = [confirm.Claim(chat, m, external) for m in message_ids]
            try:
                done = events.relay(channel, action, claims, catch_up=False, limit_retries=0)
            except RestError as exc:
                log.info("reconciliation could not confirm", extra={"line": channel.line_id, "code": exc.code})
                break
            counts[action] += done.stored + done.held
    if counts["add"] or counts["update"] or counts["delete"]:
        tasks.after_commit(tasks.deliver_outbound, channel.pk)
        log.warning(
            "reconciliation relayed operator messages no event brought",
            extra={"member_id": channel.portal.member_id, "line": channel.line_id, **counts},
        )
    return counts


@shared_task(name="openlines.reconcile", ignore_result=True)
def reconcile_pass() -> dict[str, int]:
    """Beat: every connected channel of a serving portal with recent conversations, most recently active
    first, up to CHANNELS_PER_PASS."""
    totals = {"channels": 0, "chats": 0, "add": 0, "update": 0, "delete": 0, "unreadable": 0}
    since = timezone.now() - timedelta(hours=settings.OPENLINES_RECONCILE_HOURS)
    channels = (
        Channel.objects.select_related("portal")
        .defer("secret")
        .filter(state=Channel.State.CONNECTED, last_activity_at__gte=since)
        .order_by("-last_activity_at")[:CHANNELS_PER_PASS]
    )
    for channel in channels:
        try:
            counts = reconcile(channel)
        except RestError as exc:
            log.info("reconciliation skipped a channel", extra={"line": channel.line_id, "code": exc.code})
            continue
        totals["channels"] += 1
        for key, value in counts.items():
            totals[key] += value
    return totals
