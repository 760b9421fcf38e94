"""A worker whose broker went away tries again soon (bench/RESULTS.md, "broker and database stops"): the worker's
consumer (CELERY_WORKER_CONSUMER) reconnects after 1 s, then 2 s ... at most 5 s, not kombu's 2, 4, 6 ... 30 s,
which brought a worker back up to 10 s after a 27 s RabbitMQ stop. The broker is a port of this test's own that
refuses every connection (bound, never listening); the machine's RabbitMQ is not touched."""

import logging
import socket

import pytest
from celery import Celery
from kombu import Connection
from kombu.utils.imports import symbol_by_name

from b24widget.celery import Consumer, app

pytestmark = pytest.mark.slow  # one real second between the two attempts


@pytest.fixture
def refused_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"amqp://guest:guest@127.0.0.1:{sock.getsockname()[1]}//"
    finally:
        sock.close()


def test_the_workers_consumer_is_ours():
    assert symbol_by_name(app.conf.worker_consumer) is Consumer


def test_a_lost_broker_is_tried_again_after_a_second(refused_url, caplog):
    own = Celery("reconnect-test", set_as_current=False)
    own.conf.broker_connection_max_retries = 1  # one wait, then the error
    consumer = Consumer.__new__(Consumer)  # only what ensure_connected reads: no worker, no pool
    consumer.app = own
    consumer.first_connection_attempt = False  # a connection lost after it was made
    consumer.broker_connection_retry_attempt = 0
    conn = Connection(refused_url, connect_timeout=2)
    caplog.set_level(logging.ERROR, logger="celery.worker.consumer.consumer")
    try:
        with pytest.raises(Exception):  # noqa: B017 (kombu's OperationalError: the retries ran out)
            consumer.ensure_connected(conn)
    finally:
        conn.release()
    waits = [r.getMessage() for r in caplog.records if "Trying again" in r.getMessage()]
    assert len(waits) == 1, waits
    assert "Trying again in 1.00 second" in waits[0], waits  # kombu's default: 2.00 seconds
    assert "ensure_connection" not in vars(conn)  # the connection's own method again
