"""Background work: inbound messages to Bitrix24, operator messages to the outside system.

The database is the source of truth (Celery's Django layout): a row is `pending` until delivered, so a
lost task, a crashed worker or a broker outage loses nothing — `sweep` (run by beat every minute) queues
every channel with due rows again. One worker at a time holds a channel's lease per direction, and a
channel's messages go in id order: a message that cannot be delivered yet holds back the ones behind it.
"""
import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from portals import http
from portals.rest import PortalClient, RestError

from . import outbound
from .models import Channel, Delivery, InboundMessage, OutboundMessage

log = logging.getLogger(__name__)

# imconnector.send.messages takes an array; the docs set no maximum. 20 keeps one call short.
SEND_BATCH = 20
LEASE = timedelta(minutes=5)
_PAGE = 200


def after_commit(task, *args) -> None:
    """Queue `task(*args)` once the current transaction commits; a broker failure is left to `sweep`."""
    transaction.on_commit(lambda: enqueue(task, *args))


def enqueue(task, *args) -> None:
    # OPENLINES_TASKS_INLINE (test settings only): run here and now, as the worker would.
    if getattr(settings, "OPENLINES_TASKS_INLINE", False):
        task.apply(args=args)
        return
    try:
        task.apply_async(args=args, ignore_result=True)
    except Exception:  # the broker is down: the rows stay pending and sweep queues them again
        log.warning("could not queue %s; sweep will", task.name)


def enqueue_channel(model, channel_id: int) -> None:
    enqueue(deliver_inbound if model is InboundMessage else deliver_outbound, channel_id)


