"""The embedded broker (b24widget/broker.py): a consumer sees whole messages or none."""

import json
import os
import threading
import uuid

import pytest
from django.conf import settings
from kombu import Connection

from b24widget.celery import app


def test_the_embedded_broker_is_the_whole_message_transport():
    if not settings.CELERY_BROKER_URL.startswith("filesystem:"):
        assert app.conf.broker_transport is None  # RabbitMQ or Redis: kombu's own transports
        return
    with app.connection_for_write() as connection:
        assert type(connection.transport).__module__ == "b24widget.broker"


def test_a_consumer_never_reads_a_message_being_written(tmp_path):
    """Large messages written while a reader takes every file that looks like a message, as a worker does:
    every file it finds decodes, and every message arrives once."""
    options = {"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path)}
    payload = {"body": "x" * 4_000_000}  # big enough that writing it takes a while
    count = 20
    seen, broken, done = [], [], threading.Event()

    def read():
        while not done.is_set() or any(n.endswith(".q.msg") for n in os.listdir(tmp_path)):
            for name in sorted(os.listdir(tmp_path)):
                if name.partition(".")[2] != "q.msg":  # what kombu's consumer takes (filesystem.Channel._get)
                    continue
                try:
                    data = (tmp_path / name).read_bytes()
                    (tmp_path / name).unlink()
                except FileNotFoundError:
                    continue
                try:
                    seen.append(len(json.loads(data)["body"]))
                except ValueError:
                    broken.append(len(data))

    reader = threading.Thread(target=read)
    reader.start()
    with Connection("filesystem://", transport="b24widget.broker:Transport", transport_options=options) as conn:
        channel = conn.default_channel
        for _ in range(count):
            channel._put("q", payload)
    done.set()
    reader.join(60)
    assert broken == []
    assert seen == [len(payload["body"])] * count
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".part")]  # nothing half-written left behind


@pytest.fixture
def relay_queue(tmp_path):
    """A queue `relay` on the embedded broker, its folder tmp_path."""
    with Connection(
        "filesystem://",
        transport="b24widget.broker:Transport",
        transport_options={"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path)},
    ) as connection:
        queue = connection.SimpleQueue("relay")
        yield queue
        queue.close()


def test_a_message_being_written_is_not_taken_and_a_whole_one_is(tmp_path, relay_queue):
    # Another process is half-way through writing a message (kombu's own writer would have named it
    # `<time>_<id>.relay.msg` from the start, and a reader would take it cut short).
    writing = tmp_path / ".1_other.relay.msg.part"
    writing.write_bytes(b'{"body": "cut sh')
    relay_queue.put({"n": 1})
    assert relay_queue.get(timeout=2).payload == {"n": 1}
    with pytest.raises(relay_queue.Empty):
        relay_queue.get(timeout=0.3)
    assert writing.exists()  # left for its writer to finish
    assert [p.name for p in tmp_path.glob("*.part")] == [writing.name]  # ours was renamed into place


def test_messages_are_taken_in_the_order_they_were_put_whatever_the_clock_reads():
    """kombu named a message by its monotonic milliseconds, unpadded: once the count gained a digit (16 min 40 s
    after boot), sorted names put every new message before the older ones, and a channel's task queued before a
    burst's next batches ran after all of them. The names sort as the times they were put."""
    from b24widget.broker import message_name

    times = [999_999_000_000, 1_000_000_001_000_000, 10**19 - 1, 5, 1_700_000_000_000_000_000]
    names = [message_name("relay", t) for t in times]
    assert sorted(names) == [names[i] for i in sorted(range(len(times)), key=times.__getitem__)]
    assert all(n.partition(".")[2] == "relay.msg" for n in names)  # what kombu's consumer takes
    # What an older release left in the folder (kombu's monotonic milliseconds) goes before anything new.
    left = [f"{ms}_{uuid.uuid4()}.relay.msg" for ms in (5, 999_998, 1_000_003)]
    assert all(old < new for old in left for new in names)


def test_a_queue_gives_its_messages_back_in_the_order_they_were_put(relay_queue):
    for n in range(30):
        relay_queue.put({"n": n})
    assert [relay_queue.get(timeout=2).payload["n"] for _ in range(30)] == list(range(30))
