"""Passes that make sure every operator message reaches the outside system, whatever happened to its event.

`recheck_waiting` (beat, every OPENLINES_WAITING_INTERVAL): messages that wait for someone who may read
their conversation (openlines.waiting) are confirmed again, oldest first per outside chat; a chat stops at its
first message that still waits, so order holds. What the portal now confirms is queued exactly as if its
event had just been handled (events.queue_confirmed); what it no longer shows (deleted meanwhile) is settled
as refused, with the reason kept. Cost: one history call per waiting chat per pass (confirm.py's cache and
batch), paced by the portal's limiter like every call.
"""

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from bitrix24.errors import RestError

from . import confirm, events, tasks, waiting
from .models import Channel, WaitingReply

log = logging.getLogger(__name__)

# Channels one pass looks at, and the longest wait between two checks of one message.
CHANNELS_PER_PASS = 200
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
