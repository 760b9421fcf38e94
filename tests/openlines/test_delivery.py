"""The channel's background delivery under faults: stuck rows do not starve other channels (dead letters,
parked replies), leases and run budgets, a 2xx is delivered whatever its body, order per outside chat, a
4xx refusal is a dead letter, a delivery status Bitrix24 did not take is reported later, once; the channel
admin's counts."""

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from openlines import tasks
from openlines.models import Channel, Delivery, InboundMessage, OutboundMessage
from sandbox.standin import rest_imconnector as imc
from tests.openlines.conftest import act, message, signed

pytestmark = pytest.mark.django_db


def due_now(model=OutboundMessage, **filters):
    """Time passes: every waiting row (or those matching `filters`) is due."""
    model.objects.filter(**filters).update(next_attempt_at=timezone.now() - timedelta(seconds=1))


@pytest.fixture
def chats(client, channel, django_capture_on_commit_callbacks):
    """Two customers wrote (outside chats chat-A and chat-B): (channel row, secret, portal, {chat: im chat id})."""
    row, secret, b24 = channel
    with django_capture_on_commit_callbacks(execute=True):
        for chat in ("chat-A", "chat-B"):
            assert signed(client, row, secret, message(f"hi-{chat}", "Hi", chat=chat)).status_code == 202
    ids = {c["external_chat"]: c["chat_id"] for c in imc.conversations(b24)}
    return row, secret, b24, ids


def reply(client, sink, b24, im_chat_id, text, capture, *, deliver=True):
    """An operator answers in the Open Lines chat; the event reaches the app (and, with `deliver`, the
    delivery task it queues runs)."""
    message_id, _ = imc.operator_reply(b24, im_chat_id, text, handlers=[sink.url])
    with capture(execute=deliver):
        sink.relay(client)
    return message_id


def operator_message(b24, message_id):
    return next(m for c in imc.conversations(b24) for m in c["messages"] if m["im_message_id"] == message_id)


def status_calls(b24, *, ok=True):
    return sum(
        1 for r in b24.requests if r["method"] == "imconnector.send.status.delivery" and (r["status"] == 200) == ok
    )


# --- 1. the sweep: rows that can never go stop being due ----------------------------------------------
def stuck_rows(portal, state, count, *, webhook_url=""):
    """Another channel of the portal (line 2) with `count` waiting rows each way that can never go."""
    other = Channel.objects.create(
        portal=portal, connector_id="b24widget_http", line_id="2", state=state, webhook_url=webhook_url
    )
    InboundMessage.objects.bulk_create(
        InboundMessage(channel=other, key=f"add:s{i}", external_chat_id="c", external_message_id=f"s{i}", payload={})
        for i in range(count)
    )
    OutboundMessage.objects.bulk_create(
        OutboundMessage(
            channel=other,
            key=f"add:{i}",
            im_chat_id="1",
            im_message_id=str(i),
            external_chat_id="c",
            payload={"message": {"id": str(i), "text": "stuck"}},
        )
        for i in range(count)
    )
    return other


@pytest.mark.parametrize(
    "state, why", [(Channel.State.DISCONNECTED, "disconnected"), (Channel.State.REVOKED, "revoked")]
)
def test_rows_of_a_gone_channel_become_dead_letters_and_starve_no_other_channel(
    client, chats, receiver, sink, state, why, django_capture_on_commit_callbacks
):
    row, secret, b24, ids = chats
    other = stuck_rows(row.portal, state, tasks.SWEEP_CHANNELS + 1)
    # This channel's own rows come later (higher ids): a customer's message and an operator's reply, both
    # waiting for the sweep (the worker that would have sent them at once was lost).
    with django_capture_on_commit_callbacks(execute=False):
        assert signed(client, row, secret, message("m2", "anyone there?", chat="chat-A")).status_code == 202
    reply(client, sink, b24, ids["chat-A"], "Yes, here", django_capture_on_commit_callbacks, deliver=False)
    assert receiver.texts() == []
    tasks.sweep()
    assert receiver.texts() == ["Yes, here"]
    assert InboundMessage.objects.get(channel=row, external_message_id="m2").state == Delivery.SENT
    assert "anyone there?" in [m["text"] for c in imc.conversations(b24) for m in c["messages"]]
    for model in (InboundMessage, OutboundMessage):
        stuck = model.objects.filter(channel=other)
        assert set(stuck.values_list("state", flat=True)) == {Delivery.DEAD}
        assert why in stuck.first().last_error and "replay" in stuck.first().last_error
    assert tasks.sweep().startswith("queued 0 inbound, 0 outbound")  # nothing left due


