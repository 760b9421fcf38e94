"""The broker down while the outside system writes (issue 23): a customer's message is stored and answered 202,
its delivery task cannot be sent, the channel's mark is given back, and the sweep sends it once the broker is back.
The broker is a port of this test's own that refuses every connection (bound, never listening); the machine's
RabbitMQ is not touched."""

import socket

import pytest

from tests.frozen_broker import celery_pointed_at
from tests.openlines.conftest import kept_for_the_sweep

pytestmark = pytest.mark.django_db


@pytest.fixture
def refusing_broker(monkeypatch):
    """CELERY_BROKER_URL at a port bound here and never listened on: every connection to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        with celery_pointed_at(f"amqp://guest:guest@127.0.0.1:{sock.getsockname()[1]}//", None, monkeypatch):
            yield
    finally:
        sock.close()


def test_a_customer_message_accepted_while_the_broker_is_down_is_sent_by_the_sweep(
    client, channel, settings, refusing_broker, django_capture_on_commit_callbacks
):
    kept_for_the_sweep(client, channel, settings, django_capture_on_commit_callbacks, "m-down")
