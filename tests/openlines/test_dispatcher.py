"""The hand-off by the worker's dispatcher (inbox/handoff.py, B24_HANDOFF=dispatcher; `auto` on PostgreSQL): the
request stores the row and queues nothing; the table's trigger announces the committed row, and the dispatcher
(the holder of the advisory lock) queues its channel or lane. What no dispatcher heard is queued by the next one's
catch-up when it takes the lock.

The dispatcher here is a thread of this process (as in the worker's main process); the channel's delivery runs
inline in it (OPENLINES_TASKS_INLINE), so a message delivered is a message the dispatcher queued."""

import pytest
from django.db import connection, connections, transaction
from django.test import Client

from inbox import handoff
from inbox.models import InboxItem
from openlines.models import Channel, Delivery, InboundMessage
from sandbox.standin import rest_imconnector as imc
from tests.openlines.conftest import message, signed
from tests.workers import wait_for

pytestmark = [pytest.mark.django_db(transaction=True)]


def postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("the trigger and LISTEN are PostgreSQL's; other databases hand off in the request")


@pytest.fixture
def dispatching(settings):
    postgresql_only()
    settings.B24_HANDOFF = "dispatcher"
    started = []

    def start() -> handoff.Dispatcher:
        dispatcher = handoff.Dispatcher(retry=0.1)
        dispatcher.start()
        started.append(dispatcher)
        return dispatcher

    yield start
    for dispatcher in started:
        dispatcher.stop()


def delivered(row) -> list[str]:
    return sorted(
        InboundMessage.objects.filter(channel=row, state=Delivery.SENT).values_list("external_message_id", flat=True)
    )


def listening() -> "connections":
    """A connection of the test's own that hears the announcements (as the dispatcher does)."""
    listener = connections.create_connection("default")
    listener.ensure_connection()
    listener.set_autocommit(True)
    with listener.connection.cursor() as cursor:
        cursor.execute(f"LISTEN {handoff.NOTIFY_CHANNEL}")
    return listener


def heard(listener, timeout: float = 5.0) -> list[str]:
    import select

    raw = listener.connection
    found: list[str] = []
    if select.select([raw], [], [], timeout)[0]:
        raw.poll()
        found = [n.payload for n in raw.notifies]
        raw.notifies.clear()
    return found


def test_the_request_queues_nothing_when_the_dispatcher_hands_off(channel, settings, django_assert_num_queries):
    """Both databases: with B24_HANDOFF=dispatcher the request's only statement is its INSERT (the channel known);
    no mark is taken and no task runs in the request."""
    row, secret, b24 = channel
    settings.B24_HANDOFF = "dispatcher"
    assert signed(Client(), row, secret, message("m0")).status_code == 202  # (the channel read once)
    with django_assert_num_queries(1):
        assert signed(Client(), row, secret, message("m1")).status_code == 202
    assert Channel.objects.get(pk=row.pk).inbound_queued_at is None
    assert delivered(row) == []
    settings.B24_HANDOFF = "request"
    assert signed(Client(), row, secret, message("m2")).status_code == 202
    assert delivered(row) == ["m0", "m1", "m2"]  # the request's own hand-off: the channel's run takes all three


def test_a_committed_message_and_event_are_announced_and_a_rolled_back_one_is_not(channel, dispatching):
    row, secret, b24 = channel
    listener = listening()
    try:
        with transaction.atomic():
            assert signed(Client(), row, secret, message("m-rolled-back")).status_code == 202
            transaction.set_rollback(True)
        assert signed(Client(), row, secret, message("m1")).status_code == 202
        stored = InboundMessage.objects.get(external_message_id="m1")
        assert heard(listener) == [f"inbound:{row.pk}"]
        assert stored.channel_id == row.pk
        item = InboxItem.objects.create(member_id="x" * 32, event="ONAPPTEST", idempotency_key="k1")
        assert heard(listener) == [f"inbox:{item.pk}"]
        InboxItem.objects.create(member_id="x" * 32, event="ONAPPTEST", idempotency_key="k2", state="done")
        assert heard(listener, timeout=0.5) == []  # only pending rows are announced
    finally:
        listener.close()


def test_the_dispatcher_queues_an_announced_message_and_a_burst_in_few_runs(channel, dispatching):
    row, secret, b24 = channel
    dispatcher = dispatching()
    assert dispatcher.leading.wait(10)
    for n in range(20):
        assert signed(Client(), row, secret, message(f"m{n:02}")).status_code == 202
    wait_for(lambda: len(delivered(row)) == 20, what="the dispatcher to queue the channel", timeout=30)
    assert delivered(row) == [f"m{n:02}" for n in range(20)]
    [conversation] = imc.conversations(b24)
    assert [m["text"] for m in conversation["messages"]] == ["Hello"] * 20  # each message sent once
    assert b24.calls("imconnector.send.messages") < 20  # in batches: a burst is a few runs