def test_replies_on_a_line_without_a_webhook_are_parked_and_starve_no_other_channel(
    client, chats, receiver, sink, django_capture_on_commit_callbacks
):
    row, secret, b24, ids = chats
    other = stuck_rows(row.portal, Channel.State.CONNECTED, tasks.SWEEP_CHANNELS + 1)
    InboundMessage.objects.filter(channel=other).update(state=Delivery.SENT)
    reply(client, sink, b24, ids["chat-B"], "On my way", django_capture_on_commit_callbacks, deliver=False)
    tasks.sweep()
    assert receiver.texts() == ["On my way"]
    assert set(other.outbound.values_list("state", flat=True)) == {Delivery.PARKED}
    assert tasks.sweep().startswith("queued 0 inbound, 0 outbound")


def test_parked_replies_go_in_order_once_a_webhook_url_is_saved(
    client, frame, installed, receiver, sink, django_capture_on_commit_callbacks
):
    """A line connected from the Contact Center overview has no webhook URL: replies wait (not due, no
    retries counted) and go as soon as an administrator saves one."""
    portal, b24 = installed
    answer = act(frame, b24, "connect", name="Site chat")
    assert answer.status_code == 200, answer.content
    row, secret = Channel.objects.get(), answer.json()["secret"]
    assert row.webhook_url == ""
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m1", "Hi")).status_code == 202
    chat_id = imc.conversations(b24)[0]["chat_id"]
    for text in ("one", "two"):
        reply(client, sink, b24, chat_id, text, django_capture_on_commit_callbacks)
    waiting = OutboundMessage.objects.order_by("id")
    assert [(r.state, r.attempts) for r in waiting] == [(Delivery.PARKED, 0)] * 2
    assert tasks.sweep().startswith("queued 0 inbound, 0 outbound")
    with django_capture_on_commit_callbacks(execute=True):
        saved = act(frame, b24, "save", webhook_url=receiver.url)
    assert saved.status_code == 200 and saved.json()["result"] == "saved"
    assert receiver.texts() == ["one", "two"]
    assert set(OutboundMessage.objects.values_list("state", flat=True)) == {Delivery.SENT}
    assert all(operator_message(b24, int(r.im_message_id))["delivered"] for r in waiting)


def test_parked_replies_become_dead_letters_after_the_retry_window(
    client, frame, installed, sink, settings, django_capture_on_commit_callbacks
):
    portal, b24 = installed
    answer = act(frame, b24, "connect")
    row, secret = Channel.objects.get(), answer.json()["secret"]
    with django_capture_on_commit_callbacks(execute=True):
        signed(client, row, secret, message("m1", "Hi"))
    reply(client, sink, b24, imc.conversations(b24)[0]["chat_id"], "late", django_capture_on_commit_callbacks)
    parked = OutboundMessage.objects.get()
    assert parked.state == Delivery.PARKED
    tasks.sweep()
    assert OutboundMessage.objects.get().state == Delivery.PARKED  # within the window it waits
    OutboundMessage.objects.update(created_at=timezone.now() - timedelta(hours=settings.OPENLINES_RETRY_HOURS + 1))
    tasks.sweep()
    dead = OutboundMessage.objects.get()
    assert dead.state == Delivery.DEAD and "no webhook URL" in dead.last_error


