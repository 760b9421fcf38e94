"""The inbox itself (inbox/queue.py): idempotency key, duplicates, retries, dead letters, replay, order.

These are unit tests: they call inbox.process / inbox.process_pending in the test process, as a
worker would (no broker involved). tests/portals/test_worker.py runs the real Celery worker.
"""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from inbox import queue as inbox
from inbox import registry
from inbox.models import InboxItem
from tests.helpers import make_portal

pytestmark = pytest.mark.django_db
State = InboxItem.State
CODE = "ONTESTEVENT"
OTHER = "ONTESTOTHER"


@pytest.fixture
def handler():
    """A registered handler whose behaviour each test scripts: a list of results or exceptions, in turn."""
    calls = []
    script = []

    def run(item):
        calls.append(item.pk)
        step = script.pop(0) if script else "ok"
        if isinstance(step, Exception):
            raise step
        return step

    registry.register(CODE, run)
    registry.register(OTHER, run, ordered=False)
    yield calls, script
    registry._registry.pop(CODE, None)
    registry._registry.pop(OTHER, None)


@pytest.fixture
def portal():
    return make_portal("active", member_id="m-inbox-1", domain="inbox.example.test", application_token="app-token-1")


def accept(portal, *, ts="1700000000", data=None, token="app-token-1", code=CODE, **auth):
    return inbox.accept(
        code,
        member_id=portal.member_id,
        data=data or {"ID": "1"},
        ts=ts,
        event_handler_id="7",
        auth={"member_id": portal.member_id, "application_token": token, **auth},
    )


def key(**overrides):
    fields = {
        "member_id": "m1",
        "ts": "1700000000",
        "data": {"A": "1"},
        "event_handler_id": "3",
        "application_token": "t",
    }
    fields.update(overrides)
    return inbox.idempotency_key(CODE, **fields)


def test_idempotency_key_is_what_a_repeated_delivery_repeats():
    assert (
        key()
        == key()
        == inbox.idempotency_key(
            CODE.lower(), member_id="m1", ts="1700000000", data={"A": "1"}, event_handler_id="3", application_token="t"
        )
    )
    others = {
        key(ts="1700000001"),
        key(data={"A": "2"}),
        key(event_handler_id="4"),
        key(member_id="m2"),
        key(application_token="u"),
        inbox.idempotency_key(
            OTHER, member_id="m1", ts="1700000000", data={"A": "1"}, event_handler_id="3", application_token="t"
        ),
    }
    assert key() not in others and len(others) == 6
    assert key(data={"A": "1", "B": "2"}) == key(data={"B": "2", "A": "1"})  # order of fields is not identity
    assert len(key()) == 64 and all(c in "0123456789abcdef" for c in key())  # a digest, not the material


def test_accept_stores_the_event_and_a_duplicate_is_applied_once(handler, portal):
    calls, _script = handler
    item, created = accept(portal, access_token="first-delivery")
    assert created and item.state == State.PENDING and item.portal_id == portal.pk
    # Delivered again before it was applied: a row of its own (a key is taken only by an applied row) ...
    again, created_again = accept(portal, access_token="second-delivery")  # the delivery's own token differs
    assert created_again and again.pk != item.pk and again.idempotency_key == item.idempotency_key
    assert inbox.process(again.pk).startswith("waiting for")
    inbox.process_pending()
    # ... applied once: the later row ends as a duplicate of the applied one, its handler never run.
    assert calls == [item.pk]
    again.refresh_from_db()
    assert (again.state, again.outcome, again.sealed_auth) == (State.DONE, f"duplicate of #{item.pk}", "")
    # Delivered once more after it was applied: nothing stored, the applied row answers.
    third, created_third = accept(portal, access_token="third-delivery")
    assert not created_third and third.pk == item.pk
    assert InboxItem.objects.count() == 2
    assert accept(portal, ts="1700000005")[1]  # another event


