"""The app unreachable, then back: what Bitrix24 could not deliver comes from the portal's offline queue
(inbox/offline.py) and reaches the outside system's webhook once, in order per chat; an uninstall made
meanwhile is applied; an event that came both ways is applied once.

Bitrix24 is the stand-in (sandbox/standin/rest_offline.py, its `app_unreachable` switch); the app's online
event handler is the `sink`, a local server standing in for /events/ (tests/openlines/conftest.py)."""

import time

import pytest
from django.db import connection

from inbox import queue as inbox
from inbox import tasks
from inbox.models import InboxItem
from openlines import confirm
from openlines.models import OutboundMessage
from portals.install import events_url
from portals.models import Portal
from sandbox.standin import rest_imconnector as imc
from sandbox.standin import rest_offline
from tests.conftest import do_install
from tests.openlines.conftest import message, signed

pytestmark = pytest.mark.django_db


@pytest.fixture
def chats(client, channel, django_capture_on_commit_callbacks):
    """Two customers wrote on the connected line: (channel row, stand-in portal, {outside chat: Open Lines chat})."""
    row, secret, b24 = channel
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m1", "Hi", chat="chat-1", user="u-1")).status_code == 202
        assert signed(client, row, secret, message("m2", "Hello", chat="chat-2", user="u-2")).status_code == 202
    return row, b24, {c["external_chat"]: c["chat_id"] for c in imc.conversations(b24)}


@pytest.fixture
def clock(standin):
    """The stand-in's clock (what minTimeout counts), moved by hand; the real one again afterwards."""

    class Clock:
        now = time.time()

        def __call__(self):
            return self.now

    standin.clock = Clock()
    yield standin.clock
    standin.clock = time.time


def to_sink(b24, sink):
    """The handlers the app bound (its /events/ address) reach the test's sink from now on."""
    with b24._standin.lock:
        for binding in b24.bindings["events"]:
            if binding["handler"] == events_url():
                binding["handler"] = sink.url


def pull_here(capture, *member_ids):
    """The beat's pull task run here, then the inbox processed as a worker would; the channel's deliveries run
    inline (OPENLINES_TASKS_INLINE) when the block ends. The inbox's own sends to the broker are dropped: the
    rows are processed right here (as tests/conftest.py deliver() does)."""
    with capture(execute=True):
        before = len(connection.run_on_commit)
        counts = tasks.pull_offline_chunk.apply(args=[list(member_ids)]).get()
        inbox.process_pending()
        connection.run_on_commit[before:] = [
            entry for entry in connection.run_on_commit[before:] if entry[1].__module__ != "inbox.queue"
        ]
    return counts


def by_chat(receiver):
    """What the outside system's webhook took, per outside chat, in the order it came."""
    out: dict = {}
    for hook in receiver.got:
        body = hook["json"]
        out.setdefault(body["chat"]["id"], []).append((body["event"], body["message"]["text"]))
    return out


def test_what_happened_while_the_app_was_unreachable_arrives_once_in_order(
    client, chats, receiver, sink, standin, clock, django_capture_on_commit_callbacks
):
    """Operators write 5 replies in two chats, edit one earlier reply and delete another, and a second portal
    uninstalls the app, all while the app is unreachable; the app is back, beat pulls: each reply reaches the
    webhook once, in order per chat, the edit and the deletion after them, and the uninstall is applied."""
    row, b24, chat = chats
    capture = django_capture_on_commit_callbacks
    to_sink(b24, sink)
    early = {}
    for outside, text in (("chat-1", "early A"), ("chat-2", "early B")):
        early[outside], _ = imc.operator_reply(b24, chat[outside], text)
        with capture(execute=True):
            # The first one's record is announced too (ONOFFLINEEVENT): its pull finds the reply relayed already.
            assert sink.relay(client)[0] == "1 message(s) queued for the webhook"
    other = standin.add_portal()
    do_install(client, other)

    b24.app_unreachable()
    other.app_unreachable()
    for n in range(5):
        imc.operator_reply(b24, chat[("chat-1", "chat-2")[n % 2]], f"reply {n}")
    imc.operator_edit(b24, chat["chat-1"], early["chat-1"], "early A, edited")
    imc.operator_delete(b24, chat["chat-2"], early["chat-2"])
    handlers, payload = other.event_handlers("ONAPPUNINSTALL"), other.event_payload("ONAPPUNINSTALL")
    other.uninstall()
    lost = other.deliver_event("ONAPPUNINSTALL", handlers=handlers, payload=payload)
    assert lost and {d["status"] for d in lost} == {None}
    assert sink.got == [] and len(receiver.got) == 2  # nothing reached the app
    b24.app_unreachable(False)
    other.app_unreachable(False)

    counts = pull_here(capture, b24.member_id, other.member_id)

    assert counts["pulled"] == 1 and counts["failed"] == 1  # the other portal's queue is gone with the app
    assert by_chat(receiver) == {
        "chat-1": [
            ("message.add", "early A"),
            ("message.add", "reply 0"),
            ("message.add", "reply 2"),
            ("message.add", "reply 4"),
            ("message.update", "early A, edited"),
        ],
        "chat-2": [
            ("message.add", "early B"),
            ("message.add", "reply 1"),
            ("message.add", "reply 3"),
            ("message.delete", ""),
        ],
    }
    assert Portal.objects.get(member_id=other.member_id).status == Portal.Status.UNINSTALLED
    uninstall = InboxItem.objects.get(member_id=other.member_id, event="ONAPPUNINSTALL")
    assert (uninstall.source, uninstall.state, uninstall.outcome) == ("offline", "done", "uninstalled")
    # The queue is cleared: another pull brings nothing, nothing is sent twice.
    assert rest_offline.records(b24) == []
    pull_here(capture, b24.member_id)
    assert len(receiver.got) == 9
    assert set(InboxItem.objects.filter(source="offline").values_list("state", flat=True)) == {"done"}


