"""Contract tests of the stand-in's imconnector.* methods and connector events, each against its page in
bitrix24/b24restdocs (api-reference/imopenlines/imconnector/...)."""

from urllib.parse import parse_qsl

import pytest

from sandbox.standin import rest_imconnector as imc
from sandbox.standin import rest_imopenlines as imol
from tests.helpers import QuietHandler, local_server

ICON = {"DATA_IMAGE": "data:image/svg+xml,%3Csvg%20xmlns%3D%22http://www.w3.org/2000/svg%22/%3E"}


@pytest.fixture
def token(portal):
    return portal.issue_tokens("1")["access_token"]


def call(http, portal, method, token, **params):
    answer = http.post(f"{portal.client_endpoint}{method}.json", json={"auth": token, **params}, timeout=5)
    return answer.status_code, answer.json()


def register(http, portal, token, **overrides):
    params = {
        "ID": "MyConnector",
        "NAME": "Mine",
        "ICON": ICON,
        "PLACEMENT_HANDLER": "https://app.example.test/p/",
        **overrides,
    }
    return call(http, portal, "imconnector.register", token, **params)


def connect(http, portal, token, line="1"):
    register(http, portal, token)
    assert call(http, portal, "imconnector.activate", token, CONNECTOR="myconnector", LINE=line, ACTIVE="1")[0] == 200
    call(
        http,
        portal,
        "imconnector.connector.data.set",
        token,
        CONNECTOR="myconnector",
        LINE=line,
        DATA={"ID": "ch-1", "URL": "https://x.example/1", "NAME": "Chan"},
    )


def inbound(text="hi", mid="m1", chat="c1", user="u1"):
    return {"user": {"id": user, "name": "Ann"}, "message": {"id": mid, "text": text}, "chat": {"id": chat}}


def test_register_lowers_the_id_and_answers_result_true(http, portal, token):
    """imconnector-register.md: ID lower-cased; success {"result": {"result": true}}; list shows it."""
    status, body = register(http, portal, token)
    assert status == 200 and body["result"] == {"result": True}
    assert imc.state(portal).connectors["myconnector"]["PLACEMENT_HANDLER"] == "https://app.example.test/p/"
    status, body = call(http, portal, "imconnector.list", token)
    assert body["result"]["myconnector"] == "Mine" and body["result"]["livechat"] == "Live Chat"


@pytest.mark.parametrize(
    "overrides, code",
    [
        ({"ID": ""}, "CONNECTOR_ID_REQUIRED"),
        ({"ID": "a.b"}, "APPLICATION_REGISTRATION_ERROR_POINT"),
        ({"NAME": ""}, "NAME_REQUIRED"),
        ({"ICON": {}}, "ICON_REQUIRED"),
        ({"PLACEMENT_HANDLER": ""}, "NO_PLACEMENT_HANDLER"),
    ],
)
def test_register_errors_come_as_200_with_result_false(http, portal, token, overrides, code):
    """imconnector-register.md "Error Handling": HTTP 200, result.result = false, result.error = code."""
    status, body = register(http, portal, token, **overrides)
    assert status == 200 and body["result"]["result"] is False and body["result"]["error"] == code


def test_activate_data_set_and_status(http, portal, token):
    """imconnector-activate.md, -connector-data-set.md, -status.md: STATUS once active and configured."""
    register(http, portal, token)
    status, body = call(http, portal, "imconnector.status", token, CONNECTOR="myconnector", LINE="1")
    assert body["result"] == {
        "LINE": 1,
        "CONNECTOR": "myconnector",
        "ERROR": False,
        "CONFIGURED": False,
        "STATUS": False,
    }
    connect(http, portal, token)
    _status, body = call(http, portal, "imconnector.status", token, CONNECTOR="myconnector", LINE="1")
    assert body["result"]["STATUS"] is True and body["result"]["CONFIGURED"] is True
    assert (
        call(http, portal, "imconnector.activate", token, CONNECTOR="myconnector", LINE="1", ACTIVE="0")[1]["result"]
        is True
    )
    _status, body = call(http, portal, "imconnector.status", token, CONNECTOR="myconnector", LINE="1")
    assert body["result"]["STATUS"] is False


