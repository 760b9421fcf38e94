"""POST /openlines/connector/ from the Contact Center square's overview: the signed widget token issued at open
names portal and user; a change is believed only once Bitrix24 confirms, now, that the user administers the
portal. What a stranger, an ordinary user and an administrator can make it do (docs/threat-model.md)."""

import time

import pytest
from django.core import signing

from openlines.models import Channel
from placements import widget_token
from portals.models import Portal
from sandbox.standin import rest_imconnector as imc
from tests.conftest import do_install, do_uninstall
from tests.openlines.conftest import CONNECTOR
from tests.placements.frames import is_widget, open_widget, portal_calls, widget_token_of

pytestmark = pytest.mark.django_db


class Opened(str):
    """A widget token, with the AUTH_ID of the open that issued it (what the frame library gives the page)."""

    auth_id = ""


def opened(frame, b24, *, user_id="1", lang="en"):
    fields = b24.placement_post(user_id=user_id, lang=lang)
    response = open_widget(frame, fields)
    assert is_widget(response)
    token = Opened(widget_token_of(response))
    token.auth_id = fields["AUTH_ID"]
    return token


def change(frame, token, *, action="connect", line="1", auth_id=None, **fields):
    data = {"action": action, "connector": CONNECTOR, "line": line, "LANG": "en", **fields}
    if token is not None:
        data["widget_token"] = token
    auth_id = getattr(token, "auth_id", "") if auth_id is None else auth_id
    if auth_id:
        data["AUTH_ID"] = auth_id
    return frame.post("/openlines/connector/", data)


def listed(frame, token, **fields):
    return frame.post("/openlines/connector/", {"widget_token": token, "action": "list", "LANG": "en", **fields})


def resign(token, *, age=0, key=None, salt=widget_token._SALT, **changes):
    """The token's payload, changed and signed again as if issued `age` seconds ago."""
    payload = {**signing.loads(token, salt=widget_token._SALT), **changes}

    class Signer(signing.TimestampSigner):
        def timestamp(self):
            return signing.b62_encode(int(time.time()) - age)

    return Signer(key=key, salt=salt).sign_object(payload, compress=True)


def test_the_page_posts_what_the_endpoint_reads(frame, installed):
    _, b24 = installed
    body = open_widget(frame, b24.placement_post()).content.decode()
    assert 'data-action="/openlines/connector/"' in body and 'data-lang="en"' in body
    assert 'form.set("widget_token", box.dataset.token)' in body and 'form.set("AUTH_ID", auth)' in body
    assert 'act(on ? "disconnect" : "connect", line.id)' in body and 'form.set("connector", connector)' in body


def test_an_admin_connects_a_line_from_the_overview_and_it_lists_connected(frame, installed, standin):
    portal, b24 = installed
    token = opened(frame, b24)
    calls, oauth_requests = portal_calls(b24), len(standin.oauth_requests)

    response = change(frame, token, action="connect", line="2")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["result"] == "connected" and body["secret"]
    assert body["channel"]["endpoint"].endswith(f"/channels/{body['channel']['id']}/messages")
    channel = Channel.objects.get(portal=portal)
    assert (channel.line_id, channel.state, channel.connected_by) == ("2", "connected", "1")
    assert imc.state(b24).lines[(CONNECTOR, "2")]["active"] is True
    # Bitrix24 was asked again who the user is (one batch), then the connect batch; no token was refreshed.
    assert portal_calls(b24) == calls + 2 and len(standin.oauth_requests) == oauth_requests

    answer = listed(frame, opened(frame, b24)).json()
    assert answer["connector"] == CONNECTOR
    assert answer["channels"]["2"]["state"] == "connected" and "1" not in answer["channels"]
    assert body["secret"] not in str(answer)

    assert change(frame, token, action="disconnect", line="2").json()["result"] == "disconnected"
    assert listed(frame, token).json()["channels"]["2"]["state"] == "disconnected"


def test_the_answer_speaks_the_widgets_language(frame, installed):
    _, b24 = installed
    token = opened(frame, b24, lang="de")
    message = change(frame, token, LANG="de").json()["message"]
    assert message == "Verbunden. Kopieren Sie jetzt den geheimen Schlüssel: Er wird nur einmal angezeigt."


def test_the_list_names_the_connector_itself(frame, installed):
    """The page does not know the connector's id: its first list names none, and the answer tells it."""
    _, b24 = installed
    answer = listed(frame, opened(frame, b24))
    assert answer.status_code == 200 and answer.json()["connector"] == CONNECTOR
    assert listed(frame, opened(frame, b24), connector="not_ours").status_code == 400