# --- 2. leases and run budgets ---------------------------------------------------------------------------
@pytest.mark.slow  # real time: a POST past its lease
@pytest.mark.django_db(transaction=True)
def test_a_worker_whose_lease_was_taken_over_leaves_the_new_owners_lease_alone(
    client, chats, receiver, sink, settings, django_capture_on_commit_callbacks
):
    """The first worker is stuck in a POST past its lease's end (its heartbeat could not renew it); a second
    worker takes the channel over. The first one's release must not free the channel under the second, and
    it stops where it is."""
    row, secret, b24, ids = chats
    receiver.down = True  # (no transaction to hold the delivery back in this test: the first one fails)
    for text in ("first", "second", "third"):
        reply(client, sink, b24, ids["chat-A"], text, django_capture_on_commit_callbacks)
    receiver.down = False
    due_now()
    settings.OPENLINES_LEASE_SECONDS = 1
    taken = {}

    def take_over(body):
        if not taken:
            # The first worker's lease ran out while it waited here, and another worker took the channel:
            # the lease is the other worker's now (its own owner id and end); the first one's heartbeat finds
            # that at its next beat, and the lease it knows of runs low meanwhile.
            taken["until"] = timezone.now() + timedelta(seconds=30)
            Channel.objects.filter(pk=row.pk).update(outbound_lease_until=taken["until"], outbound_lease_owner="w2")
            time.sleep(0.7)
            connection.close()  # this thread's own connection (the receiver's): none left open at teardown

    receiver.during = take_over
    outcome = tasks.deliver_outbound(row.pk)
    assert "lease lost" in outcome
    assert Channel.objects.get(pk=row.pk).outbound_lease_until == taken["until"]  # still the new owner's
    assert receiver.texts() == ["first"]  # the first worker sent nothing more once it knew
    assert tasks.deliver_outbound(row.pk) == "busy"


@pytest.mark.slow  # real time: spends a 1 s run budget
def test_an_outbound_run_stops_at_its_budget_and_queues_the_rest(
    client, chats, receiver, sink, settings, django_capture_on_commit_callbacks
):
    row, secret, b24, ids = chats
    with django_capture_on_commit_callbacks(execute=False):
        for i in range(8):
            imc.operator_reply(b24, ids["chat-A"], f"reply {i}", handlers=[sink.url])
        sink.relay(client)
    settings.OPENLINES_RUN_SECONDS = 1
    receiver.delay = 0.4
    with django_capture_on_commit_callbacks() as queued:
        started = time.monotonic()
        outcome = tasks.deliver_outbound(row.pk)
        took = time.monotonic() - started
    assert "budget spent" in outcome and took < 2.5
    assert 2 <= len(receiver.got) <= 4 and len(queued) == 1  # the rest is queued again, once
    assert Channel.objects.get(pk=row.pk).outbound_lease_until is None  # released for the next run
    while queued:  # the next runs (as the worker would take them from the queue)
        with django_capture_on_commit_callbacks() as more:
            for callback in queued:
                callback()
        queued = more
    assert receiver.texts() == [f"reply {i}" for i in range(8)]
    assert set(OutboundMessage.objects.values_list("state", flat=True)) == {Delivery.SENT}


