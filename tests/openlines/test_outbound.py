"""Operator messages (OnImConnectorMessageAdd/Update/Delete) -> the signed webhook -> delivery status in
Bitrix24; the webhook down for a while -> each reply delivered once, in order; teardown events."""

import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from openlines import events, tasks
from openlines.models import Channel, Delivery, InboundMessage, OutboundMessage
from openlines.outbound import SIGNATURE_HEADER, TIMESTAMP_HEADER, WEBHOOK, sign
from sandbox.standin import rest_imconnector as imc
from tests.openlines.conftest import Item, message, signed

pytestmark = pytest.mark.django_db


@pytest.fixture
def conversation(client, channel, django_capture_on_commit_callbacks):
    """A customer wrote: (channel row, secret, stand-in portal, Open Lines chat id)."""
    row, secret, b24 = channel
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m1", "Hi, I need help")).status_code == 202
    return row, secret, b24, imc.conversations(b24)[0]["chat_id"]


def test_an_operator_reply_is_posted_signed_and_marked_delivered(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    row, secret, b24, chat_id = conversation
    message_id, _ = imc.operator_reply(b24, chat_id, "Hello, how can I help?", handlers=[sink.url])
    with django_capture_on_commit_callbacks(execute=True):
        [outcome] = sink.relay(client)
    assert outcome == "1 message(s) queued for the webhook"
    [hook] = receiver.got
    body = hook["json"]
    assert body["event"] == "message.add" and body["chat"]["id"] == "chat-1"
    assert body["message"]["text"] == "Hello, how can I help?" and body["message"]["id"] == str(message_id)
    # The outside system can check the signature with the channel's secret.
    assert hook["headers"][SIGNATURE_HEADER] == sign(secret, hook["headers"][TIMESTAMP_HEADER], hook["body"], WEBHOOK)
    assert abs(int(hook["headers"][TIMESTAMP_HEADER]) - time.time()) < 300
    # Bitrix24 shows the operator the message as delivered.
    reply = next(m for m in imc.conversations(b24)[0]["messages"] if m["im_message_id"] == message_id)
    assert reply["delivered"] is not None
    assert OutboundMessage.objects.get().status_reported_at is not None


def test_the_same_event_twice_is_posted_once(client, conversation, receiver, sink, django_capture_on_commit_callbacks):
    """Bitrix24 delivers an event twice (the inbox keeps one), and the inbox runs a handler again after a
    crash (the handler stores each operator message once)."""
    from inbox.models import InboxItem

    row, secret, b24, chat_id = conversation
    imc.operator_reply(b24, chat_id, "once", handlers=[sink.url])
    sink.got = sink.got * 2
    with django_capture_on_commit_callbacks(execute=True):
        assert sink.relay(client) == ["1 message(s) queued for the webhook"] * 2
        item = InboxItem.objects.get(event="ONIMCONNECTORMESSAGEADD")
        assert events.on_message_add(item) == "0 message(s) queued for the webhook"
    assert [h["json"]["message"]["text"] for h in receiver.got] == ["once"]


def test_webhook_down_then_back_delivers_each_reply_once_in_order(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    row, secret, b24, chat_id = conversation
    receiver.down = True
    with django_capture_on_commit_callbacks(execute=True):
        for i in range(5):
            imc.operator_reply(b24, chat_id, f"reply {i}", handlers=[sink.url])
            sink.relay(client)
    assert receiver.got == []
    first = OutboundMessage.objects.order_by("id").first()
    assert first.state == Delivery.FAILED and first.attempts == 1 and "503" in first.last_error
    # Time passes, still down: retried with backoff, nothing lost, nothing out of order.
    for _ in range(3):
        OutboundMessage.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))
        tasks.sweep()
    assert receiver.got == [] and OutboundMessage.objects.order_by("id").first().attempts == 4
    receiver.down = False
    OutboundMessage.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    tasks.sweep()
    assert [h["json"]["message"]["text"] for h in receiver.got] == [f"reply {i}" for i in range(5)]
    assert set(OutboundMessage.objects.values_list("state", flat=True)) == {Delivery.SENT}
    tasks.sweep()  # nothing is sent twice
    assert len(receiver.got) == 5


