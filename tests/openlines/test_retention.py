"""The relay's retention (openlines/retention.py): what is deleted after OPENLINES_RETENTION_DAYS, what is kept
(dead letters, anything unsent, a reply still owing Bitrix24 its status), and the run the admin shows."""

from datetime import timedelta

import pytest
from django.utils import timezone

from openlines import tasks
from openlines.models import Delivery, InboundMessage, MessagePruneRun, OutboundMessage

pytestmark = pytest.mark.django_db


def _inbound(row, n, state, days_ago):
    return InboundMessage.objects.create(
        channel=row,
        key=f"add:m{n}",
        external_chat_id="c",
        external_message_id=f"m{n}",
        payload={},
        state=state,
        received_at=timezone.now() - timedelta(days=days_ago),
    )


def _outbound(row, n, state, days_ago, *, reported=True):
    at = timezone.now() - timedelta(days=days_ago)
    return OutboundMessage.objects.create(
        channel=row,
        key=f"add:{n}",
        im_chat_id="1",
        im_message_id=str(n),
        external_chat_id="c",
        payload={},
        state=state,
        created_at=at,
        sent_at=at if state == Delivery.SENT else None,
        status_reported_at=at if reported else None,
    )


def test_relayed_messages_go_after_the_retention_and_the_rest_stays(channel, settings, admin_client):
    settings.OPENLINES_RETENTION_DAYS = 30
    row, _secret, _b24 = channel
    old_in, new_in = _inbound(row, 1, Delivery.SENT, 31), _inbound(row, 2, Delivery.SENT, 29)
    dead_in, due_in = _inbound(row, 3, Delivery.DEAD, 40), _inbound(row, 4, Delivery.PENDING, 40)
    old_out, new_out = _outbound(row, 1, Delivery.SENT, 31), _outbound(row, 2, Delivery.SENT, 29)
    dead_out = _outbound(row, 3, Delivery.DEAD, 40)
    owing = _outbound(row, 4, Delivery.SENT, 31, reported=False)
    OutboundMessage.objects.filter(pk=owing.pk).update(sent_at=timezone.now() - timedelta(days=29))

    assert tasks.prune() == 2
    assert set(InboundMessage.objects.values_list("pk", flat=True)) == {new_in.pk, dead_in.pk, due_in.pk}
    assert set(OutboundMessage.objects.values_list("pk", flat=True)) == {new_out.pk, dead_out.pk, owing.pk}
    assert not InboundMessage.objects.filter(pk=old_in.pk).exists()
    assert not OutboundMessage.objects.filter(pk=old_out.pk).exists()
    run = MessagePruneRun.objects.get()
    assert (run.inbound_deleted, run.outbound_deleted, run.waiting_deleted) == (1, 1, 0)
    assert "OPENLINES_RETENTION_DAYS" in run.reason and run.finished_at is not None

    page = admin_client.get("/admin/openlines/messageprunerun/")
    assert page.status_code == 200 and "OPENLINES_RETENTION_DAYS" in page.content.decode()
    assert admin_client.get("/admin/openlines/messageprunerun/add/").status_code == 403