@pytest.mark.slow  # real time: spends a 1 s run budget
def test_an_inbound_run_stops_at_its_budget_and_queues_the_rest(
    client, channel, settings, django_capture_on_commit_callbacks
):
    row, secret, b24 = channel
    with django_capture_on_commit_callbacks(execute=False):
        for i in range(3):  # add, update, add, update ...: one call each
            assert signed(client, row, secret, message(f"m{i}", f"text {i}")).status_code == 202
            assert (
                signed(client, row, secret, {**message(f"m{i}", f"text {i}!"), "action": "update"}).status_code == 202
            )
    settings.OPENLINES_RUN_SECONDS = 1
    b24.slow_answer("imconnector.send.messages", chunk=64, pause=0.1, times=10)
    b24.slow_answer("imconnector.update.messages", chunk=64, pause=0.1, times=10)
    with django_capture_on_commit_callbacks() as queued:
        outcome = tasks.deliver_inbound(row.pk)
    assert "budget spent" in outcome and len(queued) == 1
    assert 0 < InboundMessage.objects.filter(state=Delivery.SENT).count() < 6
    while queued:
        with django_capture_on_commit_callbacks() as more:
            for callback in queued:
                callback()
        queued = more
    assert set(InboundMessage.objects.values_list("state", flat=True)) == {Delivery.SENT}
    assert [m["text"] for m in imc.conversations(b24)[0]["messages"]] == [f"text {i}!" for i in range(3)]


# --- 3. a 2xx is delivered, whatever its body does ------------------------------------------------------
@pytest.mark.parametrize(
    "answer",
    [
        pytest.param((200, b'{"ok":"' + b"x" * (8 * 1024 * 1024) + b'"}'), id="8 MB body"),
        pytest.param((202, b'{"accepted": true, "padding": "' + b"x" * 40 + b'"}', {}, 0.05), id="trickling body"),
    ],
)
def test_a_2xx_answer_is_delivered_once_whatever_its_body(
    client, chats, receiver, sink, settings, answer, django_capture_on_commit_callbacks
):
    row, secret, b24, ids = chats
    settings.OPENLINES_WEBHOOK_DEADLINE = 1.0
    receiver.answer = lambda body: answer
    message_id = reply(client, sink, b24, ids["chat-A"], "big answer", django_capture_on_commit_callbacks)
    sent = OutboundMessage.objects.get()
    assert (sent.state, sent.attempts, sent.last_error) == (Delivery.SENT, 1, "")
    assert operator_message(b24, message_id)["delivered"] is not None
    due_now()
    tasks.sweep()
    assert len(receiver.tried) == 1  # never POSTed again


def test_the_outside_systems_id_from_its_answer_is_the_message_id_bitrix24_gets(
    client, chats, receiver, sink, django_capture_on_commit_callbacks
):
    """imconnector-send-status-delivery.md and -reading.md: message.id is an array of the outside system's
    ids; im holds Bitrix24's. The webhook's answer {"message": {"id"}} names it; without one, the id the
    webhook carried is the one the outside system knows the message by."""
    row, secret, b24, ids = chats
    receiver.answer = lambda body: (200, b'{"message": {"id": "ext-42"}}') if body["chat"]["id"] == "chat-A" else None
    named = reply(client, sink, b24, ids["chat-A"], "named", django_capture_on_commit_callbacks)
    unnamed = reply(client, sink, b24, ids["chat-B"], "unnamed", django_capture_on_commit_callbacks)
    assert OutboundMessage.objects.get(im_message_id=str(named)).external_message_id == "ext-42"
    assert (operator_message(b24, named)["delivered_ids"], operator_message(b24, named)["delivered_chat"]) == (
        ["ext-42"],
        "chat-A",
    )
    assert operator_message(b24, unnamed)["delivered_ids"] == [str(unnamed)]
    report = {"action": "read", "chat": {"id": "chat-A"}, "user": {"id": "u-1"}, "message": {"id": str(named)}}
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, report).status_code == 202
    assert operator_message(b24, named)["read_ids"] == ["ext-42"]


