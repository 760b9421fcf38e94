"""The relay's retention: messages relayed long ago are deleted, each pass recorded (`MessagePruneRun`).

Sent inbound messages (customers' messages at Bitrix24) and sent outbound ones (operators' replies at the
outside system) go OPENLINES_RETENTION_DAYS after they were received or written, as do waiting replies that
were settled. What is kept: dead letters (an administrator may replay them), and everything still pending,
failed, parked or owing Bitrix24 its delivery status. A row's `key` is what makes a message id (inbound) or a
Bitrix24 message (outbound) count once, so the retention is also the window of that guarantee: it must stay
longer than any repeat can come (Bitrix24's duplicates come within seconds, the offline queue and the
reconciliation look back OPENLINES_RECONCILE_HOURS; an outside system re-sending a month-old message id with
a fresh signature is the case it gives up).
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Model, Q, QuerySet
from django.utils import timezone

from .models import Delivery, InboundMessage, MessagePruneRun, OutboundMessage, WaitingReply

log = logging.getLogger(__name__)


def _delete_in_batches(rows: QuerySet, model: type[Model], batch: int) -> int:
    deleted = 0
    while True:
        ids = list(rows.values_list("pk", flat=True)[:batch])
        if not ids:
            return deleted
        deleted += model._default_manager.filter(pk__in=ids).delete()[0]


def prune(now: datetime | None = None, *, batch: int = 1000) -> MessagePruneRun:
    """Delete what the retention allows, in batches of `batch` rows (each a short statement)."""
    now = now or timezone.now()
    days = settings.OPENLINES_RETENTION_DAYS
    run = MessagePruneRun.objects.create(
        started_at=now,
        before=now - timedelta(days=days),
        reason=f"retention: relayed messages and settled replies after {days} day(s) (OPENLINES_RETENTION_DAYS)",
    )
    inbound = InboundMessage.objects.filter(state=Delivery.SENT, received_at__lt=run.before)
    # A sent reply that still owes Bitrix24 its delivery status stays until the status is given up on.
    outbound = OutboundMessage.objects.filter(state=Delivery.SENT, created_at__lt=run.before).filter(
        Q(status_reported_at__isnull=False) | ~Q(action=OutboundMessage.Action.ADD) | Q(sent_at__lt=run.before)
    )
    waiting = WaitingReply.objects.filter(settled_at__lt=run.before)
    run.inbound_deleted = _delete_in_batches(inbound, InboundMessage, batch)
    run.outbound_deleted = _delete_in_batches(outbound, OutboundMessage, batch)
    run.waiting_deleted = _delete_in_batches(waiting, WaitingReply, batch)
    run.finished_at = timezone.now()
    run.save(update_fields=["inbound_deleted", "outbound_deleted", "waiting_deleted", "finished_at"])
    log.info("relay messages pruned", extra={"deleted": run.deleted, "reason": run.reason})
    return run