@pytest.mark.parametrize(
    "method, params, description",
    [
        ("imconnector.activate", {"LINE": "1", "ACTIVE": "1"}, "Argument 'CONNECTOR' is null or empty"),
        ("imconnector.activate", {"CONNECTOR": "myconnector", "ACTIVE": "1"}, "Argument 'LINE' is null or empty"),
        ("imconnector.activate", {"CONNECTOR": "myconnector", "LINE": "1"}, "Argument 'ACTIVE' is null or empty"),
        (
            "imconnector.connector.data.set",
            {"CONNECTOR": "myconnector", "LINE": "1"},
            "Argument 'DATA' is null or empty",
        ),
        (
            "imconnector.send.messages",
            {"CONNECTOR": "myconnector", "LINE": "1"},
            "Argument 'MESSAGES' is null or empty",
        ),
        (
            "imconnector.send.messages",
            {"CONNECTOR": "myconnector", "LINE": "1", "MESSAGES": [{"user": {}}]},
            "The incorrect structure of a message inside MESSAGES parameter",
        ),
        ("imconnector.status", {"LINE": "1"}, "Argument 'CONNECTOR' is null or empty"),
    ],
)
def test_missing_arguments_are_error_argument_400(http, portal, token, method, params, description):
    """The pages' "Possible Error Codes": ERROR_ARGUMENT with HTTP 400 and the argument named."""
    connect(http, portal, token)
    status, body = call(http, portal, method, token, **params)
    assert status == 400 and body["error"] == "ERROR_ARGUMENT" and body["error_description"] == description


def test_send_messages_to_an_inactive_line_is_not_active_line(http, portal, token):
    """imconnector-send-messages.md: NOT_ACTIVE_LINE (400) for a line the connector is not active on."""
    register(http, portal, token)
    status, body = call(
        http, portal, "imconnector.send.messages", token, CONNECTOR="myconnector", LINE="1", MESSAGES=[inbound()]
    )
    assert status == 400 and body["error"] == "NOT_ACTIVE_LINE"


def test_send_update_delete_and_statuses(http, portal, token):
    """send-messages.md: RESULT[] per element with session {ID, CHAT_ID}; update/delete find the message by
    its outside id; send.status.delivery marks the operator's message (im.chat_id/im.message_id)."""
    connect(http, portal, token)
    status, body = call(
        http,
        portal,
        "imconnector.send.messages",
        token,
        CONNECTOR="myconnector",
        LINE="1",
        MESSAGES=[inbound("one", "m1"), inbound("two", "m2")],
    )
    assert status == 200 and body["result"]["SUCCESS"] is True
    first, second = body["result"]["DATA"]["RESULT"]
    assert first["SUCCESS"] and first["session"]["CHAT_ID"] == second["session"]["CHAT_ID"]
    chat_id = int(first["session"]["CHAT_ID"])
    _s, body = call(
        http,
        portal,
        "imconnector.update.messages",
        token,
        CONNECTOR="myconnector",
        LINE="1",
        MESSAGES=[inbound("ONE", "m1")],
    )
    assert body["result"]["DATA"]["RESULT"][0]["SUCCESS"] is True
    _s, body = call(
        http,
        portal,
        "imconnector.delete.messages",
        token,
        CONNECTOR="myconnector",
        LINE="1",
        MESSAGES=[{"user": {"id": "u1"}, "message": {"id": "m2"}, "chat": {"id": "c1"}}],
    )
    assert body["result"]["DATA"]["RESULT"][0]["SUCCESS"] is True
    [conversation] = imc.conversations(portal)
    assert [(m["text"], m["deleted"]) for m in conversation["messages"]] == [("ONE", False), ("two", True)]
    message_id, _results = imc.operator_reply(portal, chat_id, "hello")  # no handler bound: nothing sent
    _s, body = call(
        http,
        portal,
        "imconnector.send.status.delivery",
        token,
        CONNECTOR="myconnector",
        LINE="1",
        MESSAGES=[{"im": {"chat_id": chat_id, "message_id": message_id}, "message": {"id": "x"}, "chat": {"id": "c1"}}],
    )
    assert body["result"] == {"SUCCESS": True, "DATA": []}
    assert imc.conversations(portal)[0]["messages"][-1]["delivered"] is not None


