"""SETTING_CONNECTOR (api-reference/widgets/setting-connector.md): the page Bitrix24 opens for our connector
and a line; connect = imconnector.activate + connector.data.set + status; disconnect; only administrators."""

import pytest

from openlines.models import Channel
from sandbox.standin import rest_imconnector as imc
from tests.openlines.conftest import CONNECTOR, act, open_settings, visible_ids

pytestmark = pytest.mark.django_db


def test_the_page_shows_the_connect_form_to_an_administrator(frame, installed):
    portal, b24 = installed
    response, _auth = open_settings(frame, b24)
    body = response.content.decode()
    assert response.status_code == 200
    assert "connect" in visible_ids(body) and "disconnect" not in visible_ids(body)
    assert response["Content-Security-Policy"] == f"frame-ancestors http://{b24.domain}"


def test_the_page_names_the_line_as_the_portal_does(frame, installed):
    """The line's name comes from imopenlines.config.list.get (the overview's list, reused for a minute)."""
    portal, b24 = installed
    b24.open_lines[:] = [{"ID": "1", "LINE_NAME": "Support <EU>", "ACTIVE": "Y"}]
    body = open_settings(frame, b24)[0].content.decode()
    assert 'id="line-name">Support &lt;EU&gt;</strong>' in body
    before = b24.calls("imopenlines.config.list.get")
    open_settings(frame, b24)
    assert b24.calls("imopenlines.config.list.get") == before


def test_the_page_names_the_line_by_number_when_bitrix24_cannot_list_lines(frame, installed):
    portal, b24 = installed
    b24.fail_next("imopenlines.config.list.get", "ACCESS_DENIED", 403)
    response, _auth = open_settings(frame, b24, line="2")
    assert response.status_code == 200
    assert 'id="line-name">Open Line 2</strong>' in response.content.decode()


def test_an_ordinary_user_sees_no_buttons_and_cannot_connect(frame, installed):
    portal, b24 = installed
    response, _auth = open_settings(frame, b24, user_id="2")
    assert 'id="connect"' not in response.content.decode() and 'id="admin-only"' in response.content.decode()
    answer = act(frame, b24, "connect", user_id="2")
    assert answer.status_code == 403 and answer.json()["error"] == "not_admin"
    assert not Channel.objects.exists()
    assert imc.state(b24).lines == {}


def test_an_unverified_open_is_refused(frame, installed):
    portal, b24 = installed
    fields = {**open_settings.__globals__["setting_connector_post"](b24), "AUTH_ID": "forged"}
    response = frame.post("/placement/", fields)
    assert response.status_code == 403


def test_an_unknown_connector_is_a_clear_400(frame, installed):
    portal, b24 = installed
    fields = b24.placement_post(placement="SETTING_CONNECTOR", options={"CONNECTOR": "other", "LINE": "1"})
    assert frame.post("/placement/", fields).status_code == 400


def test_connect_activates_sets_data_and_shows_the_secret_once(frame, installed, receiver):
    portal, b24 = installed
    answer = act(frame, b24, "connect", webhook_url=receiver.url, name="Site chat")
    assert answer.status_code == 200
    body = answer.json()
    secret = body["secret"]
    channel = Channel.objects.get(public_id=body["channel"]["id"])
    assert channel.is_connected and channel.secret == secret and channel.line_id == "1"
    # Bitrix24 now has the connector active and configured on line 1, with our channel's data.
    line = imc.state(b24).lines[(CONNECTOR, "1")]
    assert line["active"] is True and line["data"]["ID"] == str(channel.public_id)
    assert line["data"]["NAME"] == "Site chat"
    # Stored encrypted; the page opened again never shows it.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT secret FROM openlines_channel WHERE id = %s", [channel.pk])
        assert secret not in cursor.fetchone()[0]
    page, _auth = open_settings(frame, b24, ACTIVE_STATUS=True, CONNECTION_STATUS=True, REGISTER_STATUS=True)
    assert secret not in page.content.decode() and "disconnect" in visible_ids(page.content.decode())
    assert "connect" not in visible_ids(page.content.decode())
    assert body["channel"]["endpoint"] in page.content.decode()


def test_rotate_makes_a_new_secret(frame, channel):
    row, secret, b24 = channel
    answer = act(frame, b24, "rotate")
    assert answer.status_code == 200 and answer.json()["secret"] != secret
    row.refresh_from_db()
    assert row.secret == answer.json()["secret"]


def test_disconnect_deactivates_and_revokes_the_credentials(frame, channel):
    row, secret, b24 = channel
    answer = act(frame, b24, "disconnect")
    assert answer.status_code == 200
    row.refresh_from_db()
    assert row.state == Channel.State.DISCONNECTED and row.secret == ""
    assert imc.state(b24).lines[(CONNECTOR, "1")]["active"] is False


def test_a_webhook_to_a_private_address_is_refused_in_production(frame, installed, settings):
    settings.OPENLINES_ALLOW_PRIVATE_WEBHOOKS = False
    portal, b24 = installed
    for url in ("http://example.com/hook", "https://127.0.0.1/hook", "https://10.0.0.5/x", "https://intranet/x"):
        answer = act(frame, b24, "connect", webhook_url=url)
        assert answer.status_code == 400 and answer.json()["error"] == "bad_webhook_url", url
    assert not Channel.objects.exists()