def test_a_replayed_list_costs_bitrix24_one_listing_a_minute(frame, installed):
    """Any user of the portal may list, as often as he likes: the lines are read from Bitrix24 once a minute."""
    _, b24 = installed
    token = opened(frame, b24, user_id="2")
    before = b24.calls("imopenlines.config.list.get")
    for _ in range(20):
        assert listed(frame, token).status_code == 200
    assert b24.calls("imopenlines.config.list.get") - before == 1


def test_odd_ids_from_bitrix24_are_not_listed(frame, installed):
    _, b24 = installed
    b24.open_lines[:] = [
        {"ID": "²", "LINE_NAME": "Superscript"},
        {"ID": "12", "LINE_NAME": "Fine"},
        {"ID": True, "LINE_NAME": "Boolean"},
        {"LINE_NAME": "No id"},
        {"ID": "1" * 11},
    ]
    answer = listed(frame, opened(frame, b24))
    assert answer.status_code == 200 and answer.json()["lines"] == [{"id": "12", "name": "Fine"}]


def test_an_ordinary_user_sees_the_lines_without_buttons(frame, installed):
    _, b24 = installed
    page = open_widget(frame, b24.placement_post(user_id="2")).content.decode()
    assert 'data-admin=""' in page and 'id="admin-only"' in page
    page = open_widget(frame, b24.placement_post(user_id="1")).content.decode()
    assert 'data-admin="1"' in page and 'id="admin-only"' not in page


# --- refusals: nothing is stored and nothing is sent to Bitrix24 ---------------------------------------


def assert_refused(response, status, error, message=None, *, b24=None):
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"] == error
    if message is not None:
        assert body["error_description"] == message
    assert not Channel.objects.filter(state=Channel.State.CONNECTED).exists()
    if b24 is not None:
        assert not any(line["active"] for line in imc.state(b24).lines.values())


def test_no_token(frame, installed):
    _, b24 = installed
    assert_refused(change(frame, None), 403, "token_missing", "The request carries no widget token.", b24=b24)
    assert_refused(change(frame, ""), 403, "token_missing", "The request carries no widget token.", b24=b24)
    assert_refused(listed(frame, ""), 403, "token_missing")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # the signature
        lambda t: ("." + t[1:]) if not t.startswith(".") else t[1:],  # the payload
        lambda t: resign(t, a=True, key="not-the-secret-key-of-this-deployment-0123456789"),  # forged admin
        lambda t: resign(t, salt="django.core.signing"),  # signed by this deployment, for another purpose
        lambda t: "garbage",
    ],
)
def test_a_tampered_token(frame, installed, tamper):
    _, b24 = installed
    token = opened(frame, b24, user_id="2")
    assert_refused(
        change(frame, tamper(token), auth_id=token.auth_id),
        403,
        "token_tampered",
        "The widget token is not valid.",
        b24=b24,
    )


def test_an_expired_token(frame, installed, settings):
    _, b24 = installed
    token = opened(frame, b24)
    max_age = settings.B24_WIDGET_TOKEN_MAX_AGE
    assert_refused(
        change(frame, resign(token, age=max_age + 60), auth_id=token.auth_id),
        403,
        "token_expired",
        "The widget was open too long. Close it and open it again.",
        b24=b24,
    )
    # Just inside the lifetime it still counts.
    assert change(frame, resign(token, age=max_age - 60), auth_id=token.auth_id).status_code == 200


def test_the_lifetime_comes_from_the_setting(frame, installed, settings):
    _, b24 = installed
    token = opened(frame, b24)
    settings.B24_WIDGET_TOKEN_MAX_AGE = 60
    assert_refused(change(frame, resign(token, age=120), auth_id=token.auth_id), 403, "token_expired", b24=b24)


def test_the_refusal_speaks_the_widgets_language(frame, installed):
    response = change(frame, None, LANG="ru")
    assert response.status_code == 403
    assert response.json()["error_description"] == "В запросе нет токена виджета."


def test_a_user_who_is_not_an_admin_may_not_connect(frame, installed):
    _, b24 = installed
    token = opened(frame, b24, user_id="2")
    for action in ("connect", "disconnect", "rotate", "save"):
        assert_refused(
            change(frame, token, action=action),
            403,
            "not_admin",
            "Only portal administrators may change the channel.",
            b24=b24,
        )


def test_an_ordinary_user_cannot_disconnect_a_connected_line(frame, installed):
    portal, b24 = installed
    assert change(frame, opened(frame, b24)).status_code == 200
    response = change(frame, opened(frame, b24, user_id="2"), action="disconnect")
    assert response.status_code == 403 and response.json()["error"] == "not_admin"
    assert Channel.objects.get(portal=portal).is_connected
    assert imc.state(b24).lines[(CONNECTOR, "1")]["active"] is True


