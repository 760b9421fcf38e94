"""The hand-off of a stored inbound message to its channel's task (openlines/tasks.py `store_and_queue`), under
concurrency on PostgreSQL: the mark is taken once, and a run that starts while a message is being stored reads
it (or the message takes the mark and queues a run of its own): no message waits for the sweep."""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from openlines import tasks
from openlines.models import Channel, InboundMessage
from tests.helpers import make_portal

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def postgres():
    if connection.vendor != "postgresql":
        pytest.skip("the mark shares the INSERT's statement on PostgreSQL only (SQLite keeps the mark after commit)")


@pytest.fixture
def row(postgres, settings):
    settings.OPENLINES_TASKS_INLINE = False  # a task sent goes to the run's own queue; none runs here
    portal = make_portal("active", member_id="m-handoff", domain="handoff.example.test")
    return Channel.objects.create(portal=portal, connector_id="b24widget_http", line_id="1")


def message(channel: Channel, n: int) -> InboundMessage:
    return InboundMessage(
        channel=channel, action="add", key=f"add:c:{n}", external_chat_id="c", external_message_id=str(n), payload={}
    )


class Held(threading.Thread):
    """Stores a message inside a transaction of its own (another connection) and keeps it open until `release`."""

    def __init__(self, channel: Channel, n: int):
        super().__init__(daemon=True)
        self.channel, self.n = channel, n
        self.stored, self.done = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.returned_at = None

    def run(self) -> None:
        try:
            with transaction.atomic():
                tasks.store_and_queue(message(self.channel, self.n))
                self.returned_at = timezone.now()
                self.stored.set()
                self.done.wait(30)
        except BaseException as exc:  # (reported by the test)
            self.error = exc
            self.stored.set()
        finally:
            connections.close_all()

    def release(self) -> None:
        self.done.set()
        self.join(30)
        assert self.error is None, self.error


class Background(threading.Thread):
    """`work()` on another connection; its result in `result`."""

    def __init__(self, work):
        super().__init__(daemon=True)
        self.work, self.result, self.error = work, None, None

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as exc:  # (reported by the test)
            self.error = exc
        finally:
            connections.close_all()


def waiting_on_a_lock_or_done(thread: threading.Thread) -> None:
    """Until `thread` waits on a row lock in PostgreSQL or has finished (a bounded poll, no timing asserted)."""
    for _ in range(1000):
        with connection.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            (waiting,) = cursor.fetchone()
        if waiting or not thread.is_alive():
            return
        time.sleep(0.01)


def test_two_messages_stored_at_once_take_the_channels_mark_once(row):
    first = Held(row, 1)
    first.start()
    assert first.stored.wait(30)
    mark = Channel.objects.get(pk=row.pk).inbound_queued_at
    assert mark is None  # (the first message's mark is not committed yet)
    second = Background(lambda: tasks.store_and_queue(message(row, 2)))
    second.start()
    waiting_on_a_lock_or_done(second)
    first.release()
    second.join(30)
    assert second.error is None, second.error
    taken = Channel.objects.get(pk=row.pk).inbound_queued_at
    # The first took it; the second (which began later) judged the mark once the first had committed, found it
    # taken and left it as it was.
    assert taken is not None and taken <= first.returned_at
    assert InboundMessage.objects.filter(channel=row).count() == 2
    third = tasks.store_and_queue(message(row, 3))
    assert third.pk and Channel.objects.get(pk=row.pk).inbound_queued_at == taken


def test_a_run_starting_while_a_message_is_stored_reads_it_or_the_message_queues_a_run(row):
    """The run's first step clears the mark (`_Lease.take`), then it reads the channel's messages. A message
    whose statement found the mark taken (a task pending) must be read by that task's run: the statement
    keeps the channel row locked until its commit, so the take waits for it."""
    pending = timezone.now() - timedelta(seconds=1)
    Channel.objects.filter(pk=row.pk).update(inbound_queued_at=pending)  # a task is pending
    storing = Held(row, 1)
    storing.start()
    assert storing.stored.wait(30)

    def run_starts() -> list[str]:
        assert tasks._Lease(row.pk, tasks.INBOUND).take()
        return list(InboundMessage.objects.filter(channel=row).values_list("external_message_id", flat=True))

    run = Background(run_starts)
    run.start()
    waiting_on_a_lock_or_done(run)
    storing.release()
    run.join(30)
    assert run.error is None, run.error
    after = Channel.objects.get(pk=row.pk).inbound_queued_at
    # Either the run read the message, or the message took the mark the run had cleared (a run of its own).
    assert run.result == ["1"] or (after is not None and after > pending), (run.result, after)