@pytest.mark.parametrize("method", ["imconnector.update.messages", "imconnector.delete.messages"])
@pytest.mark.parametrize(
    "element",
    [
        {"user": {"id": "u1"}, "message": {"id": "m1", "text": "x"}, "chat": "c1"},
        {"user": {"id": "u1"}, "message": "m1", "chat": {"id": "c1"}},
        {"user": "u1", "message": {"id": "m1", "text": "x"}, "chat": {"id": "c1"}},
        {"message": {"id": "m1", "text": "x"}, "chat": {"id": "c1"}},
    ],
)
def test_update_and_delete_refuse_an_element_without_its_three_objects(http, portal, token, method, element):
    """-update-messages.md and -delete-messages.md: each element holds three required blocks (user, message,
    chat); send-messages.md names the ERROR_ARGUMENT (400) for an element without them. Not a crash."""
    connect(http, portal, token)
    call(http, portal, "imconnector.send.messages", token, CONNECTOR="myconnector", LINE="1", MESSAGES=[inbound()])
    status, body = call(http, portal, method, token, CONNECTOR="myconnector", LINE="1", MESSAGES=[element])
    assert status == 400 and body["error"] == "ERROR_ARGUMENT"
    assert body["error_description"] == "The incorrect structure of a message inside MESSAGES parameter"
    assert imc.conversations(portal)[0]["messages"][0]["text"] == "hi"  # nothing changed


@pytest.mark.parametrize(
    "user, ok",
    [
        ({"name": "Mary-Jane", "last_name": "O'Neil"}, True),
        ({"name": "Łukasz Żółć", "last_name": "D\u2019Arcy"}, True),
        ({"name": "x" * 25}, True),
        ({"name": "", "last_name": ""}, True),
        ({"name": "x" * 26}, False),
        ({"name": "Ann2"}, False),
        ({"last_name": "Lee!"}, False),
        ({"name": "Ann²"}, False),
        ({"name": "<b>Ann</b>"}, False),
    ],
)
def test_send_messages_holds_names_to_the_documented_rule(http, portal, token, user, ok):
    """imconnector-send-messages.md: name and last_name hold letters, spaces, hyphens and apostrophes only,
    at most 25 characters. The page names no error for it: a message that breaks the rule is refused alone
    (RESULT[] SUCCESS false with ERRORS, the call's SUCCESS false) and the others in the call go on."""
    connect(http, portal, token)
    bad = {**inbound("named", "m1"), "user": {"id": "u1", **user}}
    status, body = call(
        http,
        portal,
        "imconnector.send.messages",
        token,
        CONNECTOR="myconnector",
        LINE="1",
        MESSAGES=[bad, inbound("plain", "m2")],
    )
    named, plain = body["result"]["DATA"]["RESULT"]
    assert status == 200 and plain["SUCCESS"] is True
    assert named["SUCCESS"] is ok and body["result"]["SUCCESS"] is ok
    if not ok:
        assert named["ERRORS"] and "letters, spaces, hyphens and apostrophes" in named["ERRORS"][0]
    texts = [m["text"] for m in imc.conversations(portal)[0]["messages"]]
    assert texts == (["named", "plain"] if ok else ["plain"])