def test_bitrix24_refusing_leaves_nothing_connected(frame, installed):
    portal, b24 = installed
    imc.state(b24).connectors.clear()  # the connector is gone from the portal
    answer = act(frame, b24, "connect")
    assert answer.status_code == 502 and answer.json()["error"] == "bitrix24_refused"
    assert not Channel.objects.filter(state=Channel.State.CONNECTED).exists()


def test_the_contact_center_square_shows_the_overview_and_lists_the_channel_states(frame, channel):
    """The square's page carries the overview; its list action (read-only, any user) gives each line's state."""
    from tests.placements.frames import open_widget, widget_token_of

    row, secret, b24 = channel
    for user_id in ("1", "2"):
        page = open_widget(frame, b24.placement_post(user_id=user_id))
        body = page.content.decode()
        assert 'id="openlines-overview"' in body and 'id="open-lines-table"' in body
        assert ('data-admin="1"' in body) == (user_id == "1")
        answer = frame.post(
            "/openlines/connector/", {"widget_token": widget_token_of(page), "action": "list", "connector": CONNECTOR}
        )
        assert answer.status_code == 200
        assert answer.json()["channels"]["1"]["state"] == "connected"
        assert secret not in answer.content.decode()


def test_the_list_action_needs_a_genuine_widget_token(frame, channel):
    answer = frame.post("/openlines/connector/", {"widget_token": "forged", "action": "list", "connector": CONNECTOR})
    assert answer.status_code == 403 and answer.json()["error"] == "token_tampered"


def test_the_overview_lists_every_open_line_page_by_page(frame, channel):
    """imopenlines-config-list-get.md pages with PARAMS.limit (at most 200) and offset, without `next`."""
    from bitrix24 import limits
    from tests.placements.frames import open_widget, widget_token_of

    row, secret, b24 = channel
    b24.open_lines[:] = [{"ID": str(i), "LINE_NAME": f"Line {i}", "ACTIVE": "Y"} for i in range(1, 451)]
    # Connecting opened SETTING_CONNECTOR, which read (and kept for a minute) the two lines there were then.
    limits.cache.delete(f"b24widget:openlines:lines:{row.portal.pk}:{row.portal.member_id}")
    page = open_widget(frame, b24.placement_post())
    before = b24.calls("imopenlines.config.list.get")
    answer = frame.post(
        "/openlines/connector/", {"widget_token": widget_token_of(page), "action": "list", "connector": CONNECTOR}
    ).json()
    assert [line["id"] for line in answer["lines"]] == [str(i) for i in range(1, 451)]
    assert b24.calls("imopenlines.config.list.get") - before == 3  # 200 + 200 + 50
    assert answer["channels"]["1"]["state"] == "connected" and "2" not in answer["channels"]


def test_disconnect_revokes_the_credentials_even_when_bitrix24_refuses(client, frame, channel):
    """The line is gone in Bitrix24 (imconnector.activate answers NOT_ACTIVE_LINE): the secret stops working
    all the same, and the answer says what Bitrix24 said."""
    from tests.openlines.conftest import message, signed

    row, secret, b24 = channel
    b24.open_lines[:] = [line for line in b24.open_lines if str(line["ID"]) != "1"]
    answer = act(frame, b24, "disconnect")
    assert answer.status_code == 200 and answer.json()["bitrix24_error"] == "NOT_ACTIVE_LINE"
    assert "NOT_ACTIVE_LINE" in answer.json()["message"]
    row.refresh_from_db()
    assert row.state == Channel.State.DISCONNECTED and row.secret == "" and "NOT_ACTIVE_LINE" in row.last_error
    assert signed(client, row, secret, message()).status_code == 409


def test_an_ordinary_user_does_not_see_the_webhook_address(frame, channel):
    """A webhook address may carry the outside system's own token in its query: administrators only."""
    row, secret, b24 = channel
    from openlines.models import Channel as Model

    Model.objects.filter(pk=row.pk).update(webhook_url="https://hooks.example.com/in?token=outside-secret")
    assert "outside-secret" in open_settings(frame, b24, ACTIVE_STATUS=True)[0].content.decode()
    assert "outside-secret" not in open_settings(frame, b24, user_id="2", ACTIVE_STATUS=True)[0].content.decode()


def test_the_channels_link_in_bitrix24_answers_without_a_secret(client, channel):
    """connector.data.set URL / URL_IM point at /channels/<id>/: it answers what the channel is."""
    row, secret, b24 = channel
    line = imc.state(b24).lines[(CONNECTOR, "1")]
    path = line["data"]["URL"].split("//", 1)[1].split("/", 1)[1]
    answer = client.get("/" + path)
    assert answer.status_code == 200, answer.content
    from openlines.lifecycle import inbound_url

    assert answer.json() == {
        "channel": str(row.public_id),
        "connector": CONNECTOR,
        "state": "connected",
        "messages": inbound_url(row),
    }
    assert secret not in answer.content.decode()


@pytest.mark.parametrize(
    "method, path, status, code",
    [
        ("get", "/channels/{id}/messages", 405, "method_not_allowed"),
        ("post", "/channels/not-a-channel/messages", 404, "unknown_channel"),
        ("post", "/channels/", 404, "unknown_channel"),
        ("get", "/channels/00000000-0000-4000-8000-000000000000/", 404, "unknown_channel"),
        ("post", "/channels/{id}/", 405, "method_not_allowed"),
    ],
)
def test_every_channel_address_answers_json(client, channel, method, path, status, code):
    row, secret, b24 = channel
    answer = getattr(client, method)(path.format(id=row.public_id))
    assert answer.status_code == status and answer["Content-Type"] == "application/json"
    assert answer.json()["error"] == code
