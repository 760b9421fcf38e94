"""A lane's next event runs in the same task (issue 26): the inbox task that finishes an event goes on with its
lane's next ordered event itself, within B24_INBOX_CHAIN_EVENTS / B24_INBOX_CHAIN_SECONDS (inbox/queue.py
`process`).

Observed as a worker shows it, with no code of ours patched: the inbox task runs in this process
(`process_inbox_item.apply`, with the task id a worker would have), each event's log line carries that task id,
and the tasks that went to the broker are recorded by Celery's own publish signal (tests/inbox/test_queue.py's
`published`). tests/portals/test_worker.py runs it on a real worker.
"""

import logging

import pytest

from inbox import queue as inbox
from inbox.models import InboxItem
from inbox.tasks import process_inbox_item
from tests.helpers import make_portal
from tests.inbox import test_queue as base

pytestmark = pytest.mark.django_db
State = InboxItem.State
CODE, OTHER, accept = base.CODE, base.OTHER, base.accept
handler, portal, published = base.handler, base.portal, base.published  # the same fixtures


@pytest.fixture
def processed(caplog):
    """[(inbox id, task id)] of the events processed or finished as duplicates, from their log lines, in order."""
    caplog.set_level(logging.INFO, logger="inbox.queue")

    def read():
        return [
            (record.inbox_id, record.task_id)
            for record in caplog.records
            if record.getMessage() in ("event processed", "event rejected", "duplicate event finished")
        ]

    return read


def run_task(pk, task_id):
    """The inbox's Celery task, run here as a worker runs it (its request carries the task id)."""
    return process_inbox_item.apply(args=(pk,), task_id=task_id).get()


def states(pks):
    return [InboxItem.objects.get(pk=pk).state for pk in pks]


@pytest.fixture
def stored(portal, django_capture_on_commit_callbacks):
    """store(count, **accept options) -> the pks of `count` ordered events of the portal, committed (each one's
    release ran, as after /events/' commit)."""

    def store(count, *, first_ts=0, **options):
        with django_capture_on_commit_callbacks(execute=True):
            return [accept(portal, ts=str(first_ts + n), **options)[0].pk for n in range(count)]

    return store


def test_a_lanes_consecutive_events_run_in_the_task_that_finished_the_first(
    handler, portal, published, stored, processed, settings, django_capture_on_commit_callbacks
):
    calls, _script = handler
    settings.B24_INBOX_CHAIN_SECONDS = 3600  # the count bounds the chain here, not the clock
    rows = stored(10)
    with django_capture_on_commit_callbacks(execute=True):
        unordered, _ = accept(portal, ts="99", code=OTHER)
    assert published == [rows[0], unordered.pk]  # ordered rows go one at a time; the unordered one at once
    assert run_task(rows[0], "task-1") == "ok"
    # One task ran the lane's ten ordered events, oldest first; no task of theirs went to the broker.
    assert calls == rows and states(rows) == [State.DONE] * 10
    assert processed() == [(pk, "task-1") for pk in rows]
    assert published == [rows[0], unordered.pk]
    assert InboxItem.objects.get(pk=unordered.pk).state == State.PENDING  # its own task does it, not the chain
    assert run_task(unordered.pk, "task-2") == "ok" and processed()[-1] == (unordered.pk, "task-2")


def test_the_budget_of_events_ends_a_chain_and_the_next_event_goes_to_the_broker(
    handler, published, stored, processed, settings
):
    calls, _script = handler
    settings.B24_INBOX_CHAIN_EVENTS = 3
    settings.B24_INBOX_CHAIN_SECONDS = 3600
    rows = stored(8)
    assert run_task(rows[0], "task-1") == "ok"
    assert calls == rows[:3] and published == [rows[0], rows[3]]
    assert states(rows[3:]) == [State.PENDING] * 5
    assert InboxItem.objects.get(pk=rows[3]).enqueued_at is not None  # sent, as before the chain
    assert run_task(rows[3], "task-2") == "ok"
    assert run_task(rows[6], "task-3") == "ok"
    assert calls == rows and published == [rows[0], rows[3], rows[6]]
    assert [task for _pk, task in processed()] == ["task-1"] * 3 + ["task-2"] * 3 + ["task-3"] * 2


def test_the_budget_of_time_ends_a_chain(handler, published, stored, processed, settings):
    """B24_INBOX_CHAIN_SECONDS 0: no time is left after the first event, so every event is its own task again."""
    calls, _script = handler
    settings.B24_INBOX_CHAIN_SECONDS = 0
    rows = stored(3)
    for n, pk in enumerate(rows):
        assert run_task(pk, f"task-{n}") == "ok"
        assert published == rows[: n + 2]
    assert calls == rows and processed() == [(pk, f"task-{n}") for n, pk in enumerate(rows)]


def test_another_portals_event_waits_behind_one_budget_of_a_chain_not_the_backlog(
    handler, published, stored, settings, django_capture_on_commit_callbacks
):
    """Portal A has 20 ordered events waiting, portal B one, sent after A's first: a worker taking the broker's
    tasks in turn runs A's first budget's worth, then B's, then the rest of A's (the order, not the time)."""
    calls, _script = handler
    settings.B24_INBOX_CHAIN_EVENTS = 5
    settings.B24_INBOX_CHAIN_SECONDS = 3600
    theirs = stored(20)
    other = make_portal("active", member_id="m-inbox-2", domain="other.example.test", application_token="app-token-2")
    with django_capture_on_commit_callbacks(execute=True):
        ours, _ = accept(other, token="app-token-2", ts="1")
    assert published == [theirs[0], ours.pk]
    taken = 0
    while taken < len(published):  # one worker, the broker first in, first out
        run_task(published[taken], f"task-{taken}")
        taken += 1
    assert calls == [*theirs[:5], ours.pk, *theirs[5:]]
    assert published == [theirs[0], ours.pk, theirs[5], theirs[10], theirs[15]]