def test_send_status_delivery_keeps_the_outside_ids_it_was_given(http, portal, token):
    """imconnector-send-status-delivery.md: `im` names Bitrix24's message; `message.id` is an array of the
    outside system's ids and `chat.id` the outside chat (they "do not replace im.message_id and im.chat_id")."""
    connect(http, portal, token)
    _s, body = call(
        http, portal, "imconnector.send.messages", token, CONNECTOR="myconnector", LINE="1", MESSAGES=[inbound()]
    )
    chat_id = int(body["result"]["DATA"]["RESULT"][0]["session"]["CHAT_ID"])
    message_id, _results = imc.operator_reply(portal, chat_id, "hello")
    _s, body = call(
        http,
        portal,
        "imconnector.send.status.delivery",
        token,
        CONNECTOR="myconnector",
        LINE="1",
        MESSAGES=[
            {
                "im": {"chat_id": chat_id, "message_id": message_id},
                "message": {"id": ["ext-msg-1007"], "date": 1738065600},
                "chat": {"id": "c1"},
            }
        ],
    )
    assert body["result"] == {"SUCCESS": True, "DATA": []}
    sent = imc.conversations(portal)[0]["messages"][-1]
    assert sent["delivered"] is not None and (sent["delivered_ids"], sent["delivered_chat"]) == (["ext-msg-1007"], "c1")


def test_unregister_unknown_is_result_false(http, portal, token):
    """imconnector-unregister.md: APPLICATION_UNREGISTRATION_ERROR as HTTP 200 with result.result = false."""
    _s, body = call(http, portal, "imconnector.unregister", token, ID="nothing")
    assert body["result"]["error"] == "APPLICATION_UNREGISTRATION_ERROR"
    register(http, portal, token)
    assert call(http, portal, "imconnector.unregister", token, ID="myconnector")[1]["result"] == {"result": True}


def test_the_methods_need_the_imopenlines_scope(http, standin):
    """The pages' "Scope: imopenlines"."""
    portal = standin.add_portal(scope="placement,user_brief")
    token = portal.issue_tokens("1")["access_token"]
    status, body = register(http, portal, token)
    assert status == 403 and body["error"] == "insufficient_scope"


class _Receiver(QuietHandler):
    got: list = []

    def do_POST(self):  # noqa: N802
        type(self).got.append(dict(parse_qsl(self.body().decode())))
        self.answer(200, {"result": "ok"})


def test_operator_reply_and_teardown_events_reach_the_bound_handler(http, portal, token):
    """events/on-im-connector-message-add.md (data[MESSAGES][0][im][chat_id] ...), -status-delete.md
    (data[connector], data[line]) and -line-delete.md (data is the bare line id), form-encoded."""
    receiver = type("R", (_Receiver,), {"got": []})
    with local_server(receiver) as server:
        url = f"{server.url}/events/"
        portal.install_post()
        portal.finish_install()
        for event in ("ONIMCONNECTORMESSAGEADD", "ONIMCONNECTORSTATUSDELETE", "ONIMCONNECTORLINEDELETE"):
            assert call(http, portal, "event.bind", token, event=event, handler=url)[0] == 200
        connect(http, portal, token)
        _s, body = call(
            http, portal, "imconnector.send.messages", token, CONNECTOR="myconnector", LINE="1", MESSAGES=[inbound()]
        )
        chat_id = int(body["result"]["DATA"]["RESULT"][0]["session"]["CHAT_ID"])
        message_id, [result] = imc.operator_reply(portal, chat_id, "Hello there")
        assert result["status"] == 200
        imc.remove_connector(portal, "myconnector", 1)
        imc.delete_line(portal, 1)
        add, status_delete, line_delete = receiver.got
        assert add["event"] == "ONIMCONNECTORMESSAGEADD"
        assert add["data[MESSAGES][0][im][chat_id]"] == str(chat_id)
        assert add["data[MESSAGES][0][im][message_id]"] == str(message_id)
        assert add["data[MESSAGES][0][chat][id]"] == "c1" and add["data[MESSAGES][0][message][text]"] == (
            "[b]Anna Admin:[/b] [br]Hello there"
        )  # on-im-connector-message-add.md: the author's name first
        assert add["auth[application_token]"] == portal.application_token and "auth[refresh_token]" not in add
        assert (status_delete["data[connector]"], status_delete["data[line]"]) == ("myconnector", "1")
        assert line_delete["data"] == "1"


