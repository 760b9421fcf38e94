"""The broker frozen while the outside system and Bitrix24 write (issue 26): a frozen broker accepts connections
and then answers nothing, where a stopped one refuses them. The request is still answered (202 / 200), its row
is kept for the sweep, and the sweep (here: the inbox processed in this process, as one worker would) delivers
it once. tests/openlines/test_broker_outage.py is the refused connection.

The broker is a socket of this test's own (tests/frozen_broker.py, with the fixtures), in three ways: it never
answers a connection (the TCP connect succeeds, the AMQP handshake gets no answer; or a Redis broker's first
command gets none), or it answers the AMQP handshake and then nothing (the client's channel.open waits: before
B24_BROKER_IO_TIMEOUT the request waited there for ever). The hand-off after the commit runs in this test's thread
(the capture's exit, as it runs in the request in production); a guard fails the test if it has not come back after
two minutes. Nothing here measures time."""

from urllib.parse import urlencode

import pytest

from inbox import queue as inbox
from inbox.models import InboxItem
from sandbox.standin import rest_imconnector as imc
from tests.openlines.conftest import kept_for_the_sweep, message, signed

pytestmark = [pytest.mark.django_db, pytest.mark.slow]  # each frozen send gives up after a few seconds


def test_a_customer_message_accepted_while_the_broker_is_frozen_is_kept_for_the_sweep(
    client, channel, settings, frozen_broker, hang_guard, django_capture_on_commit_callbacks
):
    kept_for_the_sweep(client, channel, settings, django_capture_on_commit_callbacks, "m-frozen")
    assert frozen_broker.accepted  # the send did reach the broker


def test_an_operator_reply_accepted_while_the_broker_is_frozen_is_kept_for_the_sweeper(
    client, channel, receiver, sink, frozen_broker, hang_guard, django_capture_on_commit_callbacks
):
    row, secret, b24 = channel
    with django_capture_on_commit_callbacks(execute=True):  # (tasks inline: no broker yet)
        assert signed(client, row, secret, message("m1", "Hi, I need help")).status_code == 202
    chat_id = imc.conversations(b24)[0]["chat_id"]
    imc.operator_reply(b24, chat_id, "Still there?", handlers=[sink.url])
    [reply] = sink.got

    with django_capture_on_commit_callbacks(execute=True):  # the inbox sends the event's task: the frozen broker
        answer = client.post("/events/", urlencode(reply), content_type="application/x-www-form-urlencoded")
    assert answer.status_code == 200, answer.content
    assert frozen_broker.accepted
    item = InboxItem.objects.get(event="ONIMCONNECTORMESSAGEADD")
    assert item.state == InboxItem.State.PENDING
    assert item.enqueued_at is None  # held in the table: the sweeper's release sends it, nothing counts it sent

    with django_capture_on_commit_callbacks(execute=True):  # the broker back: a worker takes it
        inbox.process_pending()
    item.refresh_from_db()
    assert item.state == InboxItem.State.DONE
    assert receiver.texts() == ["Still there?"]