def test_a_retry_ends_the_chain_and_a_rejection_does_not(handler, published, stored, processed, settings):
    calls, script = handler
    settings.B24_INBOX_CHAIN_SECONDS = 3600
    script.extend(["ok", inbox.Reject("not believed"), "ok", inbox.Retry("portal busy"), "ok"])
    rows = stored(6)
    assert run_task(rows[0], "task-1") == "ok"
    # The rejected event is final and the chain goes on; the retried one is pending again, on the broker (its
    # countdown task), and the lane's later events wait for it, held: nothing more ran in this task.
    assert calls == rows[:4]
    assert states(rows) == [State.DONE, State.REJECTED, State.DONE, State.PENDING, State.PENDING, State.PENDING]
    assert published == [rows[0], rows[3]]
    assert InboxItem.objects.filter(pk__in=rows[4:], enqueued_at__isnull=True).count() == 2
    assert [task for _pk, task in processed()] == ["task-1"] * 3


def test_a_later_ends_the_chain_counts_no_attempt_and_its_own_task_goes_on(
    handler, published, stored, processed, settings
):
    """A handler's Later (the portal's bucket is full, which the lane's next event would meet too): the chain ends
    there, the row waits on its countdown task with no attempt counted, the lane's later events held behind it;
    its task, once the wait is over, goes on with them."""
    from datetime import timedelta

    from django.utils import timezone

    calls, script = handler
    settings.B24_INBOX_CHAIN_SECONDS = 3600
    script.extend(["ok", inbox.Later("the portal's limit", after=3)])
    rows = stored(4)
    before = timezone.now()
    assert run_task(rows[0], "task-1") == "ok"
    assert calls == rows[:2] and states(rows) == [State.DONE] + [State.PENDING] * 3
    waiting = InboxItem.objects.get(pk=rows[1])
    assert waiting.attempts == 0 and waiting.next_attempt_at >= before + timedelta(seconds=3)
    assert published == [rows[0], rows[1]]  # its countdown task
    assert InboxItem.objects.filter(pk__in=rows[2:], enqueued_at__isnull=True).count() == 2
    assert [task for _pk, task in processed()] == ["task-1"]
    InboxItem.objects.filter(pk=rows[1]).update(next_attempt_at=timezone.now())  # the wait is over
    assert run_task(rows[1], "task-2") == "ok"
    assert calls == [rows[0], rows[1], *rows[1:]] and states(rows) == [State.DONE] * 4
    assert InboxItem.objects.get(pk=rows[1]).attempts == 1
    assert [task for _pk, task in processed()] == ["task-1"] + ["task-2"] * 3
    assert published == [rows[0], rows[1]]


def test_a_dead_letter_ends_the_chain_and_its_lanes_next_event_goes_to_the_broker(handler, published, stored, settings):
    calls, script = handler
    settings.B24_INBOX_CHAIN_SECONDS = 3600
    settings.B24_INBOX_MAX_ATTEMPTS = 1
    script.extend(["ok", RuntimeError("the portal answered nonsense")])
    rows = stored(4)
    assert run_task(rows[0], "task-1") == "ok"
    assert calls == rows[:2] and states(rows[:2]) == [State.DONE, State.FAILED]
    assert published == [rows[0], rows[2]]
    assert run_task(rows[2], "task-2") == "ok" and calls == rows


def test_a_duplicate_in_the_chain_is_finished_as_a_duplicate(handler, portal, published, stored, processed, settings):
    """Bitrix24 delivered the first event twice before it was applied: the chain reaches the second delivery,
    finishes it as a duplicate without running the handler, and goes on."""
    calls, _script = handler
    settings.B24_INBOX_CHAIN_SECONDS = 3600
    first = stored(1, access_token="first-delivery")[0]
    again = stored(1, access_token="second-delivery")[0]  # the same event: a row of its own until one is applied
    later = stored(2, first_ts=1)
    assert InboxItem.objects.get(pk=again).idempotency_key == InboxItem.objects.get(pk=first).idempotency_key
    assert run_task(first, "task-1") == "ok"
    assert calls == [first, *later]
    duplicate = InboxItem.objects.get(pk=again)
    assert (duplicate.state, duplicate.outcome) == (State.DONE, f"duplicate of #{first}")
    assert processed() == [(first, "task-1"), (again, "task-1"), (later[0], "task-1"), (later[1], "task-1")]
    assert published == [first]


def test_a_row_marked_for_a_chain_whose_worker_died_is_sent_again_by_the_sweeper(handler, published, stored, settings):
    """What a worker killed between the mark and the claim leaves: the row pending and marked sent with no task
    anywhere (as a task the broker lost). The sweeper sends it once the mark is B24_INBOX_REQUEUE_AFTER old."""
    from datetime import timedelta

    from django.utils import timezone

    calls, _script = handler
    settings.B24_INBOX_CHAIN_EVENTS = 2
    settings.B24_INBOX_CHAIN_SECONDS = 3600
    settings.B24_INBOX_REQUEUE_AFTER = 60
    rows = stored(3)
    assert run_task(rows[0], "task-1") == "ok" and calls == rows[:2] and published == [rows[0], rows[2]]
    # rows[2]'s task was sent; say instead its chain's worker died right after marking it
    published.clear()
    assert inbox.sweep() == 0  # marked moments ago: not lost yet
    InboxItem.objects.filter(pk=rows[2]).update(enqueued_at=timezone.now() - timedelta(seconds=61))
    assert inbox.sweep() == 1 and published == [rows[2]]
    assert run_task(rows[2], "task-2") == "ok" and calls == rows
