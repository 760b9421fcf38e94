"""Reconciliation (issue 23): operator messages, edits and deletions whose events never reached the app (it was
unreachable, and the portal's plan has no offline events: feature.get says so) are found in the conversations'
history (imopenlines.session.history.get, 50 chats per batch request: api-reference/imopenlines/openlines/
sessions/imopenlines-session-history-get.md, api-reference/how-to-call-rest-api/batch.md) and relayed once
each, in order per chat, with the same confirmation as their events."""

import pytest

from openlines import reconcile
from openlines.models import OutboundMessage
from sandbox.standin import rest_imconnector as imc
from tests.openlines.conftest import message, signed

pytestmark = pytest.mark.django_db


@pytest.fixture
def chats(client, channel, django_capture_on_commit_callbacks):
    """Two customers wrote (two outside chats): (channel row, stand-in portal, {outside chat: Open Lines chat})."""
    row, secret, b24 = channel
    with django_capture_on_commit_callbacks(execute=True):
        for n, chat in enumerate(("chat-a", "chat-b")):
            body = message(f"m{n}", f"Hello from {chat}", chat=chat, user=f"u-{chat}")
            assert signed(client, row, secret, body).status_code == 202
    found = {c["external_chat"]: c["chat_id"] for c in imc.conversations(b24)}
    assert set(found) == {"chat-a", "chat-b"}
    b24.set_feature("rest_offline_extended", False)  # no offline queue to fall back on: reconciliation only
    return row, b24, found


def _pass(capture) -> dict:
    with capture(execute=True):
        return reconcile.reconcile_pass()


def _bodies(receiver) -> list[tuple[str, str, str]]:
    return [(h["json"]["chat"]["id"], h["json"]["event"], h["json"]["message"]["text"]) for h in receiver.got]


def test_replies_edits_and_deletions_no_event_brought_are_relayed_once_in_order(
    client, chats, receiver, sink, django_capture_on_commit_callbacks
):
    row, b24, chat = chats
    # Two replies relayed as usual (their events came).
    with django_capture_on_commit_callbacks(execute=True):
        kept, _ = imc.operator_reply(b24, chat["chat-a"], "kept", handlers=[sink.url])
        doomed, _ = imc.operator_reply(b24, chat["chat-b"], "doomed", handlers=[sink.url])
        assert sink.relay(client) == ["1 message(s) queued for the webhook"] * 2
    assert _bodies(receiver) == [("chat-a", "message.add", "kept"), ("chat-b", "message.add", "doomed")]
    receiver.got.clear()

    # The app is unreachable: every event of the portal fails, and the plan keeps no offline record.
    b24.app_unreachable()
    for n in range(3):
        imc.operator_reply(b24, chat["chat-a"], f"a{n}")
        imc.operator_reply(b24, chat["chat-b"], f"b{n}")
    imc.operator_edit(b24, chat["chat-a"], kept, "kept, edited")
    imc.operator_delete(b24, chat["chat-b"], doomed)
    assert OutboundMessage.objects.count() == 2  # nothing of it reached the app

    totals = _pass(django_capture_on_commit_callbacks)
    assert totals["add"] == 6 and totals["update"] == 1 and totals["delete"] == 1 and totals["chats"] == 2
    got = _bodies(receiver)
    for outside, letter, changed in (("chat-a", "a", ("message.update", "kept, edited")), ("chat-b", "b", None)):
        mine = [(event, text) for c, event, text in got if c == outside]
        adds = [text for event, text in mine if event == "message.add"]
        assert adds == [f"{letter}0", f"{letter}1", f"{letter}2"]  # in the order written, each once
        if changed:
            assert mine.count(changed) == 1
        else:
            assert [event for event, _ in mine].count("message.delete") == 1
    assert len(got) == 8

    # The next pass finds nothing left; the app back, nothing is relayed twice either.
    assert {k: v for k, v in _pass(django_capture_on_commit_callbacks).items() if k in ("add", "update", "delete")} == {
        "add": 0,
        "update": 0,
        "delete": 0,
    }
    b24.app_unreachable(False)
    assert len(receiver.got) == 8


def test_an_event_that_comes_after_the_pass_relays_nothing_twice(
    client, chats, receiver, sink, django_capture_on_commit_callbacks
):
    row, b24, chat = chats
    imc.operator_reply(b24, chat["chat-a"], "late event", handlers=[sink.url])  # its event is on its way
    assert _pass(django_capture_on_commit_callbacks)["add"] == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert sink.relay(client) == ["0 message(s) queued for the webhook"]
    assert _bodies(receiver) == [("chat-a", "message.add", "late event")]