def test_a_webhook_down_for_longer_than_the_retry_window_is_a_dead_letter(
    client, conversation, receiver, sink, settings, django_capture_on_commit_callbacks
):
    row, secret, b24, chat_id = conversation
    receiver.down = True
    with django_capture_on_commit_callbacks(execute=True):
        imc.operator_reply(b24, chat_id, "lost?", handlers=[sink.url])
        sink.relay(client)
    OutboundMessage.objects.update(
        created_at=timezone.now() - timedelta(hours=settings.OPENLINES_RETRY_HOURS + 1),
        next_attempt_at=timezone.now() - timedelta(seconds=1),
    )
    tasks.sweep()
    assert OutboundMessage.objects.get().state == Delivery.DEAD


def _replied(client, conversation, sink, capture, text, *events):
    """The operator replied `text` (relayed to the webhook); then `events` go to the sink too. The message id."""
    row, secret, b24, chat_id = conversation
    with capture(execute=True):
        message_id, _ = imc.operator_reply(b24, chat_id, text, handlers=[sink.url])
        sink.relay(client)
    b24.bindings["events"][:] = [
        {"id": 99, "event": e, "handler": sink.url, "auth_type": "0", "app": b24._standin.client_id} for e in events
    ]
    return message_id


def test_edits_and_deletes_by_the_operator_reach_the_webhook(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    row, secret, b24, chat_id = conversation
    message_id = _replied(
        client,
        conversation,
        sink,
        django_capture_on_commit_callbacks,
        "typo",
        "ONIMCONNECTORMESSAGEUPDATE",
        "ONIMCONNECTORMESSAGEDELETE",
    )
    for change in (
        lambda: imc.operator_edit(b24, chat_id, message_id, "fixed"),
        lambda: imc.operator_delete(b24, chat_id, message_id),
    ):
        change()
        with django_capture_on_commit_callbacks(execute=True):
            sink.relay(client)
    assert [(h["json"]["event"], h["json"]["message"]["text"]) for h in receiver.got] == [
        ("message.add", "typo"),
        ("message.update", "fixed"),
        ("message.delete", ""),
    ]


def test_events_handled_late_relay_what_the_portal_shows_now(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    """The text comes from the portal's history, not from the event: an edit handled after a second edit
    relays the latest text once; an edit handled after the message was deleted relays nothing."""
    row, secret, b24, chat_id = conversation
    message_id = _replied(
        client,
        conversation,
        sink,
        django_capture_on_commit_callbacks,
        "frist",
        "ONIMCONNECTORMESSAGEUPDATE",
        "ONIMCONNECTORMESSAGEDELETE",
    )
    imc.operator_edit(b24, chat_id, message_id, "firts")
    imc.operator_edit(b24, chat_id, message_id, "first")
    with django_capture_on_commit_callbacks(execute=True):
        outcomes = sink.relay(client)
    assert outcomes == ["1 message(s) queued for the webhook", "0 message(s) queued for the webhook"]
    imc.operator_edit(b24, chat_id, message_id, "last")
    imc.operator_delete(b24, chat_id, message_id)
    with django_capture_on_commit_callbacks(execute=True):
        outcomes = sink.relay(client)
    assert outcomes[0].startswith("rejected: not confirmed by the portal") and "not in the conversation" in outcomes[0]
    assert outcomes[1] == "1 message(s) queued for the webhook"
    assert [(h["json"]["event"], h["json"]["message"]["text"]) for h in receiver.got] == [
        ("message.add", "frist"),
        ("message.update", "first"),
        ("message.delete", ""),
    ]


@pytest.mark.slow  # real time: sleeps 1 s
def test_a_second_edit_of_the_same_message_reaches_the_webhook_too(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    row, secret, b24, chat_id = conversation
    message_id = _replied(
        client, conversation, sink, django_capture_on_commit_callbacks, "frist", "ONIMCONNECTORMESSAGEUPDATE"
    )
    outcomes = []
    for n, text in enumerate(("firts", "first", "firts", "first")):  # back and forth: each edit is relayed
        if n == 2:
            time.sleep(1.05)  # a new event `ts` (the inbox takes the same event, ts and data, as one delivery)
        imc.operator_edit(b24, chat_id, message_id, text)
        with django_capture_on_commit_callbacks(execute=True):
            outcomes += sink.relay(client)
    assert outcomes == ["1 message(s) queued for the webhook"] * 4
    assert [h["json"]["message"]["text"] for h in receiver.got] == ["frist", "firts", "first", "firts", "first"]


def test_an_event_for_a_line_we_do_not_serve_is_rejected(conversation, sink):
    row, secret, b24, chat_id = conversation
    item = Item(
        portal=row.portal,
        event="ONIMCONNECTORMESSAGEADD",
        data={"CONNECTOR": "b24widget_http", "LINE": "2", "MESSAGES": []},
    )
    with pytest.raises(Exception) as info:
        events.on_message_add(item)
    assert "no connected channel" in str(info.value)


def test_status_delete_and_line_delete_revoke_the_channel(client, conversation, sink):
    row, secret, b24, chat_id = conversation
    b24.bindings["events"][:] = [
        {"id": 98, "event": e, "handler": sink.url, "auth_type": "0", "app": b24._standin.client_id}
        for e in ("ONIMCONNECTORSTATUSDELETE", "ONIMCONNECTORLINEDELETE")
    ]
    imc.remove_connector(b24, "b24widget_http", 1)
    assert sink.relay(client) == ["1 channel(s) revoked"]
    row.refresh_from_db()
    assert row.state == Channel.State.REVOKED and row.secret == ""
    response = signed(client, row, secret, message("m9"))
    assert response.status_code == 409 and response.json()["error"] == "channel_disconnected"
    imc.delete_line(b24, 1)
    assert sink.relay(client) == ["0 channel(s) revoked"]  # already revoked: idempotent
    assert row.inbound.count() == 1  # the history stays


def test_uninstall_revokes_every_channel(client, conversation):
    from tests.conftest import do_uninstall

    row, secret, b24, chat_id = conversation
    assert do_uninstall(client, b24).status_code == 200
    row.refresh_from_db()
    assert row.state == Channel.State.REVOKED and row.secret == ""
    assert signed(client, row, secret, message("m9")).json()["error"] == "channel_disconnected"


def test_the_admin_lists_channels_with_counts_and_no_secret(admin_client, conversation):
    row, secret, b24, chat_id = conversation
    response = admin_client.get("/admin/openlines/channel/")
    body = response.content.decode()
    assert response.status_code == 200 and str(row.portal) in body
    assert secret not in body
    page = admin_client.get(f"/admin/openlines/channel/{row.pk}/change/").content.decode()
    assert secret not in page and "issued" in page
    assert json.dumps(secret) not in admin_client.get("/admin/openlines/inboundmessage/").content.decode()


def test_connector_events_need_the_application_token(client, conversation, sink):
    """The inbox refuses a connector event whose application_token is not the portal's: nothing stored."""
    from urllib.parse import urlencode

    from inbox.models import InboxItem

    row, secret, b24, chat_id = conversation
    imc.operator_reply(b24, chat_id, "forged?", handlers=[sink.url])
    pairs = [(k, "not-the-token" if k == "auth[application_token]" else v) for k, v in sink.got[0]]
    response = client.post("/events/", urlencode(pairs), content_type="application/x-www-form-urlencoded")
    assert response.status_code == 403
    assert not InboxItem.objects.filter(event="ONIMCONNECTORMESSAGEADD").exists()
    assert not OutboundMessage.objects.exists()


def test_a_read_report_from_the_outside_system_reaches_bitrix24_as_reading(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    row, secret, b24, chat_id = conversation
    message_id, _ = imc.operator_reply(b24, chat_id, "Here is the answer", handlers=[sink.url])
    with django_capture_on_commit_callbacks(execute=True):
        sink.relay(client)
    before = b24.calls("imconnector.send.status.reading")
    report = {"action": "read", "chat": {"id": "chat-1"}, "user": {"id": "u-1"}, "message": {"id": str(message_id)}}
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, report).status_code == 202
    assert b24.calls("imconnector.send.status.reading") - before == 1
    reply = next(m for m in imc.conversations(b24)[0]["messages"] if m["im_message_id"] == message_id)
    assert reply["read"] is not None
    stored = InboundMessage.objects.get(action=InboundMessage.Action.READ)
    assert (stored.state, stored.attempts, stored.last_error) == (Delivery.SENT, 1, "")
    assert stored.external_message_id == str(message_id)
    assert stored.key.startswith("read:") and stored.key.endswith(f":{message_id}")  # read:<outside chat>:<id>
    # The same report again is a duplicate; one naming no operator message of the channel is refused.
    assert signed(client, row, secret, report).json()["error"] == "duplicate_message"
    unknown = signed(client, row, secret, {**report, "message": {"id": "424242"}})
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_message")
    assert b24.calls("imconnector.send.status.reading") - before == 1


def three_chats(client, row, secret, b24, capture) -> list:
    """Two more customers write in (chat-2, chat-3) beside the conversation's own: the portal's three chat ids."""
    with capture(execute=True):
        for i in (2, 3):
            assert (
                signed(client, row, secret, message(f"m{i}", "Hi", chat=f"chat-{i}", user=f"u-{i}")).status_code == 202
            )
    return [c["chat_id"] for c in imc.conversations(b24)]


def test_a_backlog_of_replies_in_many_chats_is_confirmed_in_one_batch_request(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    """Each reply is confirmed with the portal's history; when events wait in the inbox, the first one's miss
    asks for the other waiting chats in the same batch request, and their events find the answer cached."""
    from urllib.parse import urlencode

    from inbox import queue as inbox

    row, secret, b24, chat_id = conversation
    chats = three_chats(client, row, secret, b24, django_capture_on_commit_callbacks)
    assert len(chats) == 3
    for n, chat in enumerate(chats):
        imc.operator_reply(b24, chat, f"reply {n}", handlers=[sink.url])
    for pairs in sink.got:  # Bitrix24 delivers the three events; a worker gets to them later
        assert (
            client.post("/events/", urlencode(pairs), content_type="application/x-www-form-urlencoded").status_code
            == 200
        )
    batches, history = b24.calls("batch"), b24.calls("imopenlines.session.history.get")
    with django_capture_on_commit_callbacks(execute=True):
        inbox.process_pending()
    assert b24.calls("batch") - batches == 1 and b24.calls("imopenlines.session.history.get") - history == 3
    assert sorted(h["json"]["message"]["text"] for h in receiver.got) == ["reply 0", "reply 1", "reply 2"]


def test_a_reply_handled_after_the_customer_opened_a_new_session_is_still_relayed(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    """The operator wrote "Bye" and finished the dialog; the customer wrote again (a new session) before the
    reply's event was handled: the chat's last session lacks it, so the earlier session the channel saw is
    asked, and the reply goes out once. Its deletion later is confirmed in that session."""
    row, secret, b24, chat_id = conversation
    message_id, _ = imc.operator_reply(b24, chat_id, "Bye", handlers=[sink.url])
    held = sink.got
    sink.got = []
    imc.finish_dialog(b24, chat_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m2", "Wait, one more thing")).status_code == 202
    assert len({r.session_id for r in InboundMessage.objects.all()}) == 2
    sink.got = held
    with django_capture_on_commit_callbacks(execute=True):
        assert sink.relay(client) == ["1 message(s) queued for the webhook"]
    b24.bindings["events"][:] = [
        {
            "id": 99,
            "event": "ONIMCONNECTORMESSAGEDELETE",
            "handler": sink.url,
            "auth_type": "0",
            "app": b24._standin.client_id,
        }
    ]
    imc.operator_delete(b24, chat_id, message_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert sink.relay(client) == ["1 message(s) queued for the webhook"]
    assert [(h["json"]["event"], h["json"]["message"]["text"]) for h in receiver.got] == [
        ("message.add", "Bye"),
        ("message.delete", ""),
    ]


def test_a_backlog_of_replies_reports_their_delivery_in_full_calls(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks, settings
):
    """A worker takes a backlog of reply events one by one, each queueing the channel's run: while more replies
    of the line wait in the inbox, a run keeps a partial page of delivery statuses for a later one, so the
    backlog costs a status call per OPENLINES_STATUS_BATCH replies, not one per run (each reply still goes
    out at once, once, in order, and every one is reported delivered)."""
    from urllib.parse import urlencode

    from inbox import queue as inbox
    from inbox.models import InboxItem

    row, secret, b24, chat_id = conversation
    settings.OPENLINES_STATUS_BATCH = 10
    chats = three_chats(client, row, secret, b24, django_capture_on_commit_callbacks)
    for n in range(30):
        imc.operator_reply(b24, chats[n % 3], f"reply {n}", handlers=[sink.url])
    for pairs in sink.got:
        assert (
            client.post("/events/", urlencode(pairs), content_type="application/x-www-form-urlencoded").status_code
            == 200
        )
    statuses = b24.calls("imconnector.send.status.delivery")
    waiting = InboxItem.objects.filter(event="ONIMCONNECTORMESSAGEADD", state=InboxItem.State.PENDING)
    for pk in list(waiting.order_by("id").values_list("pk", flat=True)):
        # One event at a time, the channel's run right after it (as workers interleave them); the inbox's own
        # sends to the broker are dropped (no broker here: the loop is the worker).
        with django_capture_on_commit_callbacks(execute=True):
            with django_capture_on_commit_callbacks() as after:
                inbox.process(pk)
            for callback in after:
                if callback.__module__ != "inbox.queue":
                    callback()
    assert not waiting.exists()
    texts = [h["json"]["message"]["text"] for h in receiver.got]
    assert texts == [f"reply {n}" for n in range(30)]  # each at once, once, in the order written
    assert not OutboundMessage.objects.filter(status_reported_at__isnull=True).exists()
    reported = [m for c in imc.conversations(b24) for m in c["messages"] if not m["outside"]]
    assert len(reported) == 30 and all(m["delivered"] is not None for m in reported)
    # Three full calls (a slow machine may add one each time a page waited STATUS_WAIT), not thirty.
    assert b24.calls("imconnector.send.status.delivery") - statuses < 10


def test_a_lone_reply_is_reported_delivered_at_once(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    """No backlog: the status goes in the run that delivered the reply (no wait for a fuller call)."""
    row, secret, b24, chat_id = conversation
    statuses = b24.calls("imconnector.send.status.delivery")
    for n in range(3):
        imc.operator_reply(b24, chat_id, f"reply {n}", handlers=[sink.url])
        with django_capture_on_commit_callbacks(execute=True):
            sink.relay(client)
        assert OutboundMessage.objects.filter(status_reported_at__isnull=True).count() == 0
    assert b24.calls("imconnector.send.status.delivery") - statuses == 3


def test_replies_written_after_a_chat_was_read_are_confirmed_together(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    """Each chat's history was read a moment ago (its answer is kept), then the operators wrote again in every
    chat: the first waiting event's miss asks for the other chats too, since the answers kept predate their
    replies; one request confirms them all, not one per chat."""
    from urllib.parse import urlencode

    from inbox import queue as inbox

    row, secret, b24, chat_id = conversation
    chats = three_chats(client, row, secret, b24, django_capture_on_commit_callbacks)
    for n, chat in enumerate(chats):  # each handled as it comes: each chat's answer is kept
        imc.operator_reply(b24, chat, f"first {n}", handlers=[sink.url])
        with django_capture_on_commit_callbacks(execute=True):
            sink.relay(client)
    for n, chat in enumerate(chats):
        imc.operator_reply(b24, chat, f"second {n}", handlers=[sink.url])
    for pairs in sink.got:
        assert (
            client.post("/events/", urlencode(pairs), content_type="application/x-www-form-urlencoded").status_code
            == 200
        )
    before = len(b24.requests)
    with django_capture_on_commit_callbacks(execute=True):
        inbox.process_pending()
    asked = [r["method"] for r in b24.requests[before:] if r["method"] != "imconnector.send.status.delivery"]
    assert asked == ["batch"]
    assert [h["json"]["message"]["text"] for h in receiver.got] == [
        "first 0",
        "first 1",
        "first 2",
        "second 0",
        "second 1",
        "second 2",
    ]


def test_replies_mark_the_channel_active_once_a_minute(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    row, secret, b24, chat_id = conversation
    Channel.objects.filter(pk=row.pk).update(last_activity_at=None)
    imc.operator_reply(b24, chat_id, "first", handlers=[sink.url])
    with django_capture_on_commit_callbacks(execute=True):
        sink.relay(client)
    active = Channel.objects.get(pk=row.pk).last_activity_at
    assert active is not None
    imc.operator_reply(b24, chat_id, "second", handlers=[sink.url])
    with django_capture_on_commit_callbacks(execute=True):
        sink.relay(client)
    assert Channel.objects.get(pk=row.pk).last_activity_at == active
    Channel.objects.filter(pk=row.pk).update(last_activity_at=active - timedelta(seconds=61))
    imc.operator_reply(b24, chat_id, "third", handlers=[sink.url])
    with django_capture_on_commit_callbacks(execute=True):
        sink.relay(client)
    assert Channel.objects.get(pk=row.pk).last_activity_at > active
    assert [h["json"]["message"]["text"] for h in receiver.got] == ["first", "second", "third"]


# --- a limit while confirming a reply: wait for the bucket in the inbox, not in the worker (issue 26) ---------
HISTORY = "imopenlines.session.history.get"


def between(value, low, high):
    return low <= value <= high


def reply_meets_a_limit(client, b24, chat_id, text, sink, on_commit):
    """An operator's reply relayed through /events/ whose confirmation meets a limit: (its inbox row, waiting
    "later"; the times just before and after it was handled)."""
    from inbox.models import InboxItem

    imc.operator_reply(b24, chat_id, text, handlers=[sink.url])
    before = timezone.now()
    with on_commit(execute=True):
        [outcome] = sink.relay(client)
    after = timezone.now()
    item = InboxItem.objects.get(event="ONIMCONNECTORMESSAGEADD")
    assert outcome.startswith("pending: later") and "QUERY_LIMIT_EXCEEDED" in item.last_error
    return item, before, after


def test_a_reply_whose_confirmation_meets_a_limit_waits_in_the_inbox_with_no_attempt_counted(
    client, conversation, receiver, sink, settings, django_capture_on_commit_callbacks
):
    """QUERY_LIMIT_EXCEEDED for the history that confirms a reply: the portal is asked once (not again and again
    in the worker, each at a slowed slot, the lane's next events behind it), and the event waits in the inbox for
    the portal's next slot (LIMIT_WAIT_MIN with this fast bucket), no attempt counted, however long the limit
    lasts (past B24_INBOX_MAX_ATTEMPTS here); once it ends, the reply is relayed, once."""
    from inbox import queue as inbox
    from inbox.models import InboxItem

    settings.B24_RATE_LIMIT_BURST, settings.B24_RATE_LIMIT_PER_SECOND = 5, 500.0  # a fast bucket: short slots
    settings.B24_INBOX_MAX_ATTEMPTS = 2
    row, secret, b24, chat_id = conversation
    b24.fail_next(HISTORY, "QUERY_LIMIT_EXCEEDED", 503, times=1000)
    asked = b24.calls(HISTORY)
    item, before, after = reply_meets_a_limit(
        client, b24, chat_id, "Right away", sink, django_capture_on_commit_callbacks
    )
    assert b24.calls(HISTORY) - asked == 1  # asked once: the client's 12 limit retries were 13 requests
    wait = timedelta(seconds=tasks.LIMIT_WAIT_MIN)
    assert item.attempts == 0 and between(item.next_attempt_at, before + wait, after + wait)
    for n in range(2, 5):  # the limit goes on: each time the slot comes, asked once more
        InboxItem.objects.filter(pk=item.pk).update(next_attempt_at=timezone.now())
        inbox.process_pending()
        item.refresh_from_db()
        assert (item.state, item.attempts, b24.calls(HISTORY) - asked) == (InboxItem.State.PENDING, 0, n)
    assert receiver.got == []
    b24._failures.clear()  # the portal's counter drained
    InboxItem.objects.filter(pk=item.pk).update(next_attempt_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        inbox.process_pending()
    item.refresh_from_db()
    assert (item.state, item.attempts) == (InboxItem.State.DONE, 1)
    assert item.outcome == "1 message(s) queued for the webhook"
    assert [h["json"]["message"]["text"] for h in receiver.got] == ["Right away"]


def test_a_reply_our_limiter_holds_back_waits_as_long_as_the_limiter_says_and_sends_nothing(
    client, conversation, receiver, sink, settings, django_capture_on_commit_callbacks
):
    """Our limiter's next slot is further than a background call may wait (B24_MAX_WAIT): nothing is sent, and
    the event waits the seconds the limiter named (~100 s: one request per 100 s), no attempt counted."""
    row, secret, b24, chat_id = conversation
    settings.B24_RATE_LIMIT_BURST, settings.B24_RATE_LIMIT_PER_SECOND, settings.B24_MAX_WAIT = 1, 0.01, 5.0
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m2", "Hello?")).status_code == 202  # takes the one slot
    asked = b24.calls(HISTORY)
    item, before, after = reply_meets_a_limit(
        client, b24, chat_id, "One moment", sink, django_capture_on_commit_callbacks
    )
    assert b24.calls(HISTORY) == asked and item.attempts == 0  # nothing reached Bitrix24
    assert between(item.next_attempt_at, before + timedelta(seconds=90), after + timedelta(seconds=100.5))
    assert receiver.got == []


def test_replies_whose_confirming_batch_meets_a_limit_wait_in_the_inbox_and_the_batch_is_sent_once(
    client, conversation, receiver, sink, settings, django_capture_on_commit_callbacks
):
    """A backlog of replies in three chats: the first one's confirmation asks for the three histories in one batch
    request, and Bitrix24 refuses the commands for the limit. The batch is not sent again in the worker (the
    client sent the refused commands again up to B24_REST_MAX_RETRIES times, each a request at the next slot):
    the event waits in the inbox for the portal's next slot, no attempt counted; then all three are relayed."""
    from urllib.parse import urlencode

    from inbox import queue as inbox
    from inbox.models import InboxItem

    settings.B24_RATE_LIMIT_BURST, settings.B24_RATE_LIMIT_PER_SECOND = 5, 500.0  # a fast bucket: short slots
    row, secret, b24, chat_id = conversation
    chats = three_chats(client, row, secret, b24, django_capture_on_commit_callbacks)
    for n, chat in enumerate(chats):
        imc.operator_reply(b24, chat, f"reply {n}", handlers=[sink.url])
    for pairs in sink.got:  # Bitrix24 delivers the three events; a worker gets to them later
        response = client.post("/events/", urlencode(pairs), content_type="application/x-www-form-urlencoded")
        assert response.status_code == 200
    b24.fail_next(HISTORY, "QUERY_LIMIT_EXCEEDED", 503, times=1000)  # each nested history command
    batches, history = b24.calls("batch"), b24.calls(HISTORY)
    with django_capture_on_commit_callbacks(execute=True):
        inbox.process_pending()
    assert (b24.calls("batch") - batches, b24.calls(HISTORY) - history) == (1, 3)  # one request, not again
    first = InboxItem.objects.filter(event="ONIMCONNECTORMESSAGEADD").order_by("pk").first()
    assert (first.state, first.attempts) == (InboxItem.State.PENDING, 0)
    assert first.last_error == "later: the portal's limit (QUERY_LIMIT_EXCEEDED)"
    assert receiver.got == []
    b24._failures.clear()  # the portal's counter drained
    InboxItem.objects.filter(state=InboxItem.State.PENDING).update(next_attempt_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        inbox.process_pending()
    assert set(InboxItem.objects.filter(event="ONIMCONNECTORMESSAGEADD").values_list("state", flat=True)) == {
        InboxItem.State.DONE
    }
    assert sorted(h["json"]["message"]["text"] for h in receiver.got) == ["reply 0", "reply 1", "reply 2"]