def test_a_rejected_row_never_absorbs_a_later_delivery(handler, portal):
    """Every user of the portal holds its application_token and can predict the rest: a row posted ahead of
    Bitrix24's delivery and rejected must not make the genuine one a duplicate."""
    calls, script = handler
    script.extend([inbox.Reject("not believed"), "applied"])
    forged, _ = accept(portal)
    inbox.process_pending()
    forged.refresh_from_db()
    assert forged.state == State.REJECTED
    genuine, created = accept(portal)
    assert created and genuine.pk != forged.pk
    inbox.process_pending()
    genuine.refresh_from_db()
    assert (genuine.state, genuine.outcome) == (State.DONE, "applied") and calls == [forged.pk, genuine.pk]


def test_lanes_are_part_of_the_keys_namespace():
    assert key() != inbox.idempotency_key(
        CODE,
        member_id="m1",
        ts="1700000000",
        data={"A": "1"},
        event_handler_id="3",
        application_token="t",
        lane="unproven",
    )


def test_cheap_checks_refuse_without_storing(handler, portal):
    with pytest.raises(inbox.Refused) as refused:
        accept(portal, token="wrong")
    assert refused.value.status == 403
    with pytest.raises(inbox.Refused) as unknown:
        inbox.accept(CODE, member_id="nobody", data={}, auth={"application_token": "x"})
    assert unknown.value.status == 404
    with pytest.raises(inbox.Refused) as unregistered:
        accept(portal, code="ONNOTREGISTERED")
    assert unregistered.value.status == 400
    assert InboxItem.objects.count() == 0


def test_auth_is_encrypted_at_rest(handler, portal):
    item, _ = accept(portal, access_token="very-secret-access-token")
    with connection.cursor() as cursor:
        cursor.execute("SELECT sealed_auth FROM portals_inboxitem WHERE id = %s", [item.pk])
        raw = cursor.fetchone()[0]
    assert "very-secret-access-token" not in raw and "app-token-1" not in raw
    assert "very-secret-access-token" not in repr(item) and "very-secret" not in str(item)


def test_a_processed_item_is_done_and_never_runs_again(handler, portal):
    calls, script = handler
    script.append("applied")
    item, _ = accept(portal)
    assert inbox.process(item.pk) == "applied"
    item.refresh_from_db()
    assert (item.state, item.outcome, item.attempts) == (State.DONE, "applied", 1)
    assert inbox.process(item.pk) == "already done"
    assert calls == [item.pk]


def test_retry_schedule_is_exponential_with_jitter_and_bounded(settings):
    settings.B24_INBOX_BACKOFF, settings.B24_INBOX_BACKOFF_MAX = 10, 300
    for attempts, step in ((1, 10), (2, 20), (3, 40), (4, 80), (6, 300), (20, 300)):
        delays = {inbox.backoff(attempts) for _ in range(50)}
        assert all(step / 2 <= d <= step for d in delays), (attempts, delays)
        assert len(delays) > 1  # jittered
    assert inbox.backoff(1, after=120) == 120  # a Retry-After the platform gave is respected


def test_retry_then_dead_letter_then_replay(handler, portal, settings):
    calls, script = handler
    settings.B24_INBOX_MAX_ATTEMPTS = 3
    script.extend(
        [inbox.Retry("oauth unreachable"), inbox.Retry("oauth unreachable"), inbox.Retry("oauth still unreachable")]
    )
    item, _ = accept(portal)
    started = timezone.now()
    inbox.process(item.pk)
    item.refresh_from_db()
    assert (item.state, item.attempts, item.last_error) == (State.PENDING, 1, "oauth unreachable")
    assert item.next_attempt_at >= started + timedelta(seconds=settings.B24_INBOX_BACKOFF / 2)
    assert inbox.process(item.pk) == "not due yet"  # an early task changes nothing
    for _ in range(2):
        InboxItem.objects.filter(pk=item.pk).update(next_attempt_at=timezone.now())
        inbox.process(item.pk)
    item.refresh_from_db()
    assert item.state == State.FAILED and item.attempts == 3
    assert item.last_error == "gave up after 3 attempts: oauth still unreachable"
    assert len(calls) == 3

    assert inbox.replay(InboxItem.objects.filter(pk=item.pk)) == 1
    item.refresh_from_db()
    assert (item.state, item.attempts) == (State.PENDING, 0)
    assert inbox.process(item.pk) == "ok"
    item.refresh_from_db()
    assert item.state == State.DONE and len(calls) == 4
    assert inbox.replay(InboxItem.objects.filter(pk=item.pk)) == 0  # a done item is not replayed