def test_session_history_shows_the_chat_as_the_page_does(http, portal, token):
    """imopenlines-session-history-get.md: message (by id), users (the customer a connector user), chat
    (entityType LINES, entityId connector|line|...), sessionId; a deleted message leaves the history; the
    page's errors for no id, a chat without a session and a session not found."""
    connect(http, portal, token)
    _s, body = call(
        http, portal, "imconnector.send.messages", token, CONNECTOR="myconnector", LINE="1", MESSAGES=[inbound("Hi")]
    )
    session = body["result"]["DATA"]["RESULT"][0]["session"]
    chat_id = int(session["CHAT_ID"])
    reply, _ = imc.operator_reply(portal, chat_id, "Hello there")
    gone, _ = imc.operator_reply(portal, chat_id, "oops")
    imc.operator_delete(portal, chat_id, gone)
    status, answer = call(http, portal, "imopenlines.session.history.get", token, CHAT_ID=chat_id)
    assert status == 200
    result = answer["result"]
    assert result["chatId"] == chat_id and str(result["sessionId"]) == session["ID"]
    messages = result["message"]
    assert [m["text"] for m in messages.values()] == ["Hi", "Hello there"] and str(gone) not in messages
    operator = messages[str(reply)]
    assert operator["chatid"] == str(chat_id) and operator["recipientid"] == f"chat{chat_id}"
    assert operator["senderid"] == "1"
    assert result["users"]["1"]["name"] == "Anna Admin" and result["users"]["1"]["connector"] is False
    customer = next(m for m in messages.values() if m["text"] == "Hi")["senderid"]
    assert result["users"][customer]["connector"] is True
    chat = result["chat"][str(chat_id)]
    assert chat["entityType"] == "LINES" and chat["entityId"].split("|")[:3] == ["myconnector", "1", "c1"]
    assert (
        call(http, portal, "imopenlines.session.history.get", token, SESSION_ID=session["ID"])[1]["result"]["chatId"]
        == chat_id
    )
    assert call(http, portal, "imopenlines.session.history.get", token)[1]["error"] == "MISSING_REQUIRED_PARAM"
    assert (
        call(http, portal, "imopenlines.session.history.get", token, CHAT_ID=99999)[1]["error"] == "INVALID_SESSION_ID"
    )
    assert call(http, portal, "imopenlines.session.history.get", token, SESSION_ID=99999)[1]["error"] == "ACCESS_DENIED"


def test_session_history_refuses_a_user_without_access_to_the_line_by_chat_id_as_the_page_says(http, portal, token):
    """imopenlines-session-history-get.md: "If the user is not a participant in the chat, an error will be returned
    when calling with only the parameter CHAT_ID" (ACCESS_DENIED); "You should use the SESSION_ID parameter; with it,
    no error is returned". `history_checks_sessions` is the stricter portal the page does not describe."""
    connect(http, portal, token)
    _s, body = call(
        http, portal, "imconnector.send.messages", token, CONNECTOR="myconnector", LINE="1", MESSAGES=[inbound("Hi")]
    )
    session = body["result"]["DATA"]["RESULT"][0]["session"]
    chat_id = int(session["CHAT_ID"])
    history = "imopenlines.session.history.get"
    imol.revoke_line_access(portal, "1", "1")  # the token's user (the administrator) loses access to line 1
    status, answer = call(http, portal, history, token, CHAT_ID=chat_id)
    assert answer["error"] == "ACCESS_DENIED" and "sufficient rights" in answer["error_description"]
    assert call(http, portal, history, token, SESSION_ID=session["ID"])[1]["result"]["chatId"] == chat_id
    imol.history_checks_sessions(portal)
    assert call(http, portal, history, token, SESSION_ID=session["ID"])[1]["error"] == "ACCESS_DENIED"
    imol.restore_line_access(portal, "1", "1")
    assert call(http, portal, history, token, CHAT_ID=chat_id)[1]["result"]["chatId"] == chat_id