def test_one_dispatcher_leads_and_another_takes_over_and_catches_up(channel, dispatching):
    """Two workers' dispatchers: one holds the lock; when it stops, the other takes it, and its catch-up queues
    what was stored while nobody listened (an announcement nobody heard is lost; the row is not)."""
    row, secret, b24 = channel
    first = dispatching()
    assert first.leading.wait(10)
    second = dispatching()
    assert not second.leading.wait(0.5)  # (it waits for the lock)
    first.stop()
    assert signed(Client(), row, secret, message("m-unheard")).status_code == 202
    assert second.leading.wait(10)
    wait_for(lambda: delivered(row) == ["m-unheard"], what="the catch-up to queue the channel", timeout=30)
    assert signed(Client(), row, secret, message("m-heard")).status_code == 202
    wait_for(lambda: delivered(row) == ["m-heard", "m-unheard"], what="the new leader to queue it", timeout=30)


def test_a_lost_listening_connection_is_opened_again(channel, dispatching):
    row, secret, b24 = channel
    dispatcher = dispatching()
    assert dispatcher.leading.wait(10)
    with connection.cursor() as cursor:  # the database ends the dispatcher's session (a restart, a failover)
        cursor.execute(
            # (this test's database only: another test process's dispatcher holds the same key in its own)
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            [handoff.LOCK_KEY & 0xFFFFFFFF],
        )
        assert cursor.rowcount == 1
    wait_for(lambda: not dispatcher.leading.is_set(), what="the dispatcher to notice", timeout=10)
    assert signed(Client(), row, secret, message("m-after")).status_code == 202
    wait_for(lambda: delivered(row) == ["m-after"], what="the dispatcher to listen again", timeout=30)


def test_a_failing_hand_off_is_logged_and_the_dispatcher_goes_on(caplog):
    calls = []

    def broken(keys):
        calls.append(keys)
        raise RuntimeError("boom")

    handoff.register("test-broken", handle=broken, catch_up=lambda: None)
    try:
        assert handoff.dispatch(["test-broken:2", "test-broken:1", "test-broken:2", "nobody:3", "no-separator"]) == 2
    finally:
        handoff._registry.pop("test-broken")
    assert calls == [["1", "2"]]
    assert "hand-off batch failed" in caplog.text and "boom" not in caplog.text


def test_an_event_is_released_by_the_dispatcher_not_the_request(channel, dispatching, settings):
    """`/events/` in dispatcher mode: the request stores the row and sends nothing; the dispatcher releases its
    portal lane (the row marked sent to the broker)."""
    row, secret, b24 = channel
    payload = b24.event_payload(
        "ONIMCONNECTORMESSAGEADD",
        data={
            "CONNECTOR": row.connector_id,
            "LINE": row.line_id,
            "MESSAGES": [{"im": {"chat_id": "7", "message_id": "1"}}],
        },
    )
    answer = Client().post("/events/", payload)
    assert answer.status_code == 200, answer.content
    item = InboxItem.objects.get(pk=answer.json()["id"])
    assert item.enqueued_at is None  # the request sent nothing
    dispatcher = dispatching()
    assert dispatcher.leading.wait(10)  # (its catch-up releases what was stored before it listened)
    wait_for(lambda: InboxItem.objects.get(pk=item.pk).enqueued_at is not None, what="the lane released", timeout=30)
    InboxItem.objects.filter(pk=item.pk).update(state=InboxItem.State.DONE)  # as a worker would have
    second = Client().post(
        "/events/", b24.event_payload("ONIMCONNECTORMESSAGEADD", data={"CONNECTOR": row.connector_id, "LINE": "2"})
    )
    assert second.status_code == 200 and second.json()["id"] != item.pk, second.content
    wait_for(
        lambda: InboxItem.objects.get(pk=second.json()["id"]).enqueued_at is not None,
        what="the dispatcher to release the second event",
        timeout=30,
    )


def test_healthz_says_degraded_while_no_dispatcher_listens(client, dispatching):
    answer = client.get("/healthz")
    assert answer.json()["checks"]["handoff"] == "degraded: no dispatcher listens"
    assert answer.json()["status"] == "degraded" and answer.status_code == 200  # (degraded, still serving)
    dispatcher = dispatching()
    assert dispatcher.leading.wait(10)
    assert client.get("/healthz").json()["checks"]["handoff"] == "ok"