def test_later_counts_no_attempt_waits_as_long_as_it_says_and_never_dead_letters(handler, portal, settings):
    """A handler's Later (a Bitrix24 limit): the row is pending again for about `after` seconds, the attempt its
    claim counted given back, however often it comes (more often than B24_INBOX_MAX_ATTEMPTS here)."""
    calls, script = handler
    settings.B24_INBOX_MAX_ATTEMPTS = 2
    script.extend([inbox.Later("the bucket is full", after=30)] * 4)
    item, _ = accept(portal)
    for _ in range(4):
        before = timezone.now()
        assert inbox.process(item.pk) == "later in 30 s: the bucket is full"
        after = timezone.now()
        item.refresh_from_db()
        assert (item.state, item.attempts) == (State.PENDING, 0) and "the bucket is full" in item.last_error
        assert before + timedelta(seconds=30) <= item.next_attempt_at <= after + timedelta(seconds=30)
        assert inbox.process(item.pk) == "not due yet"
        InboxItem.objects.filter(pk=item.pk).update(next_attempt_at=timezone.now())
    assert inbox.process(item.pk) == "ok"
    item.refresh_from_db()
    assert (item.state, item.attempts) == (State.DONE, 1) and len(calls) == 5


def test_later_between_retries_neither_adds_to_their_count_nor_resets_it(handler, portal, settings):
    calls, script = handler
    settings.B24_INBOX_MAX_ATTEMPTS = 2
    script.extend([inbox.Retry("down"), inbox.Later("limit", after=1), inbox.Later("limit", after=1)])
    script.append(inbox.Retry("still down"))
    item, _ = accept(portal)
    for attempts in (1, 1, 1):
        inbox.process(item.pk)
        item.refresh_from_db()
        assert (item.state, item.attempts) == (State.PENDING, attempts)
        InboxItem.objects.filter(pk=item.pk).update(next_attempt_at=timezone.now())
    inbox.process(item.pk)
    item.refresh_from_db()
    assert (item.state, item.attempts) == (State.FAILED, 2) and len(calls) == 4
    assert item.last_error == "gave up after 2 attempts: still down"


def test_a_short_later_rides_on_a_countdown_task_and_a_long_one_waits_for_the_sweeper(
    handler, portal, published, settings
):
    """As a retry's wait: up to B24_INBOX_MAX_COUNTDOWN a countdown task, past it held in the table (no ETA task
    for minutes), released by the sweeper once due. `after` is kept between 1 s and B24_INBOX_BACKOFF_MAX."""
    _calls, script = handler
    settings.B24_INBOX_MAX_COUNTDOWN, settings.B24_INBOX_BACKOFF_MAX = 60, 3600
    script.extend([inbox.Later("slot soon", after=0), inbox.Later("the method's budget", after=86400)])
    item, _ = accept(portal)
    before = timezone.now()
    assert inbox.process(item.pk) == "later in 1 s: slot soon"  # at least a second
    item.refresh_from_db()
    assert published == [item.pk] and item.enqueued_at is not None
    assert item.next_attempt_at >= before + timedelta(seconds=1)
    InboxItem.objects.filter(pk=item.pk).update(next_attempt_at=timezone.now())
    before = timezone.now()
    assert inbox.process(item.pk) == "later in 3600 s: the method's budget"  # at most B24_INBOX_BACKOFF_MAX
    after = timezone.now()
    item.refresh_from_db()
    assert published == [item.pk] and item.enqueued_at is None and item.attempts == 0
    assert before + timedelta(seconds=3600) <= item.next_attempt_at <= after + timedelta(seconds=3600)
    assert inbox.sweep() == 0  # not due: held
    InboxItem.objects.filter(pk=item.pk).update(next_attempt_at=timezone.now())
    assert inbox.sweep() == 1 and published == [item.pk, item.pk]


def test_an_unexpected_error_is_retried_like_a_transient_one(handler, portal):
    _calls, script = handler
    script.append(ValueError("a bug"))
    item, _ = accept(portal)
    inbox.process(item.pk)
    item.refresh_from_db()
    assert item.state == State.PENDING and item.last_error == "ValueError: a bug"