def test_a_pass_costs_one_batch_request_for_the_channels_conversations(
    chats, receiver, django_capture_on_commit_callbacks
):
    row, b24, chat = chats
    b24.app_unreachable()
    imc.operator_reply(b24, chat["chat-a"], "one")
    imc.operator_reply(b24, chat["chat-b"], "two")
    before = len(b24.requests)
    _pass(django_capture_on_commit_callbacks)
    spent: dict = {}
    for request in b24.requests[before:]:  # HTTP requests the portal took (a batch is one)
        spent[request["method"]] = spent.get(request["method"], 0) + 1
    # Two chats read in one batch request; confirming the new replies reuses those answers (no more calls).
    assert spent.get("batch") == 1 and "imopenlines.session.history.get" not in spent, spent
    assert sorted(receiver.texts()) == ["one", "two"]


def test_a_limit_answer_is_not_waited_out_in_the_pass_and_the_next_pass_reads_the_chats(
    chats, receiver, django_capture_on_commit_callbacks
):
    """The pass reads many portals in one worker (issue 26): the chats Bitrix24 refused for its limit
    (QUERY_LIMIT_EXCEEDED inside the batch, settings/performance/limits.md) are not asked again in it (the
    client sent them again, alone, up to B24_REST_MAX_RETRIES times); they count as unreadable, and the next
    pass reads them and relays what they show, once."""
    row, b24, chat = chats
    b24.app_unreachable()
    imc.operator_reply(b24, chat["chat-a"], "one")
    imc.operator_reply(b24, chat["chat-b"], "two")
    b24.fail_next("imopenlines.session.history.get", "QUERY_LIMIT_EXCEEDED", 503, times=2)
    before = len(b24.requests)
    first = _pass(django_capture_on_commit_callbacks)
    assert [r["method"] for r in b24.requests[before:]] == ["batch"]  # sent once
    assert (first["unreadable"], first["add"]) == (2, 0) and receiver.texts() == []
    second = _pass(django_capture_on_commit_callbacks)
    assert (second["unreadable"], second["add"]) == (0, 2)
    assert sorted(receiver.texts()) == ["one", "two"]


def test_customer_and_system_messages_and_replies_from_before_the_channel_are_never_relayed(
    client, chats, receiver, django_capture_on_commit_callbacks
):
    row, b24, chat = chats
    b24.app_unreachable()
    imc.system_message(b24, chat["chat-a"], "A new lead has been created")
    imc.operator_reply(b24, chat["chat-a"], "written long ago")
    with b24._standin.lock:  # the stand-in's own record of when it was written: three days back
        imc.state(b24).chats[chat["chat-a"]]["messages"][-1]["at"] -= 3 * 86400
    imc.operator_reply(b24, chat["chat-b"], "now")
    assert _pass(django_capture_on_commit_callbacks)["add"] == 1
    assert _bodies(receiver) == [("chat-b", "message.add", "now")]


def test_a_chat_the_installer_may_no_longer_read_is_reconciled_by_its_session(
    chats, receiver, django_capture_on_commit_callbacks
):
    """The history by CHAT_ID answers ACCESS_DENIED (rights change, tests/openlines/test_rights_change.py): the
    pass reads the chat's known session instead, as the page advises, and relays the reply once."""
    from sandbox.standin import rest_imopenlines as imol

    row, b24, chat = chats
    imol.revoke_line_access(b24, "1", row.line_id)
    b24.app_unreachable()
    imc.operator_reply(b24, chat["chat-a"], "while nobody listened", user_id="2")
    assert _pass(django_capture_on_commit_callbacks)["add"] == 1
    assert _bodies(receiver) == [("chat-a", "message.add", "while nobody listened")]


def test_a_new_reply_brings_the_earlier_ones_no_event_brought_first(
    client, chats, receiver, sink, django_capture_on_commit_callbacks
):
    """Replies whose events were lost (refused while we were down) and a newer one whose event comes: the outside
    system gets the chat in the order it was written, not the newer one first and the others at the next pass
    (the soak's finding, bench/RESULTS.md); the pass then finds nothing left."""
    row, b24, chat = chats
    b24.app_unreachable()
    imc.operator_reply(b24, chat["chat-a"], "first")
    imc.operator_reply(b24, chat["chat-a"], "second")
    b24.app_unreachable(False)
    with django_capture_on_commit_callbacks(execute=True):
        imc.operator_reply(b24, chat["chat-a"], "third", handlers=[sink.url])
        assert sink.relay(client) == ["1 message(s) queued for the webhook"]
    assert _bodies(receiver) == [("chat-a", "message.add", t) for t in ("first", "second", "third")]
    assert _pass(django_capture_on_commit_callbacks)["add"] == 0
    assert len(receiver.got) == 3