def backoff(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min ... at most an hour between attempts."""
    return timedelta(seconds=min(30 * 2 ** max(attempts - 1, 0), 3600))


def _take_lease(channel_id: int, field: str) -> bool:
    now = timezone.now()
    free = Q(**{f"{field}__isnull": True}) | Q(**{f"{field}__lt": now})
    return Channel.objects.filter(free, pk=channel_id).update(**{field: now + LEASE}) == 1


def _release(channel_id: int, field: str) -> None:
    Channel.objects.filter(pk=channel_id).update(**{field: None})


def _under_lease(channel_id: int, field: str, deliver) -> str:
    """`deliver(channel)` while this worker holds the channel's lease for one direction; "busy" if another does."""
    if not _take_lease(channel_id, field):
        return "busy"
    try:
        return deliver(Channel.objects.select_related("portal").get(pk=channel_id))
    finally:
        _release(channel_id, field)


def _retry_later(rows, error: str, since: str) -> None:
    """Count a failed attempt on each row and schedule the next (`backoff`); a row whose `since` (when it
    reached us) is more than OPENLINES_RETRY_HOURS ago becomes a dead letter instead."""
    now = timezone.now()
    for row in rows:
        attempts = row.attempts + 1
        dead = now - getattr(row, since) > timedelta(hours=settings.OPENLINES_RETRY_HOURS)
        type(row).objects.filter(pk=row.pk).update(
            attempts=attempts, last_error=error, next_attempt_at=now + backoff(attempts),
            state=Delivery.DEAD if dead else Delivery.FAILED)


# --- inbound: the outside system -> Bitrix24 --------------------------------------------------------
@shared_task(name="openlines.deliver_inbound")
def deliver_inbound(channel_id: int) -> str:
    """Send the channel's due inbound rows, in order, several per call."""
    return _under_lease(channel_id, "inbound_lease_until", _deliver_inbound)


def _deliver_inbound(channel: Channel) -> str:
    if not channel.is_connected or not channel.portal.is_serving:
        return "not connected"  # kept pending: a reconnect sends them (history stays)
    client = PortalClient(channel.portal)
    sent = 0
    while True:
        rows = list(InboundMessage.objects.filter(channel=channel, state__in=[Delivery.PENDING, Delivery.FAILED])
                    .order_by("id")[:SEND_BATCH])
        if not rows:
            return f"sent {sent}"
        if rows[0].next_attempt_at > timezone.now():
            return f"sent {sent}; waiting"
        # One call carries consecutive rows of the same action (add, update, delete), in order.
        group = [rows[0]]
        for row in rows[1:]:
            if row.action != group[0].action:
                break
            group.append(row)
        method = InboundMessage.Action(group[0].action).label
        try:
            result = client.call(method, {"CONNECTOR": channel.connector_id, "LINE": channel.line_id,
                                          "MESSAGES": [row.payload for row in group]})
        except RestError as exc:
            _retry_later(group, f"{exc.code}: {exc.description}"[:255], "received_at")
            log.info("inbound delivery postponed", extra={"member_id": channel.portal.member_id, "code": exc.code})
            return f"sent {sent}; retry ({exc.code})"
        _record_inbound(group, result)
        sent += len(group)


def _record_inbound(rows, result) -> None:
    if rows[0].action == InboundMessage.Action.READ:
        # send-status-reading.md answers SUCCESS with an empty DATA for the whole call.
        ok = isinstance(result, dict) and result.get("SUCCESS") is True
        InboundMessage.objects.filter(pk__in=[r.pk for r in rows]).update(
            state=Delivery.SENT if ok else Delivery.DEAD, sent_at=timezone.now() if ok else None,
            attempts=F("attempts") + 1,
            last_error="" if ok else "Bitrix24 did not confirm the reading status")
        return
    items = (((result or {}).get("DATA") or {}).get("RESULT") or []) if isinstance(result, dict) else []
    now = timezone.now()
    for i, row in enumerate(rows):
        item = items[i] if i < len(items) and isinstance(items[i], dict) else {}
        if item.get("SUCCESS") is True:
            session = item.get("session") if isinstance(item.get("session"), dict) else {}
            InboundMessage.objects.filter(pk=row.pk).update(
                state=Delivery.SENT, sent_at=now, attempts=row.attempts + 1, last_error="",
                im_chat_id=str(session.get("CHAT_ID") or "")[:32], session_id=str(session.get("ID") or "")[:32])
        else:
            # Bitrix24 refused this message itself (its content): retrying will not help; replay after a fix.
            errors = item.get("ERRORS") or ["no result for this message"]
            InboundMessage.objects.filter(pk=row.pk).update(
                state=Delivery.DEAD, attempts=row.attempts + 1, last_error="; ".join(map(str, errors))[:255])


# --- outbound: Bitrix24's operators -> the outside system --------------------------------------------
@shared_task(name="openlines.deliver_outbound")
def deliver_outbound(channel_id: int) -> str:
    """POST the channel's due operator messages to its webhook, in order; report delivery to Bitrix24."""
    return _under_lease(channel_id, "outbound_lease_until", _deliver_outbound)


def _deliver_outbound(channel: Channel) -> str:
    if not channel.is_connected or not channel.webhook_url:
        return "not connected or no webhook"
    delivered = []
    outcome = "done"
    for row in OutboundMessage.objects.filter(channel=channel, state__in=[Delivery.PENDING, Delivery.FAILED]
                                              ).order_by("id")[:_PAGE]:
        if row.next_attempt_at > timezone.now():
            outcome = "waiting"
            break
        try:
            answer = outbound.post(channel.webhook_url, channel.secret, row.payload)
            error = "" if 200 <= answer.status < 300 else f"HTTP {answer.status}"
        except (http.HttpFailure, outbound.BadWebhookUrl) as exc:
            error = str(exc)[:255]
        if error:
            _retry_later([row], error, "created_at")
            outcome = f"retry ({error})"
            break
        OutboundMessage.objects.filter(pk=row.pk).update(state=Delivery.SENT, sent_at=timezone.now(),
                                                         attempts=row.attempts + 1, last_error="")
        if row.action == OutboundMessage.Action.ADD:
            delivered.append(row)
    if delivered:
        _report_delivery(channel, delivered)
    return f"delivered {len(delivered)}; {outcome}"


def _report_delivery(channel: Channel, rows) -> None:
    """imconnector.send.status.delivery for the messages the outside system took (one call for all)."""
    messages = [{"im": {"chat_id": r.im_chat_id, "message_id": r.im_message_id},
                 "message": {"id": [str(r.im_message_id)]}, "chat": {"id": r.external_chat_id}} for r in rows]
    try:
        PortalClient(channel.portal).call("imconnector.send.status.delivery", {
            "CONNECTOR": channel.connector_id, "LINE": channel.line_id, "MESSAGES": messages})
    except RestError as exc:
        # The message reached the customer; only the tick in Bitrix24 is missing. Not retried.
        log.info("delivery status not reported", extra={"member_id": channel.portal.member_id, "code": exc.code})
        return
    OutboundMessage.objects.filter(pk__in=[r.pk for r in rows]).update(status_reported_at=timezone.now())


# --- the sweep -----------------------------------------------------------------------------------------
@shared_task(name="openlines.sweep")
def sweep() -> str:
    """Queue every channel with due rows (beat runs this each minute): nothing waits for a lost task."""
    now = timezone.now()
    due = Q(state__in=[Delivery.PENDING, Delivery.FAILED], next_attempt_at__lte=now)
    inbound = set(InboundMessage.objects.filter(due).values_list("channel_id", flat=True).distinct()[:1000])
    outbound_ = set(OutboundMessage.objects.filter(due).values_list("channel_id", flat=True).distinct()[:1000])
    for channel_id in inbound:
        enqueue(deliver_inbound, channel_id)
    for channel_id in outbound_:
        enqueue(deliver_outbound, channel_id)
    return f"queued {len(inbound)} inbound, {len(outbound_)} outbound"
