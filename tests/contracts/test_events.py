"""App event contract: payloads b24pysdk's own parser accepts, delivered only after installFinish.

Doc paths: api-reference/common/events/on-app-install.md, on-app-update.md, on-app-uninstall.md,
settings/app-installation/installation-finish.md, settings/oauth/simple-way.md, api-reference/events/event-bind.md;
the offline queue: api-reference/events/offline-events.md, event-offline-get.md, -list.md, -clear.md, -error.md,
api-reference/common/system/feature-get.md.
"""

from urllib.parse import parse_qsl

from b24pysdk.credentials import OAuthEventData

from tests.contracts.conftest import OTHER_ID, token_for


def test_onappinstall_parses_with_its_required_tokens(portal):
    """on-app-install.md: auth[access_token] and auth[refresh_token] are marked required."""
    event = OAuthEventData.from_dict(portal.event_payload("ONAPPINSTALL"))
    assert event.event == "ONAPPINSTALL" and event.auth.member_id == portal.member_id
    assert event.auth.oauth_token.access_token and event.auth.oauth_token.refresh_token
    assert event.auth.application_token == portal.application_token
    assert event.data["INSTALLED"] == "Y" and event.auth.user_id == 1


def test_onappupdate_parses_and_carries_the_updated_application_token(portal):
    """on-app-update.md: VERSION, PREVIOUS_VERSION, tokens, and "the updated application_token"."""
    before = portal.application_token
    event = OAuthEventData.from_dict(portal.update_app())
    assert event.data["VERSION"] == "2" and event.data["PREVIOUS_VERSION"] == "1"
    assert event.auth.application_token == portal.application_token != before
    assert event.auth.oauth_token.refresh_token


def test_onappuninstall_parses_without_tokens(portal):
    """on-app-uninstall.md: data[CLEAN], auth without tokens or status."""
    event = OAuthEventData.from_dict(portal.event_payload("ONAPPUNINSTALL", data={"CLEAN": "1"}))
    assert event.data["CLEAN"] == "1" and event.auth.oauth_token is None and event.auth.status is None


def test_a_forged_tokenless_install_event_can_still_be_built(portal):
    """Tests need what an attacker sends: the SDK parses it, with no token to prove it."""
    event = OAuthEventData.from_dict(
        portal.event_payload("ONAPPINSTALL", with_tokens=False, application_token="attacker")
    )
    assert event.auth.oauth_token is None and event.auth.application_token == "attacker"


def test_an_install_event_with_another_apps_tokens(portal):
    """A second app's genuine tokens (StandIn.add_app): they prove the portal, not our app."""
    payload = portal.event_payload("ONAPPINSTALL", client_id=OTHER_ID)
    token = payload["auth[access_token]"]
    assert portal._standin._access[token].client_id == OTHER_ID


def test_no_event_before_install_finish_and_form_encoding(tls_standin, http_recorder):
    """installation-finish.md: "Events will not be sent to the handler, even after a successful event.bind"."""
    portal = tls_standin.add_portal()
    portal.install_post()
    with tls_standin.lock:
        portal.bindings["events"].append(
            {"id": 1, "event": "ONAPPINSTALL", "handler": http_recorder.url, "auth_type": "0"}
        )
    assert portal.deliver_event("ONAPPINSTALL") == []
    portal.finish_install()
    [delivered] = portal.deliver_event("ONAPPINSTALL", timeout=5)
    assert delivered["error"] == "" and delivered["status"] == 404  # the recorder's answer
    form = dict(parse_qsl(http_recorder.requests[-1]["body"]))
    assert form["event"] == "ONAPPINSTALL" and form["auth[access_token]"]


def test_the_offline_queue_reads_with_b24pysdk(sdk, portal):
    """b24pysdk's own objects (objects/event/offline.py: MESSAGE_ID an integer, EVENT_DATA a dict) parse what the
    stand-in answers: get with clear=0 gives a process_id, list shows it, error and clear take it."""
    from b24pysdk import Client

    client = Client(token_for(portal))
    assert client.feature.get("rest_offline_extended").result == {"value": "Y"}
    assert client.event.bind("ONCRMLEADADD", "", event_type="offline").result is True
    portal.deliver_event("ONCRMLEADADD", data={"FIELDS": {"ID": "5"}})
    portal.deliver_event("ONCRMLEADADD", data={"FIELDS": {"ID": "6"}})
    got = client.event.offline.get(clear=False)
    process = got.result["process_id"]
    first, second = got.values
    assert (first.event_name, first.event_data, first.message_id) == ("ONCRMLEADADD", {"FIELDS": {"ID": "5"}}, 1)
    assert [(e.process_id, e.error) for e in client.event.offline.list().values] == [(process, False)] * 2
    assert client.event.offline.error(process, message_id=[second.message_id]).result is True
    assert client.event.offline.clear(process, bitrix_id=[first.bitrix_id]).result is True
    [left] = client.event.offline.list().values
    assert (left.bitrix_id, left.error) == (second.bitrix_id, True)