def test_replies_edited_or_deleted_before_the_app_was_back_are_relayed_as_the_portal_shows_them(
    client, chats, receiver, sink, django_capture_on_commit_callbacks
):
    """Every offline record carries ids only and the handlers ask the portal: a reply edited before it was ever
    relayed goes out once with its latest text; one deleted before it was relayed never reaches the outside
    system (its text is gone from the portal)."""
    row, b24, chat = chats
    to_sink(b24, sink)
    b24.app_unreachable()
    first, _ = imc.operator_reply(b24, chat["chat-1"], "frist")
    second, _ = imc.operator_reply(b24, chat["chat-1"], "oops")
    imc.operator_reply(b24, chat["chat-1"], "third")
    imc.operator_edit(b24, chat["chat-1"], first, "first")
    imc.operator_delete(b24, chat["chat-1"], second)
    b24.app_unreachable(False)

    pull_here(django_capture_on_commit_callbacks, b24.member_id)

    assert by_chat(receiver) == {"chat-1": [("message.add", "first"), ("message.add", "third")]}
    outcomes = dict(InboxItem.objects.filter(source="offline").values_list("event", "state").order_by("id")[3:])
    assert outcomes == {"ONIMCONNECTORMESSAGEUPDATE": "done", "ONIMCONNECTORMESSAGEDELETE": "rejected"}
    assert not OutboundMessage.objects.filter(im_message_id=str(second)).exists()


def test_onofflineevent_wakes_a_pull_and_an_event_that_came_both_ways_is_applied_once(
    client, chats, receiver, sink, clock, django_capture_on_commit_callbacks
):
    """on-offline-event.md: the portal announces new records online (at most once per minTimeout, which the app
    binds at B24_OFFLINE_MIN_TIMEOUT); the handler pulls at once. The reply that triggered it came online and
    offline: relayed once."""
    row, b24, chat = chats
    to_sink(b24, sink)
    b24.app_unreachable()
    for n in range(3):
        imc.operator_reply(b24, chat["chat-1"], f"missed {n}")
    b24.app_unreachable(False)
    clock.now += 61  # past the minTimeout of the notification the outage swallowed
    back, _ = imc.operator_reply(b24, chat["chat-2"], "back")
    assert [dict(pairs)["event"] for pairs in sink.got] == ["ONIMCONNECTORMESSAGEADD", "ONOFFLINEEVENT"]

    with django_capture_on_commit_callbacks(execute=True):
        online, woke = sink.relay(client)

    assert online == "1 message(s) queued for the webhook"
    assert woke == "4 offline record(s), 4 new, 0 refused"
    assert by_chat(receiver) == {
        "chat-1": [("message.add", f"missed {n}") for n in range(3)],
        "chat-2": [("message.add", "back")],
    }
    twice = [
        (item.source, item.outcome)
        for item in InboxItem.objects.filter(event="ONIMCONNECTORMESSAGEADD")
        if [c.im_message_id for c in confirm.claims_of(item.data)] == [str(back)]
    ]
    assert sorted(twice) == [
        ("offline", "0 message(s) queued for the webhook"),
        ("online", "1 message(s) queued for the webhook"),
    ]
