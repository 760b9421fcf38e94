"""Operator messages that wait for someone who may read their conversation (openlines.models.WaitingReply).

`hold` keeps the claims confirm.py could not confirm for want of a reader; `behind` makes the confirmed
messages of an outside chat that already has a waiting one wait too, so the outside system still gets
each chat's messages in the order the operators wrote them. `openlines.reconcile.recheck_waiting` asks again.
"""

import logging
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from .confirm import Claim, Confirmed
from .models import Channel, WaitingReply

log = logging.getLogger(__name__)

BEHIND = "behind an earlier message of this chat that waits"
# The first re-check comes soon (access may come back at once); then every CHECK_EVERY at most.
FIRST_CHECK = timedelta(seconds=60)


def hold(channel: Channel, action: str, claims: list[tuple[Claim, str]]) -> int:
    """Keep each claim waiting (once per message and action); returns how many are new."""
    made = 0
    for claim, reason in claims:
        try:
            with transaction.atomic():
                WaitingReply.objects.create(
                    channel=channel,
                    action=action,
                    im_chat_id=claim.im_chat_id,
                    im_message_id=claim.im_message_id,
                    external_chat_id=claim.external_chat_id,
                    reason=reason[:255],
                    next_check_at=timezone.now() + FIRST_CHECK,
                )
            made += 1
        except IntegrityError:
            pass  # already waiting (the same event again)
    if made:
        log.warning(
            "operator message(s) wait: nobody the app can ask may read the conversation",
            extra={"member_id": channel.portal.member_id, "line": channel.line_id, "action": action, "count": made},
        )
    return made


def behind(channel: Channel, confirmed: list[Confirmed]) -> tuple[list[Confirmed], list[tuple[Claim, str]]]:
    """(the confirmed messages that may go now, those that must wait behind a waiting one of their chat)."""
    chats = {c.claim.external_chat_id for c in confirmed}
    if not chats:
        return confirmed, []
    blocked = set(
        WaitingReply.objects.filter(
            channel=channel, state=WaitingReply.State.WAITING, external_chat_id__in=chats
        ).values_list("external_chat_id", flat=True)
    )
    go = [c for c in confirmed if c.claim.external_chat_id not in blocked]
    wait = [(c.claim, BEHIND) for c in confirmed if c.claim.external_chat_id in blocked]
    return go, wait


def counts(channels) -> dict[int, int]:
    """{channel id: its waiting messages} for the channels given (ids or rows)."""
    ids = [getattr(c, "pk", c) for c in channels]
    rows = (
        WaitingReply.objects.filter(channel_id__in=ids, state=WaitingReply.State.WAITING)
        .values("channel_id")
        .annotate(n=Count("pk"))
    )
    return {row["channel_id"]: row["n"] for row in rows}


class WaitingCollector:
    """Operator messages waiting for someone who may read their conversation, for /metrics."""

    def collect(self):
        try:
            count = WaitingReply.objects.filter(state=WaitingReply.State.WAITING).count()
        except Exception:  # the database is down: the other metrics are still served
            return
        yield GaugeMetricFamily(
            "b24widget_openlines_waiting_replies",
            "Operator messages waiting for someone who may read their conversation (rights change).",
            value=count,
        )