# --- 4. order per outside chat; 4xx is final ----------------------------------------------------------
def test_a_failing_chat_holds_back_only_its_own_messages(
    client, chats, receiver, sink, django_capture_on_commit_callbacks
):
    row, secret, b24, ids = chats
    receiver.answer = lambda body: (500, b"{}") if body["chat"]["id"] == "chat-A" else None
    for text, chat in (("A1", "chat-A"), ("B1", "chat-B"), ("A2", "chat-A"), ("B2", "chat-B")):
        reply(client, sink, b24, ids[chat], text, django_capture_on_commit_callbacks)
    assert receiver.texts() == ["B1", "B2"]
    assert [b["message"]["text"] for b in receiver.tried] == ["A1", "B1", "B2"]  # A2 waits behind A1
    a1, a2 = OutboundMessage.objects.filter(external_chat_id="chat-A").order_by("id")
    assert (a1.state, a1.attempts, "HTTP 500" in a1.last_error) == (Delivery.FAILED, 1, True)
    assert a2.state == Delivery.PENDING and a2.attempts == 0
    assert a2.next_attempt_at >= a1.next_attempt_at  # not due before the one it waits for
    assert tasks.sweep().startswith("queued 0 inbound, 0 outbound")
    receiver.answer = None  # chat A's side is back
    due_now(state=Delivery.FAILED)
    tasks.sweep()
    assert receiver.texts() == ["B1", "B2", "A1", "A2"]
    assert set(OutboundMessage.objects.values_list("state", flat=True)) == {Delivery.SENT}


def test_a_4xx_refusal_is_a_dead_letter_at_once_and_holds_nothing_back(
    client, chats, receiver, sink, django_capture_on_commit_callbacks
):
    row, secret, b24, ids = chats
    receiver.answer = lambda body: (400, b'{"error": "unknown chat"}') if body["message"]["text"] == "bad" else None
    reply(client, sink, b24, ids["chat-A"], "bad", django_capture_on_commit_callbacks)
    reply(client, sink, b24, ids["chat-A"], "good", django_capture_on_commit_callbacks)
    bad = OutboundMessage.objects.order_by("id").first()
    assert (bad.state, bad.attempts) == (Delivery.DEAD, 1) and "HTTP 400" in bad.last_error
    assert receiver.texts() == ["good"]
    due_now()
    tasks.sweep()
    assert [b["message"]["text"] for b in receiver.tried] == ["bad", "good"]  # no retry


def test_a_stored_host_that_is_no_dns_name_fails_its_messages_and_not_the_run(
    client, chats, receiver, sink, django_capture_on_commit_callbacks
):
    """A webhook host with a 64-character label (stored by an earlier release, or by hand) made the resolver's
    codec raise and every run of the channel crash, once a minute: now each message records the refusal and
    is retried, the run ends normally, and the messages go once a good address is saved."""
    row, secret, b24, ids = chats
    Channel.objects.filter(pk=row.pk).update(webhook_url=f"http://{'a' * 64}.example.com/hook")
    for text, chat in (("A1", "chat-A"), ("B1", "chat-B")):
        reply(client, sink, b24, ids[chat], text, django_capture_on_commit_callbacks, deliver=False)
    assert tasks.deliver_outbound(row.pk).startswith("delivered 0, refused 0, retry 2")
    for failed in OutboundMessage.objects.all():
        assert (failed.state, failed.attempts, failed.last_error) == (Delivery.FAILED, 1, "not a valid host name")
    Channel.objects.filter(pk=row.pk).update(webhook_url=receiver.url)
    due_now()
    tasks.deliver_outbound(row.pk)
    assert receiver.texts() == ["A1", "B1"]


