"""The embedded broker (b24widget/broker.py): a message a writer has not finished is never taken."""

import pytest
from django.conf import settings
from kombu import Connection

from b24widget.celery import app


def test_a_message_being_written_is_not_taken_and_a_whole_one_is(tmp_path):
    with Connection(
        "filesystem://",
        transport="b24widget.broker:Transport",
        transport_options={"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path)},
    ) as connection:
        queue = connection.SimpleQueue("relay")
        # Another process is half-way through writing a message (kombu's own writer would have named it
        # `<time>_<id>.relay.msg` from the start, and a reader would take it cut short).
        writing = tmp_path / ".1_other.relay.msg.part"
        writing.write_bytes(b'{"body": "cut sh')
        queue.put({"n": 1})
        assert queue.get(timeout=2).payload == {"n": 1}
        with pytest.raises(queue.Empty):
            queue.get(timeout=0.3)
        assert writing.exists()  # left for its writer to finish
        assert [p.name for p in tmp_path.glob("*.part")] == [writing.name]  # ours was renamed into place
        queue.close()


def test_the_app_uses_it_on_the_embedded_broker():
    if not settings.CELERY_BROKER_URL.startswith("filesystem:"):
        pytest.skip("the suite runs on RabbitMQ (CELERY_BROKER_URL); the embedded broker is not in use")
    with app.connection_for_write() as connection:
        assert type(connection.transport).__module__ == "b24widget.broker"
