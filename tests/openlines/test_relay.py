"""The relay at scale: messages per call follow the setting, one pending task per channel and direction,
runs that yield to other channels, short heartbeat-renewed leases, and stalls reported by /healthz."""

from datetime import timedelta

import pytest
from django.utils import timezone

from openlines import tasks
from openlines.models import Channel, Delivery, InboundMessage
from sandbox.standin import rest_imconnector as imc
from tests.openlines.conftest import message, signed

pytestmark = pytest.mark.django_db


def sends(b24, method="imconnector.send.messages"):
    return [r for r in b24.requests if r["method"] == method and r["status"] == 200]


def test_messages_per_send_call_follow_the_setting(client, channel, settings, django_capture_on_commit_callbacks):
    row, secret, b24 = channel
    settings.OPENLINES_SEND_BATCH = 3
    with django_capture_on_commit_callbacks(execute=False):
        for i in range(7):
            assert signed(client, row, secret, message(f"m{i}", f"text {i}")).status_code == 202
    before = len(sends(b24))
    assert tasks.deliver_inbound(row.pk).startswith("sent 7")
    assert len(sends(b24)) - before == 3  # 3 + 3 + 1
    assert [m["text"] for m in imc.conversations(b24)[0]["messages"]] == [f"text {i}" for i in range(7)]
    assert set(InboundMessage.objects.values_list("state", flat=True)) == {Delivery.SENT}


def test_healthz_and_metrics_report_a_conversation_message_that_waits_too_long(
    client, channel, settings, django_capture_on_commit_callbacks
):
    row, secret, b24 = channel
    settings.OPENLINES_STALL_SECONDS = 60
    settings.METRICS_TOKEN = "relay-metrics"
    with django_capture_on_commit_callbacks(execute=False):  # no worker takes it
        assert signed(client, row, secret, message("m1", "stuck")).status_code == 202
    health = client.get("/healthz").json()
    assert health["openlines"]["inbound"]["waiting"] == 1 and not health["openlines"]["degraded"]
    # Two minutes pass without a worker: the message is overdue past the threshold.
    later = timezone.now() - timedelta(minutes=2)
    InboundMessage.objects.update(next_attempt_at=later, received_at=later)
    health = client.get("/healthz").json()
    assert health["status"] == "degraded" and health["openlines"]["degraded"]
    assert health["openlines"]["inbound"]["oldest_overdue_seconds"] >= 119
    assert health["openlines"]["inbound"]["oldest_waiting_seconds"] >= 119
    assert health["openlines"]["outbound"]["waiting"] == 0
    scraped = client.get("/metrics", HTTP_AUTHORIZATION="Bearer relay-metrics").content.decode()
    line = next(
        x
        for x in scraped.splitlines()
        if x.startswith('b24widget_openlines_oldest_overdue_seconds{direction="inbound"}')
    )
    assert float(line.split()[-1]) >= 119
    # A claim whose worker died: its lease ended and nobody released it.
    Channel.objects.filter(pk=row.pk).update(
        inbound_lease_until=timezone.now() - timedelta(seconds=5), inbound_lease_owner="dead"
    )
    assert client.get("/healthz").json()["openlines"]["stalled_claims"] == 1
    # A worker takes the channel over (the lease has ended) and sends the message: healthy again.
    assert tasks.deliver_inbound(row.pk).startswith("sent 1")
    health = client.get("/healthz").json()
    assert health["openlines"]["inbound"]["waiting"] == 0 and health["openlines"]["stalled_claims"] == 0
    assert not health["openlines"]["degraded"]


def test_a_message_waiting_for_its_retry_is_not_overdue(client, channel, settings, django_capture_on_commit_callbacks):
    row, secret, b24 = channel
    settings.OPENLINES_STALL_SECONDS = 60
    b24.fail_next("imconnector.send.messages", "INTERNAL_SERVER_ERROR", 500, times=10)
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m1", "later")).status_code == 202
    InboundMessage.objects.update(received_at=timezone.now() - timedelta(minutes=5))
    relay = client.get("/healthz").json()["openlines"]
    assert relay["inbound"]["waiting"] == 1 and relay["inbound"]["oldest_waiting_seconds"] >= 299
    assert relay["inbound"]["oldest_overdue_seconds"] == 0 and not relay["degraded"]


def test_a_channel_has_one_pending_task_per_direction_and_a_lost_one_is_sent_again(channel, settings):
    """queue_channel's mark: taken when free, refused while a task is pending, taken again once older than
    OPENLINES_REQUEUE_AFTER (the broker lost it); a task for now replaces one waiting for a countdown."""
    settings.OPENLINES_TASKS_INLINE = False  # to the run's own broker queue; nothing consumes it here
    row, _secret, _b24 = channel

    def mark():
        return Channel.objects.values_list("inbound_queued_at", flat=True).get(pk=row.pk)

    assert tasks.queue_channel(tasks.deliver_inbound, row.pk) is True
    first = mark()
    assert first is not None and abs((first - timezone.now()).total_seconds()) < 60
    assert tasks.queue_channel(tasks.deliver_inbound, row.pk) is False and mark() == first
    assert tasks.queue_channel(tasks.deliver_outbound, row.pk) is True  # the other direction is its own
    lost = timezone.now() - timedelta(seconds=settings.OPENLINES_REQUEUE_AFTER + 5)
    Channel.objects.filter(pk=row.pk).update(inbound_queued_at=lost)
    assert tasks.queue_channel(tasks.deliver_inbound, row.pk) is True and mark() > lost
    Channel.objects.filter(pk=row.pk).update(inbound_queued_at=None)
    assert tasks.queue_channel(tasks.deliver_inbound, row.pk, countdown=300) is True
    later = mark()
    assert later > timezone.now() + timedelta(seconds=200)
    assert tasks.queue_channel(tasks.deliver_inbound, row.pk, countdown=300) is False and mark() == later
    assert tasks.queue_channel(tasks.deliver_inbound, row.pk) is True and mark() < later  # now beats later
