"""The hand-off of an accepted channel message to its channel's task, under concurrency on PostgreSQL: a run that
starts while a message is being stored reads it, or the message takes the mark the run cleared and queues a run
of its own (no message waits for the sweep); and the mark is taken once when two messages come at once.

Why the mark is a statement of its own, after the INSERT's commit (openlines/tasks.py `queue_channel`): folding it
into the INSERT's statement judges the mark on a snapshot older than the statement's commit, so a run's take
committed in between goes unseen (bench/RESULTS.md, "ingest.py, third pass"). This test fails for that fold.
"""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.test import Client
from django.utils import timezone

from openlines import inbound, tasks
from openlines.models import Channel, InboundMessage
from tests.openlines.conftest import message, signed

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


class Background(threading.Thread):
    """`work()` on a connection of its own; its result in `result`, what it raised in `error`."""

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


def accepted_and_held(row, secret, message_id: str, text: str) -> tuple[Background, threading.Event]:
    """A signed message accepted in a background thread, inside a transaction that stays open (its commit after
    the view answered) until the returned event is set; returns once the view has answered."""
    stored, finish = threading.Event(), threading.Event()

    def accept_and_hold() -> int:
        with transaction.atomic():
            answer = signed(Client(), row, secret, message(message_id, text))
            stored.set()
            finish.wait(30)
        return answer.status_code

    thread = Background(accept_and_hold)
    thread.start()
    assert stored.wait(30)
    return thread, finish


def waiting_on_a_lock_or_done(thread: threading.Thread) -> None:
    """Until `thread` waits on a lock in PostgreSQL or has finished (a bounded poll; no timing is asserted)."""
    for _ in range(1000):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            (waiting,) = cursor.fetchone()
        if waiting or not thread.is_alive():
            return
        time.sleep(0.01)


def test_a_run_starting_while_a_message_is_stored_reads_it_or_the_message_queues_a_run(channel, settings):
    """The run's first step clears the mark (`_Lease.take`), then it reads the channel's messages. Here the message
    is accepted inside a transaction that stays open while the run starts (its commit comes after the take): the
    widest the window can be."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's snapshots and row locks are what this is about")
    row, secret, _b24 = channel
    settings.OPENLINES_TASKS_INLINE = False  # a task sent goes to the run's own queue; none runs here
    pending = timezone.now() - timedelta(seconds=1)
    # A task is pending, and the channel's activity is fresh (written once a minute: this message writes none, so
    # nothing but the hand-off itself touches the channel row).
    Channel.objects.filter(pk=row.pk).update(inbound_queued_at=pending, last_activity_at=timezone.now())
    inbound._activity_noted[row.public_id] = time.monotonic()
    storing, finish = accepted_and_held(row, secret, "m-handoff", "Hello")

    def run_starts() -> list[str]:
        assert tasks._Lease(row.pk, tasks.INBOUND).take()
        return list(InboundMessage.objects.filter(channel=row).values_list("external_message_id", flat=True))

    run = Background(run_starts)
    run.start()
    waiting_on_a_lock_or_done(run)
    finish.set()
    storing.join(30)
    run.join(30)
    assert storing.error is None and run.error is None, (storing.error, run.error)
    assert storing.result == 202
    after = Channel.objects.get(pk=row.pk).inbound_queued_at
    # Either the run read the message, or the message took the mark the run had cleared (a run of its own).
    assert run.result == ["m-handoff"] or (after is not None and after > pending), (run.result, after)


def test_two_messages_accepted_at_once_take_the_channels_mark_once(channel, settings):
    """One accepted inside a transaction still open while the other is accepted and committed: the second takes the
    mark (its task is sent), and the first, committed later, finds it taken and sends nothing."""
    if connection.vendor != "postgresql":
        pytest.skip("two writers at once: SQLite serializes them")
    row, secret, _b24 = channel
    settings.OPENLINES_TASKS_INLINE = False  # a task sent goes to the run's own queue; none runs here
    Channel.objects.filter(pk=row.pk).update(inbound_queued_at=None, last_activity_at=timezone.now())
    inbound._activity_noted[row.public_id] = time.monotonic()  # (this process wrote it: no message writes it now)
    first, finish = accepted_and_held(row, secret, "m-first", "Hello")
    second = Background(lambda: signed(Client(), row, secret, message("m-second", "Hello again")).status_code)
    second.start()
    second.join(30)
    taken = Channel.objects.get(pk=row.pk).inbound_queued_at
    finish.set()
    first.join(30)
    assert first.error is None and second.error is None, (first.error, second.error)
    assert (first.result, second.result) == (202, 202)
    assert taken is not None and Channel.objects.get(pk=row.pk).inbound_queued_at == taken
    assert InboundMessage.objects.filter(channel=row).count() == 2
