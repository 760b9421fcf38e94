"""The relay at scale: messages per call follow the setting, one pending task per channel and direction,
runs that yield to other channels, short heartbeat-renewed leases, and stalls reported by /healthz."""

import pytest

from openlines import tasks
from openlines.models import Delivery, InboundMessage
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