def test_reject_is_final(handler, portal):
    calls, script = handler
    script.append(inbox.Reject("not believable"))
    item, _ = accept(portal)
    assert inbox.process(item.pk) == "rejected: not believable"
    item.refresh_from_db()
    assert (item.state, item.last_error) == (State.REJECTED, "not believable")
    assert inbox.process(item.pk) == "already rejected" and len(calls) == 1


def test_a_portals_ordered_events_run_oldest_first(handler, portal):
    calls, script = handler
    script.append(inbox.Retry("later"))
    first, _ = accept(portal, ts="1")
    second, _ = accept(portal, ts="2")
    unordered, _ = accept(portal, ts="3", code=OTHER)
    inbox.process(first.pk)  # retried: still unfinished
    assert inbox.process(second.pk) == "waiting for an older event of the portal"
    assert inbox.process(unordered.pk) == "ok"  # not ordered: not held back
    InboxItem.objects.filter(pk=first.pk).update(next_attempt_at=timezone.now())
    assert inbox.process_pending() == 2
    assert calls == [first.pk, unordered.pk, first.pk, second.pk]
    assert set(InboxItem.objects.values_list("state", flat=True)) == {State.DONE}


def test_a_live_claim_keeps_other_workers_out_and_an_expired_one_is_taken_over(handler, portal):
    item, _ = accept(portal)
    InboxItem.objects.filter(pk=item.pk).update(
        state=State.PROCESSING, attempts=1, lease_owner="dead-worker", lease_until=timezone.now() + timedelta(minutes=5)
    )
    assert inbox.process(item.pk) == "being processed by another worker"
    InboxItem.objects.filter(pk=item.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    assert inbox.process(item.pk) == "ok"
    item.refresh_from_db()
    assert (item.state, item.attempts) == (State.DONE, 2)


def test_sweep_resends_what_looks_lost_and_nothing_else(handler, portal, settings):
    settings.B24_INBOX_REQUEUE_AFTER = 60
    long_ago = timezone.now() - timedelta(minutes=5)
    lost, _ = accept(portal, ts="1")
    fresh, _ = accept(portal, ts="2")
    crashed, _ = accept(portal, ts="3")
    waiting, _ = accept(portal, ts="4")
    done, _ = accept(portal, ts="5")
    InboxItem.objects.filter(pk=lost.pk).update(enqueued_at=long_ago)
    InboxItem.objects.filter(pk=crashed.pk).update(state=State.PROCESSING, lease_until=long_ago)
    InboxItem.objects.filter(pk=waiting.pk).update(
        enqueued_at=long_ago, next_attempt_at=timezone.now() + timedelta(hours=1)
    )
    InboxItem.objects.filter(pk=done.pk).update(state=State.DONE, enqueued_at=long_ago)
    assert inbox.sweep() == 2
    assert InboxItem.objects.get(pk=lost.pk).enqueued_at > long_ago
    assert InboxItem.objects.get(pk=fresh.pk).enqueued_at == fresh.enqueued_at  # just sent: left alone
    assert inbox.sweep() == 1  # the crashed one stays "processing" until a worker claims it again


def test_backlog_counts_unfinished_and_dead_letters(handler, portal):
    accept(portal, ts="1")
    failed, _ = accept(portal, ts="2")
    InboxItem.objects.filter(pk=failed.pk).update(state=State.FAILED)
    assert inbox.backlog()["unfinished"] == 1 and inbox.backlog()["failed"] == 1


def test_process_inbox_command_drains_what_is_due(handler, portal):
    import io

    from django.core.management import call_command

    calls, script = handler
    accept(portal, ts="1")
    accept(portal, ts="2")
    out = io.StringIO()
    call_command("process_inbox", stdout=out)
    assert out.getvalue().strip() == "processed=2 unfinished=0 failed=0" and len(calls) == 2


def test_an_event_whose_worker_dies_every_time_becomes_a_dead_letter(handler, portal, settings):
    calls, _script = handler
    settings.B24_INBOX_MAX_ATTEMPTS = 2
    item, _ = accept(portal)
    InboxItem.objects.filter(pk=item.pk).update(
        state=State.PROCESSING, attempts=2, lease_owner="dead", lease_until=timezone.now() - timedelta(seconds=1)
    )
    assert inbox.process(item.pk) == "failed: worker lost in every attempt"
    item.refresh_from_db()
    assert item.state == State.FAILED and "worker was lost" in item.last_error and calls == []


# --- fair dispatch (issue 23) ----------------------------------------------------------------------------


@pytest.fixture
def published():
    """The inbox items whose task went to the broker, in the order they went (Celery's own publish signal)."""
    from celery.signals import before_task_publish

    sent = []

    def record(sender=None, body=None, **kwargs):
        if sender == inbox.PROCESS_TASK:
            args = body[0] if isinstance(body, (list, tuple)) else body.get("args")
            sent.append(args[0])

    before_task_publish.connect(record, weak=False)
    yield sent
    before_task_publish.disconnect(record)


def test_a_portals_backlog_never_delays_another_portals_next_event(
    handler, portal, published, settings, django_capture_on_commit_callbacks
):
    """200 events of portal A (its real application_token, as any of its users holds it), then one of portal
    B: B's goes to the broker at once, ahead of A's backlog, which waits in the table."""
    settings.B24_INBOX_PORTAL_WINDOW = 2
    other = make_portal("active", member_id="m-inbox-2", domain="other.example.test", application_token="app-token-2")
    with django_capture_on_commit_callbacks(execute=True):
        backlog = [accept(portal, ts=str(n), code=OTHER if n % 2 else CODE)[0].pk for n in range(200)]
        theirs, _ = accept(other, token="app-token-2", ts="1")
    assert theirs.pk in published and published.index(theirs.pk) <= settings.B24_INBOX_PORTAL_WINDOW
    assert len(set(published) & set(backlog)) <= settings.B24_INBOX_PORTAL_WINDOW
    held = InboxItem.objects.filter(member_id=portal.member_id, enqueued_at__isnull=True, state=State.PENDING)
    assert held.count() >= 200 - settings.B24_INBOX_PORTAL_WINDOW
    # A worker takes the broker's tasks in turn: B's event runs among the first window + 1, and each task of A
    # that ends releases the next of A's (its ordered ones one at a time, oldest first).
    ran, taken = [], 0
    while taken < len(published) and len(ran) < 12:
        pk = published[taken]
        taken += 1
        if inbox.process(pk) in ("ok",):
            ran.append(pk)
    assert theirs.pk in ran[: settings.B24_INBOX_PORTAL_WINDOW + 1]
    assert len(ran) == 12  # A's backlog drains, released by each finished task
    ordered_ran = [pk for pk in ran if pk in backlog and InboxItem.objects.get(pk=pk).event == CODE]
    assert ordered_ran == sorted(ordered_ran) == [pk for pk in backlog if pk in ordered_ran]
    in_broker = InboxItem.objects.filter(member_id=portal.member_id, state=State.PENDING, enqueued_at__isnull=False)
    assert in_broker.count() <= settings.B24_INBOX_PORTAL_WINDOW  # the rest of A's backlog is held


def test_an_ordered_event_behind_an_unfinished_one_is_sent_when_that_one_ends(
    handler, portal, published, settings, django_capture_on_commit_callbacks, django_assert_num_queries
):
    """After the commit, a stored ordered row with an older unfinished ordered row in its lane costs one lookup
    and sends nothing (it could not run yet); the older row's end sends it (past the chain's budget: here the
    budget is one event, so a task never goes on with the next row itself; tests/inbox/test_chain.py)."""
    settings.B24_INBOX_PORTAL_WINDOW = 4
    settings.B24_INBOX_CHAIN_EVENTS = 1
    with django_capture_on_commit_callbacks(execute=True):
        first, _ = accept(portal, ts="1")
    assert published == [first.pk]
    with django_capture_on_commit_callbacks() as callbacks:
        second, _ = accept(portal, ts="2")
    with django_assert_num_queries(1):
        for callback in callbacks:
            callback()
    assert published == [first.pk]
    assert InboxItem.objects.get(pk=second.pk).enqueued_at is None  # held in the table
    assert inbox.process(first.pk) == "ok"
    assert published == [first.pk, second.pk]
    assert inbox.process(second.pk) == "ok"


def test_an_ordered_event_first_in_its_lane_waits_for_room_in_the_window(
    handler, portal, published, settings, django_capture_on_commit_callbacks
):
    """The lane's first ordered row goes at once when the window has room; when unordered rows fill the window
    it is held, and the first of them to end sends it (the chain off: tests/inbox/test_chain.py)."""
    settings.B24_INBOX_PORTAL_WINDOW = 2
    settings.B24_INBOX_CHAIN_EVENTS = 1
    with django_capture_on_commit_callbacks(execute=True):
        unordered = [accept(portal, ts=str(n), code=OTHER)[0].pk for n in range(2)]
        first, _ = accept(portal, ts="10")
    assert published == unordered  # the window is full: the ordered row waits in the table
    assert InboxItem.objects.get(pk=first.pk).enqueued_at is None
    assert inbox.process(unordered[0]) == "ok"
    assert published == [*unordered, first.pk]
    assert inbox.process(first.pk) == "ok"
    other = make_portal("active", member_id="m-inbox-3", domain="third.example.test", application_token="app-token-3")
    with django_capture_on_commit_callbacks(execute=True):
        theirs, _ = accept(other, token="app-token-3", ts="1")
    assert published[-1] == theirs.pk  # an idle lane: sent at once


def test_the_sweeper_resends_only_what_was_really_lost(handler, portal, published, settings):
    """Rows waiting for an older event of their portal, or held back by the window, are not re-sent; a task the
    broker lost, or a dead worker's claim, is."""
    settings.B24_INBOX_PORTAL_WINDOW = 2
    settings.B24_INBOX_REQUEUE_AFTER = 60
    long_ago = timezone.now() - timedelta(minutes=5)
    rows = [accept(portal, ts=str(n))[0] for n in range(10)]  # ordered: one at a time
    unordered = [accept(portal, ts=str(n), code=OTHER)[0] for n in range(10)]
    assert inbox.sweep() == 2  # nothing was sent (no commit here): the window's worth is released
    assert sorted(published) == [rows[0].pk, unordered[0].pk]
    assert inbox.sweep() == 0  # the rest is held, not lost: nothing is sent again
    InboxItem.objects.filter(pk=rows[0].pk).update(enqueued_at=long_ago)  # the broker lost its task
    InboxItem.objects.filter(pk=unordered[0].pk).update(  # its worker died
        state=State.PROCESSING, lease_until=long_ago, enqueued_at=long_ago
    )
    published.clear()
    assert inbox.sweep() == 2 and sorted(published) == [rows[0].pk, unordered[0].pk]
    # A task of a waiting row that reaches a worker leaves the broker: held, not re-sent by the sweeper.
    assert inbox.process(rows[1].pk) == "waiting for an older event of the portal"
    assert InboxItem.objects.get(pk=rows[1].pk).enqueued_at is None


def test_a_second_delivery_waits_held_until_the_first_is_finished(handler, portal, published, settings):
    """Bitrix24 delivered an unordered event twice: the second is not sent while the first is unfinished (it
    would only come back), then it ends as a duplicate without running the handler."""
    calls, _script = handler
    settings.B24_INBOX_PORTAL_WINDOW = 4
    first, _ = accept(portal, code=OTHER)
    second, created = accept(portal, code=OTHER)
    assert created
    assert inbox.sweep() == 1 and published == [first.pk]
    assert inbox.process(first.pk) == "ok"  # finished: releases the second
    assert published == [first.pk, second.pk]
    assert inbox.process(second.pk) == f"duplicate of #{first.pk}" and calls == [first.pk]


def test_a_portals_budget_bounds_proven_events_with_a_429(handler, portal, settings):
    settings.B24_INBOX_PORTAL_BURST = 3
    settings.B24_INBOX_PORTAL_PER_MINUTE = 1
    for n in range(3):
        assert accept(portal, ts=str(n))[1]
    with pytest.raises(inbox.Refused) as refused:
        accept(portal, ts="4")
    assert refused.value.status == 429 and refused.value.retry_after >= 1
    assert InboxItem.objects.count() == 3


# --- retention ------------------------------------------------------------------------------------------


def test_prune_deletes_finished_rows_past_their_retention_and_records_why(
    handler, portal, settings, admin_client, django_capture_on_commit_callbacks
):
    from inbox.models import PruneRun
    from inbox.tasks import prune_inbox

    settings.B24_INBOX_RETENTION_DAYS = 14
    settings.B24_INBOX_FAILED_RETENTION_DAYS = 0  # dead letters kept until replayed
    old, recent = timezone.now() - timedelta(days=15), timezone.now() - timedelta(days=13)
    rows = {}
    for n, (state, finished) in enumerate(
        [
            ("done", old),
            ("rejected", old),
            ("failed", old),
            ("done", recent),
            ("rejected", recent),
            ("pending", None),
            ("processing", None),
        ]
    ):
        item, _ = accept(portal, ts=str(n))
        InboxItem.objects.filter(pk=item.pk).update(state=state, finished_at=finished, received_at=old)
        rows[(state, finished)] = item.pk
    assert prune_inbox() == 2  # the beat task
    left = set(InboxItem.objects.values_list("pk", flat=True))
    assert left == set(rows.values()) - {rows[("done", old)], rows[("rejected", old)]}
    run = PruneRun.objects.get()
    assert (run.done_deleted, run.rejected_deleted, run.failed_deleted) == (1, 1, 0)
    assert "14 day(s)" in run.reason and "failed kept until replayed" in run.reason and run.finished_at
    # Failed rows go too once their own retention is set; nothing unfinished ever does.
    settings.B24_INBOX_FAILED_RETENTION_DAYS = 14
    second = inbox.prune()
    assert (second.done_deleted, second.rejected_deleted, second.failed_deleted) == (0, 0, 1)
    assert InboxItem.objects.filter(state__in=InboxItem.UNFINISHED).count() == 2
    # The admin shows each run, what it deleted and why; nobody edits one.
    listing = admin_client.get("/admin/inbox/prunerun/").content.decode()
    assert "kept until replayed" in listing and "B24_INBOX_FAILED_RETENTION_DAYS" in listing
    assert admin_client.get("/admin/inbox/prunerun/add/").status_code == 403


@pytest.mark.slow  # the frozen send gives up after a few seconds
@pytest.mark.parametrize("frozen_broker", ["accept"], indirect=True)
def test_a_stored_event_waits_for_one_frozen_send_not_one_per_held_row(
    handler, portal, published, frozen_broker, hang_guard, django_capture_on_commit_callbacks
):
    """Issue 26: while the broker is frozen (tests/frozen_broker.py), an event stored with held rows of its lane
    (their own sends failed) tries one send, not one per row the window has room for: each send to a frozen broker
    waits for its deadline, and a request waits for all it tries. The rows stay held for the sweeper and are each
    processed once when the broker is back."""
    calls, _script = handler
    held = [accept(portal, ts=str(n), code=OTHER)[0].pk for n in range(3)]  # stored, never sent (no commit here)
    with django_capture_on_commit_callbacks(execute=True):  # the request's hand-off: the frozen broker
        stored, _ = accept(portal, ts="3", code=OTHER)
    assert len(published) == 1, published  # one send tried (the oldest held row), not the window's four
    rows = InboxItem.objects.filter(pk__in=[*held, stored.pk])
    assert all(r.state == State.PENDING and r.enqueued_at is None for r in rows)  # held: nothing counts them sent

    with django_capture_on_commit_callbacks(execute=True):  # the broker back: a worker takes them
        inbox.process_pending()
    assert sorted(calls) == sorted([*held, stored.pk])  # each once


def test_the_dispatchers_batch_releases_proven_lanes_before_unproven_ones(settings):
    """inbox/handoff.py's batch for `/events/`' rows (`hand_off`): each announced lane released once, the proven
    ones first, so a batch full of strangers' events holds no proven event back."""
    unproven = [
        InboxItem.objects.create(member_id=f"{n:032x}", event="ONAPPINSTALL", idempotency_key=f"u{n}", lane="unproven")
        for n in range(5)
    ]
    proven = InboxItem.objects.create(member_id="f" * 32, event="ONAPPTEST", idempotency_key="p", lane="proven")
    inbox.hand_off([str(row.pk) for row in unproven] + [str(proven.pk), str(proven.pk), "not-an-id"])
    stamps = dict(InboxItem.objects.values_list("pk", "enqueued_at"))
    assert all(stamps.values())  # every lane released, each row sent once
    assert stamps[proven.pk] <= min(stamps[row.pk] for row in unproven)