def test_a_token_of_an_uninstalled_portal(client, frame, installed):
    _, b24 = installed
    token = opened(frame, b24)
    assert do_uninstall(client, b24).status_code == 200
    assert_refused(change(frame, token), 403, "not_installed", "The app is not installed on this portal.")
    assert_refused(listed(frame, token), 403, "not_installed")


def test_a_token_from_before_a_reinstall_is_void(client, frame, installed):
    """Uninstalled and installed again within the token's hour: the old frame's token no longer changes anything."""
    portal, b24 = installed
    token = opened(frame, b24)
    assert do_uninstall(client, b24).status_code == 200
    b24.uninstall()
    do_install(client, b24)
    assert_refused(change(frame, token), 403, "not_installed", "The app is not installed on this portal.", b24=b24)
    assert change(frame, opened(frame, b24)).status_code == 200  # a fresh open connects


def test_a_blocked_portal_asks_for_an_administrator(frame, installed):
    portal, b24 = installed
    token = opened(frame, b24)
    Portal.objects.filter(pk=portal.pk).update(status=Portal.Status.BLOCKED)
    for response in (change(frame, token), listed(frame, token)):
        assert response.status_code == 403 and response.json()["error"] == "blocked"
        assert "administrator to open the app once" in response.json()["error_description"]
    assert not Channel.objects.exists()


def test_an_admin_who_lost_the_role_cannot_connect_with_an_old_widget(frame, installed):
    """The widget was opened by an administrator; the role was taken away since: the change asks Bitrix24."""
    _, b24 = installed
    token = opened(frame, b24)
    b24._user("1")["ADMIN"] = False
    assert_refused(
        change(frame, token), 403, "not_admin", "Only portal administrators may change the channel.", b24=b24
    )


def test_a_change_without_the_users_authorization_is_refused(frame, installed):
    _, b24 = installed
    token = opened(frame, b24)
    assert_refused(
        change(frame, token, auth_id=""),
        403,
        "reopen",
        "Your authorization could not be confirmed. Close the page and open it again.",
        b24=b24,
    )


def test_a_change_with_another_users_authorization_is_refused(frame, installed):
    """An ordinary user replays an administrator's widget token (seen in a shared screen, say) with his own
    AUTH_ID: the token names user 1, Bitrix24 says the AUTH_ID is user 2."""
    _, b24 = installed
    admin_token = opened(frame, b24)
    user_auth = b24.placement_post(user_id="2")["AUTH_ID"]
    assert_refused(change(frame, admin_token, auth_id=user_auth), 403, "reopen", b24=b24)


@pytest.mark.parametrize(
    "fields",
    [
        {"action": "enable"},
        {"action": ""},
        {"connector": "other"},
        {"connector": ""},
        {"line": "abc"},
        {"line": "-1"},
        {"line": "1" * 11},
        {"line": "1 OR 1=1"},
        {"line": "١"},
        {"line": ""},
    ],
)
def test_malformed_changes_are_a_400(frame, installed, fields):
    _, b24 = installed
    token = opened(frame, b24)
    data = {
        "widget_token": token,
        "AUTH_ID": token.auth_id,
        "action": "connect",
        "connector": CONNECTOR,
        "line": "1",
        "LANG": "en",
        **fields,
    }
    response = frame.post("/openlines/connector/", data)
    assert_refused(response, 400, "bad_request", "The request is malformed.", b24=b24)


def test_get_is_not_allowed(frame):
    assert frame.get("/openlines/connector/").status_code == 405


def test_an_oversized_body_is_a_400_not_a_500(frame_500, installed):
    response = frame_500.post("/openlines/connector/", {f"f{i}": "x" for i in range(1100)})
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"


def test_a_spent_rest_budget_is_a_429_with_retry_after_not_a_wait(frame, installed, settings):
    """The portal's REST budget is spent (a long export, say): the overview's list is refused at once."""
    from bitrix24 import limits

    portal, b24 = installed
    token = opened(frame, b24, user_id="2")
    settings.B24_RATE_LIMIT_BURST, settings.B24_RATE_LIMIT_PER_SECOND = 2, 0.1
    for _ in range(2):
        limits.reserve(portal.member_id)  # the bucket is full now: the next slot is 10 s away
    before = b24.calls("imopenlines.config.list.get")
    answer = listed(frame, token)
    assert answer.status_code == 429 and answer.json()["error"] == "busy" and int(answer["Retry-After"]) >= 1
    assert b24.calls("imopenlines.config.list.get") == before