def test_an_error_of_one_delivery_is_recorded_on_it_and_the_run_goes_on(
    client, chats, receiver, sink, django_capture_on_commit_callbacks
):
    """Whatever fails one delivery (here a payload with a lone surrogate, which an older release could store on
    SQLite; PostgreSQL stores none) is that message's error, retried like any other; the next one goes."""
    if connection.vendor != "sqlite":
        pytest.skip("only SQLite can hold a payload with a lone surrogate")
    row, secret, b24, ids = chats
    for text, chat in (("A1", "chat-A"), ("B1", "chat-B")):
        reply(client, sink, b24, ids[chat], text, django_capture_on_commit_callbacks, deliver=False)
    broken = OutboundMessage.objects.get(external_chat_id="chat-A")
    broken.payload = {**broken.payload, "message": {**broken.payload["message"], "text": "A\ud800"}}
    broken.save(update_fields=["payload"])
    assert tasks.deliver_outbound(row.pk).startswith("delivered 1, refused 0, retry 1")
    broken.refresh_from_db()
    assert (broken.state, broken.attempts, broken.last_error) == (Delivery.FAILED, 1, "failed: UnicodeEncodeError")
    assert receiver.texts() == ["B1"]


@pytest.mark.parametrize(
    "status, headers, at_least", [(408, {}, 30), (429, {"Retry-After": "120"}, 120), (503, {}, 30)]
)
def test_408_429_and_5xx_are_retried_with_backoff(
    client, chats, receiver, sink, status, headers, at_least, django_capture_on_commit_callbacks
):
    row, secret, b24, ids = chats
    receiver.answer = lambda body: (status, b"{}", headers)
    before = timezone.now()
    reply(client, sink, b24, ids["chat-A"], "again", django_capture_on_commit_callbacks)
    failed = OutboundMessage.objects.get()
    assert (failed.state, failed.attempts, f"HTTP {status}" in failed.last_error) == (Delivery.FAILED, 1, True)
    assert failed.next_attempt_at >= before + timedelta(seconds=at_least)
    receiver.answer = None
    due_now()
    tasks.sweep()
    assert receiver.texts() == ["again"]


# --- 5. a delivery status Bitrix24 did not take is reported later, once ---------------------------------
@pytest.mark.parametrize("error, status", [("QUERY_LIMIT_EXCEEDED", 503), ("INTERNAL_SERVER_ERROR", 500)])
def test_a_delivery_status_bitrix24_refused_is_reported_later_without_posting_again(
    client, chats, receiver, sink, settings, error, status, django_capture_on_commit_callbacks
):
    settings.B24_RATE_LIMIT_BURST, settings.B24_RATE_LIMIT_PER_SECOND = 5, 500.0  # quick limit retries
    row, secret, b24, ids = chats
    b24.fail_next("imconnector.send.status.delivery", error, status, times=30)
    before = timezone.now()
    message_id = reply(client, sink, b24, ids["chat-A"], "tick?", django_capture_on_commit_callbacks)
    after = timezone.now()
    sent = OutboundMessage.objects.get()
    assert sent.state == Delivery.SENT and sent.status_reported_at is None and error in sent.last_error
    assert operator_message(b24, message_id)["delivered"] is None and receiver.texts() == ["tick?"]
    if error == "QUERY_LIMIT_EXCEEDED":
        # A limit: the status waits for the bucket (LIMIT_WAIT_MIN with this fast one), not 30 s or more, and
        # is asked once, not again in the worker (the client's 12 limit retries, each at a slowed slot).
        wait = timedelta(seconds=tasks.LIMIT_WAIT_MIN)
        assert before + wait <= sent.next_attempt_at <= after + wait and "limit" in sent.last_error
        assert status_calls(b24, ok=False) == 1
    else:
        assert sent.next_attempt_at >= before + timedelta(seconds=30)
        tasks.sweep()  # not due yet: nothing sent
    assert status_calls(b24) == 0
    b24._failures.clear()  # Bitrix24 takes calls again
    due_now()
    tasks.sweep()
    sent.refresh_from_db()
    assert sent.status_reported_at is not None and sent.last_error == ""
    assert operator_message(b24, message_id)["delivered"] is not None
    due_now()
    tasks.sweep()
    assert status_calls(b24) == 1 and receiver.texts() == ["tick?"] and len(receiver.tried) == 1


