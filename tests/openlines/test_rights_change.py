"""Rights change (issue 23): the installing administrator, whose tokens the app holds, loses access to the
line. `imopenlines.session.history.get` then answers ACCESS_DENIED by CHAT_ID (its page,
api-reference/imopenlines/openlines/sessions/imopenlines-session-history-get.md: "If the user is not a
participant in the chat, an error will be returned when calling with only the parameter CHAT_ID").
An operator's reply is confirmed another way, or waits, visibly, until someone may read it: never dropped."""

import pytest

from openlines import reconcile, waiting
from openlines.models import OutboundMessage, WaitingReply
from sandbox.standin import rest_imconnector as imc
from sandbox.standin import rest_imopenlines as imol
from tests.b24widget.test_metrics import TOKEN, scrape, value
from tests.openlines.conftest import message, signed
from tests.openlines.test_connector_actions import listed, opened

pytestmark = pytest.mark.django_db

INSTALLER, OPERATOR = "1", "2"


@pytest.fixture
def conversation(client, channel, django_capture_on_commit_callbacks):
    """A customer wrote on line 1; then the installing administrator lost access to the line."""
    row, secret, b24 = channel
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m1", "Hi, I need help")).status_code == 202
    imol.revoke_line_access(b24, INSTALLER, row.line_id)
    return row, b24, imc.conversations(b24)[0]["chat_id"]


def _reply(b24, chat_id, text, sink, *, token=True):
    """An operator (not the installer) replies; `token=False`: the event carries no access token of its own
    (as an offline record, or a portal that sends none)."""
    message_id, _ = imc.operator_reply(b24, chat_id, text, user_id=OPERATOR, handlers=[sink.url])
    if not token:
        sink.got = [[(k, v) for k, v in pairs if k != "auth[access_token]"] for pairs in sink.got]
    return message_id


def _history_denied(b24) -> int:
    """How many history calls by CHAT_ID alone the stand-in refused with ACCESS_DENIED (its request log)."""
    return sum(
        1
        for r in b24.requests
        if r["method"] == "imopenlines.session.history.get" and "SESSION_ID" not in r["params"] and r["status"] >= 400
    )


def test_the_installers_token_denied_the_reply_is_confirmed_by_session_as_the_page_advises(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    row, b24, chat_id = conversation
    message_id = _reply(b24, chat_id, "Operator here", sink, token=False)
    with django_capture_on_commit_callbacks(execute=True):
        [outcome] = sink.relay(client)
    assert outcome == "1 message(s) queued for the webhook"
    assert [(h["json"]["message"]["id"], h["json"]["message"]["text"]) for h in receiver.got] == [
        (str(message_id), "Operator here")
    ]
    assert _history_denied(b24) >= 1  # the installer's token was refused first: the rights did change


def test_a_portal_that_checks_sessions_too_is_read_with_the_events_own_token(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    row, b24, chat_id = conversation
    imol.history_checks_sessions(b24)
    message_id = _reply(b24, chat_id, "Written by Oleg", sink)
    with django_capture_on_commit_callbacks(execute=True):
        [outcome] = sink.relay(client)
    assert outcome == "1 message(s) queued for the webhook"
    [hook] = receiver.got
    assert hook["json"]["message"]["id"] == str(message_id) and hook["json"]["message"]["text"] == "Written by Oleg"
    assert hook["json"]["message"]["author"]["id"] == OPERATOR


def test_nobody_may_read_the_replies_wait_visibly_then_go_once_in_order(
    client, frame, admin_client, conversation, receiver, sink, django_capture_on_commit_callbacks, settings
):
    row, b24, chat_id = conversation
    imol.history_checks_sessions(b24)
    first = _reply(b24, chat_id, "first", sink, token=False)
    with django_capture_on_commit_callbacks(execute=True):
        outcomes = sink.relay(client)
    # A forged or genuine reply alike is not relayed unconfirmed, and it is not rejected: it waits.
    assert outcomes == ["0 message(s) queued for the webhook; 1 waiting for someone who may read the conversation"]
    # The operator's token could read it, but the next reply of the same chat waits behind the first.
    second = _reply(b24, chat_id, "second", sink)
    with django_capture_on_commit_callbacks(execute=True):
        outcomes = sink.relay(client)
    assert outcomes == ["0 message(s) queued for the webhook; 1 waiting for someone who may read the conversation"]
    assert receiver.got == [] and not OutboundMessage.objects.exists()
    assert list(WaitingReply.objects.values_list("im_message_id", "state")) == [
        (str(first), "waiting"),
        (str(second), "waiting"),
    ]

    # Said so: in the Contact Center overview (any user of the portal) and in the admin.
    answer = listed(frame, opened(frame, b24, user_id=OPERATOR))
    assert answer.status_code == 200
    assert answer.json()["channels"][row.line_id]["waiting_replies"] == 2
    page = admin_client.get("/admin/openlines/waitingreply/")
    assert page.status_code == 200 and str(first).encode() in page.content and b"ACCESS_DENIED" in page.content
    assert b"replies waiting for a reader" in admin_client.get("/admin/openlines/channel/").content.lower()
    settings.METRICS_TOKEN = TOKEN
    assert value(scrape(client), "b24widget_openlines_waiting_replies") == 2

    # Still nobody: the pass leaves them waiting (and asks again later, backing off).
    assert reconcile.recheck_waiting(row, now=_later()) == {"relayed": 0, "refused": 0, "waiting": 2}
    # Access comes back: the next pass relays both, in the order written, each once.
    imol.restore_line_access(b24, INSTALLER, row.line_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert reconcile.recheck_waiting(row, now=_later(hours=2)) == {"relayed": 2, "refused": 0, "waiting": 0}
    assert receiver.texts() == ["first", "second"]
    with django_capture_on_commit_callbacks(execute=True):
        assert reconcile.recheck_waiting(row, now=_later(hours=4)) == {"relayed": 0, "refused": 0, "waiting": 0}
        sink.got = []
        imc.operator_reply(b24, chat_id, "third", user_id=OPERATOR, handlers=[sink.url])
        assert sink.relay(client) == ["1 message(s) queued for the webhook"]
    assert receiver.texts() == ["first", "second", "third"]
    assert waiting.counts([row]) == {}


def test_a_waiting_reply_deleted_meanwhile_is_settled_not_relayed(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    row, b24, chat_id = conversation
    imol.history_checks_sessions(b24)
    gone = _reply(b24, chat_id, "oops", sink, token=False)
    sink.relay(client)
    imc.operator_delete(b24, chat_id, gone)  # the deletion's event names a message never relayed: not ours
    imol.restore_line_access(b24, INSTALLER, row.line_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert reconcile.recheck_waiting(row, now=_later(hours=2)) == {"relayed": 0, "refused": 1, "waiting": 0}
    assert receiver.got == []
    settled = WaitingReply.objects.get()
    assert settled.state == "refused" and "not in the conversation" in settled.reason


def _later(**delta):
    from datetime import timedelta

    from django.utils import timezone

    return timezone.now() + timedelta(**(delta or {"hours": 1}))
