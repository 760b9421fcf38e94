"""The broker down while the outside system writes (issue 23): a customer's message is stored and answered 202,
its delivery task cannot be sent, the channel's mark is given back, and the sweep sends it once the broker is back.
The broker is a port of this test's own that refuses every connection (bound, never listening); the machine's
RabbitMQ is not touched."""

import socket

import pytest

from openlines import tasks
from openlines.models import Channel, Delivery, InboundMessage
from sandbox.standin import rest_imconnector as imc
from tests.openlines.conftest import message, signed

pytestmark = pytest.mark.django_db


@pytest.fixture
def refusing_broker(monkeypatch):
    """CELERY_BROKER_URL at a port bound here and never listened on: every connection to it is refused."""
    from b24widget.celery import app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"amqp://guest:guest@127.0.0.1:{sock.getsockname()[1]}//"
    previous = app.conf.broker_url, app.conf.broker_transport

    def fresh_connections():  # Celery keeps its connections and producer pool once made
        app.close()
        app.amqp._producer_pool = None

    monkeypatch.setenv("CELERY_BROKER_URL", url)  # Celery reads the variable before its own setting
    app.conf.broker_url, app.conf.broker_transport = url, None  # kombu's own amqp transport, as in production
    fresh_connections()
    try:
        yield
    finally:
        monkeypatch.undo()
        app.conf.broker_url, app.conf.broker_transport = previous
        fresh_connections()
        sock.close()


def test_a_customer_message_accepted_while_the_broker_is_down_is_sent_by_the_sweep(
    client, channel, settings, refusing_broker, django_capture_on_commit_callbacks
):
    row, secret, b24 = channel
    settings.OPENLINES_TASKS_INLINE = False  # the request sends its task through the (refusing) broker
    with django_capture_on_commit_callbacks(execute=True):
        answer = signed(client, row, secret, message("m-down", "Anyone there?", chat="chat-down"))
    assert answer.status_code == 202, answer.content  # stored: the broker's refusal is not the customer's
    stored = InboundMessage.objects.get(channel=row, external_message_id="m-down")
    assert stored.state != Delivery.SENT
    assert Channel.objects.get(pk=row.pk).inbound_queued_at is None  # no task waits for it: the sweep's to send

    settings.OPENLINES_TASKS_INLINE = True  # the broker back (tasks run here, as one worker would)
    tasks.sweep()
    stored.refresh_from_db()
    assert stored.state == Delivery.SENT
    texts = [m["text"] for c in imc.conversations(b24) for m in c["messages"]]
    assert texts.count("Anyone there?") == 1