def test_a_delivery_status_is_given_up_after_the_retry_window(
    client, chats, receiver, sink, settings, django_capture_on_commit_callbacks
):
    row, secret, b24, ids = chats
    b24.fail_next("imconnector.send.status.delivery", "INTERNAL_SERVER_ERROR", 500, times=30)
    reply(client, sink, b24, ids["chat-A"], "tick?", django_capture_on_commit_callbacks)
    b24._failures.clear()
    OutboundMessage.objects.update(sent_at=timezone.now() - timedelta(hours=settings.OPENLINES_RETRY_HOURS + 1))
    due_now()
    assert tasks.sweep().startswith("queued 0 inbound, 0 outbound")
    assert status_calls(b24) == 0


# --- 6. the channel admin --------------------------------------------------------------------------------
def test_the_channel_admin_counts_with_a_few_queries_and_no_join_of_the_messages(
    admin_client, installed, django_assert_max_num_queries
):
    portal, b24 = installed
    for line in ("1", "2", "3"):
        channel = Channel.objects.create(portal=portal, connector_id="b24widget_http", line_id=line)
        n = int(line) * 10
        InboundMessage.objects.bulk_create(
            InboundMessage(
                channel=channel,
                key=f"add:{i}",
                external_chat_id="c",
                external_message_id=str(i),
                payload={},
                state=Delivery.DEAD if i < 2 else Delivery.SENT,
            )
            for i in range(n)
        )
        OutboundMessage.objects.bulk_create(
            OutboundMessage(
                channel=channel,
                key=f"add:{i}",
                im_chat_id="1",
                im_message_id=str(i),
                external_chat_id="c",
                payload={},
                state=Delivery.FAILED if i < 3 else Delivery.SENT,
            )
            for i in range(n * 2)
        )
    with django_assert_max_num_queries(8) as captured:
        response = admin_client.get("/admin/openlines/channel/?o=-4")  # by the inbound count, most first
    assert response.status_code == 200
    body = response.content.decode()
    for line in ("1", "2", "3"):
        n = int(line) * 10
        assert (
            f'<td class="field-inbound_count">{n}</td><td class="field-outbound_count">{2 * n}</td>'
            f'<td class="field-failures">5</td>' in body
        )
    assert body.index('field-inbound_count">30<') < body.index('field-inbound_count">10<')
    changelist = [q["sql"] for q in captured.captured_queries if "openlines_channel" in q["sql"]]
    assert changelist and not any(
        f'JOIN "openlines_{t}message"' in sql for sql in changelist for t in ("inbound", "outbound")
    )


@pytest.mark.parametrize("model", [InboundMessage, OutboundMessage])
def test_replaying_dead_letters_needs_the_change_permission(installed, model):
    """Staff who may only view the messages do not get the replay action, and posting it changes nothing; the
    change permission (as for the inbox's replay) replays them."""
    from django.contrib.auth.models import Permission, User
    from django.test import Client

    portal, b24 = installed
    stuck_rows(portal, Channel.State.CONNECTED, 2, webhook_url="https://hooks.example.com/b24")
    model.objects.update(state=Delivery.DEAD, last_error="HTTP 400")
    url = f"/admin/openlines/{model._meta.model_name}/"
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename=f"view_{model._meta.model_name}"))
    staff = Client()
    staff.force_login(viewer)
    assert b'value="replay"' not in staff.get(url).content
    staff.post(url, {"action": "replay", "_selected_action": list(model.objects.values_list("pk", flat=True))})
    assert set(model.objects.values_list("state", flat=True)) == {Delivery.DEAD}
    viewer.user_permissions.add(Permission.objects.get(codename=f"change_{model._meta.model_name}"))
    staff.force_login(User.objects.get(pk=viewer.pk))
    assert b'value="replay"' in staff.get(url).content
    staff.post(url, {"action": "replay", "_selected_action": list(model.objects.values_list("pk", flat=True))})
    assert Delivery.DEAD not in set(model.objects.values_list("state", flat=True))
