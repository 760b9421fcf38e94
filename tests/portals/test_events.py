"""POST /events/: ONAPPINSTALL, ONAPPUNINSTALL, ONAPPUPDATE; believed only with proof."""
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from placements.models import WidgetSettings
from portals.models import Portal, PortalEvent
from tests.conftest import do_install

pytestmark = pytest.mark.django_db
K = PortalEvent.Kind


def post_event(client, payload, *, as_json=False):
    if as_json:
        nested = {}
        for key, value in payload.items():
            if "[" in key:
                outer, inner = key.rstrip("]").split("[", 1)
                nested.setdefault(outer, {})[inner] = value
            else:
                nested[key] = value
        return client.post("/events/", json.dumps(nested), content_type="application/json")
    return client.post("/events/", payload)


# --- ONAPPINSTALL -------------------------------------------------------------------------------------

def test_onappinstall_right_after_a_verified_install_saves_the_token(client, b24):
    portal = do_install(client, b24, event=False)
    assert portal.status == Portal.Status.NEW
    response = post_event(client, b24.event_payload("ONAPPINSTALL", with_tokens=False))
    assert response.status_code == 200
    portal.refresh_from_db()
    assert portal.application_token == b24.application_token
    assert portal.status == Portal.Status.ACTIVE
    assert portal.app_version == "1"
    assert portal.events.filter(kind=K.APPLICATION_TOKEN_SAVED, detail__via="recent_install").exists()


def test_onappinstall_as_json(client, b24):
    do_install(client, b24, event=False)
    response = post_event(client, b24.event_payload("ONAPPINSTALL", with_tokens=False), as_json=True)
    assert response.status_code == 200
    assert Portal.objects.get(member_id=b24.member_id).application_token == b24.application_token


def test_onappinstall_with_tokens_is_confirmed_by_the_oauth_server(client, b24, standin):
    # No install POST at all: the event's own tokens prove it.
    b24.install_post()
    before = len(standin.oauth_requests)
    response = post_event(client, b24.event_payload("ONAPPINSTALL", with_tokens=True))
    assert response.status_code == 200, response.content
    assert len(standin.oauth_requests) == before + 1
    portal = Portal.objects.get(member_id=b24.member_id)
    assert portal.application_token == b24.application_token
    assert portal.status == Portal.Status.ACTIVE
    assert portal.has_tokens
    # Installed without our install page: the event handler bound the placement itself.
    assert [p["PLACEMENT"] for p in b24.bindings["placements"]] == ["CONTACT_CENTER"]


def test_onappinstall_with_an_access_token_only_is_checked_at_the_stored_endpoint(client, b24):
    portal = do_install(client, b24, event=False)
    portal.installed_at = timezone.now() - timedelta(days=1)  # outside the "moments ago" window
    portal.save()
    payload = b24.event_payload("ONAPPINSTALL", with_tokens=True)
    del payload["auth[refresh_token]"]
    assert post_event(client, payload).status_code == 200
    assert b24.calls("app.info") >= 1
    assert Portal.objects.get(pk=portal.pk).application_token == b24.application_token


def test_forged_onappinstall_cannot_plant_a_token(client, b24):
    portal = do_install(client, b24, event=False)
    portal.installed_at = timezone.now() - timedelta(hours=2)
    portal.save()
    forged = b24.event_payload("ONAPPINSTALL", with_tokens=False, application_token="attacker-token")
    response = post_event(client, forged)
    assert response.status_code == 403
    portal.refresh_from_db()
    assert portal.application_token == ""
    assert portal.events.filter(kind=K.EVENT_REJECTED).exists()
    # ...so a forged uninstall with the attacker's token is refused too.
    uninstall = b24.event_payload("ONAPPUNINSTALL", application_token="attacker-token")
    assert post_event(client, uninstall).status_code == 403
    assert Portal.objects.get(pk=portal.pk).status == Portal.Status.NEW


def test_forged_onappinstall_with_fake_tokens(client, b24, standin):
    do_install(client, b24, event=False)
    payload = b24.event_payload("ONAPPINSTALL", with_tokens=True, application_token="attacker-token")
    payload["auth[refresh_token]"] = "f" * 32
    payload["auth[access_token]"] = "e" * 32
    assert post_event(client, payload).status_code == 403
    assert Portal.objects.get(member_id=b24.member_id).application_token == ""


def test_onappinstall_with_tokens_of_another_portal(client, b24, standin):
    do_install(client, b24, event=False)
    other = standin.add_portal()
    other.install_post()
    payload = b24.event_payload("ONAPPINSTALL", with_tokens=False, application_token="attacker-token")
    foreign = other.event_payload("ONAPPINSTALL", with_tokens=True)
    for key in ("auth[access_token]", "auth[refresh_token]"):
        payload[key] = foreign[key]
    Portal.objects.filter(member_id=b24.member_id).update(installed_at=timezone.now() - timedelta(hours=2))
    assert post_event(client, payload).status_code == 403
    assert Portal.objects.get(member_id=b24.member_id).application_token == ""


def test_second_onappinstall_with_another_token_is_refused(client, installed):
    portal, b24 = installed
    response = post_event(client, b24.event_payload("ONAPPINSTALL", with_tokens=False, application_token="other"))
    assert response.status_code == 403
    assert Portal.objects.get(pk=portal.pk).application_token == b24.application_token


def test_onappinstall_for_an_unknown_portal_without_tokens(client, b24):
    response = post_event(client, b24.event_payload("ONAPPINSTALL", with_tokens=False))
    assert response.status_code == 404
    assert not Portal.objects.exists()


# --- ONAPPUNINSTALL -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ONAPPUNINSTALL", "ONAPPSUNINSTALL"])
def test_uninstall_with_the_right_token(client, installed, name):
    portal, b24 = installed
    WidgetSettings.objects.create(portal=portal, enabled=True, open_line_id="1")
    payload = b24.event_payload("ONAPPUNINSTALL")
    payload["event"] = name
    assert post_event(client, payload).status_code == 200
    portal.refresh_from_db()
    assert portal.status == Portal.Status.UNINSTALLED
    assert portal.uninstalled_at is not None
    assert (portal.access_token, portal.refresh_token, portal.application_token) == ("", "", "")
    # CLEAN=0: the settings stay.
    assert WidgetSettings.objects.filter(portal=portal).exists()
    assert portal.events.filter(kind=K.UNINSTALLED).exists()


def test_uninstall_with_clean_deletes_settings_and_keeps_history(client, installed):
    portal, b24 = installed
    WidgetSettings.objects.create(portal=portal, enabled=True)
    history = portal.events.count()
    assert post_event(client, b24.event_payload("ONAPPUNINSTALL", data={"CLEAN": "1"})).status_code == 200
    assert not WidgetSettings.objects.filter(portal=portal).exists()
    assert Portal.objects.filter(pk=portal.pk).exists()
    assert portal.events.count() == history + 2
    assert portal.events.filter(kind=K.DATA_CLEANED).exists()


@pytest.mark.parametrize("token", ["", "wrong", None])
def test_uninstall_with_a_wrong_or_missing_token_changes_nothing(client, installed, token):
    portal, b24 = installed
    payload = b24.event_payload("ONAPPUNINSTALL")
    if token is None:
        del payload["auth[application_token]"]
    else:
        payload["auth[application_token]"] = token
    assert post_event(client, payload).status_code == 403
    after = Portal.objects.get(pk=portal.pk)
    assert after.status == Portal.Status.ACTIVE and after.has_tokens
    assert after.events.filter(kind=K.EVENT_REJECTED).exists()


def test_second_uninstall_is_refused(client, installed):
    portal, b24 = installed
    payload = b24.event_payload("ONAPPUNINSTALL")
    assert post_event(client, payload).status_code == 200
    assert post_event(client, payload).status_code == 403


# --- ONAPPUPDATE ----------------------------------------------------------------------------------------

def test_update_records_the_version(client, installed):
    portal, b24 = installed
    response = post_event(client, b24.event_payload("ONAPPUPDATE", data={"VERSION": "3", "PREVIOUS_VERSION": "1"}))
    assert response.status_code == 200
    portal.refresh_from_db()
    assert portal.app_version == "3"
    assert portal.events.filter(kind=K.UPDATED, detail__new="3").exists()


def test_update_with_a_wrong_token(client, installed):
    portal, b24 = installed
    payload = b24.event_payload("ONAPPUPDATE", data={"VERSION": "3"}, application_token="nope")
    assert post_event(client, payload).status_code == 403
    assert Portal.objects.get(pk=portal.pk).app_version == "1"


# --- bad bodies -----------------------------------------------------------------------------------------

def test_unknown_event(client, installed):
    portal, b24 = installed
    payload = b24.event_payload("ONAPPUPDATE")
    payload["event"] = "ONCRMDEALADD"
    assert post_event(client, payload).status_code == 400


def test_unknown_portal(client, installed, standin):
    _portal, b24 = installed
    payload = b24.event_payload("ONAPPUNINSTALL")
    payload["auth[member_id]"] = "f" * 32
    assert post_event(client, payload).status_code == 404


@pytest.mark.parametrize("body,content_type", [
    ("not json", "application/json"),
    ("[1, 2]", "application/json"),
    (json.dumps({"event": "ONAPPUNINSTALL"}), "application/json"),
    (json.dumps({"event": "ONAPPUNINSTALL", "auth": "x"}), "application/json"),
    (json.dumps({"event": "ONAPPUNINSTALL", "auth": {"member_id": "a b"}}), "application/json"),
    (json.dumps({"event": "ONAPPUNINSTALL", "auth": {"member_id": "abc", "application_token": {"x": 1}}}),
     "application/json"),
    ("event=ONAPPUNINSTALL&auth[member_id]=abc&auth[member_id][x]=1", "application/x-www-form-urlencoded"),
    ("auth[member_id]=abc", "application/x-www-form-urlencoded"),
])
def test_malformed_bodies_are_400(client, installed, body, content_type):
    portal, _b24 = installed
    response = client.post("/events/", body, content_type=content_type)
    assert response.status_code == 400
    assert Portal.objects.get(pk=portal.pk).status == Portal.Status.ACTIVE


def test_get_is_not_allowed(client):
    assert client.get("/events/").status_code == 405


# --- addresses carried by events (portals that move) ------------------------------------------------------

def test_event_addresses_are_never_contacted_nor_stored(client, b24, standin):
    portal = do_install(client, b24, event=False)
    Portal.objects.filter(pk=portal.pk).update(installed_at=timezone.now() - timedelta(hours=1))
    recorder = standin.add_recorder()
    payload = b24.event_payload("ONAPPINSTALL", with_tokens=True)
    del payload["auth[refresh_token]"]
    payload["auth[domain]"] = recorder.address
    payload["auth[client_endpoint]"] = f"http://{recorder.address}/rest/"
    assert post_event(client, payload).status_code == 200
    assert recorder.requests == []
    stored = Portal.objects.get(pk=portal.pk)
    assert stored.domain == b24.domain and stored.client_endpoint == b24.client_endpoint


def test_event_tokens_reveal_a_move_through_the_oauth_server(client, b24):
    portal = do_install(client, b24, event=False)
    old = b24.domain
    new = b24.rename()
    payload = b24.event_payload("ONAPPINSTALL", with_tokens=True)
    assert post_event(client, payload).status_code == 200
    stored = Portal.objects.get(pk=portal.pk)
    assert stored.domain == new
    assert stored.events.filter(kind=K.DOMAIN_CHANGED, detail__old=old, detail__new=new).exists()


def test_uninstall_is_keyed_by_member_id_whatever_domain_it_names(client, installed, standin):
    portal, b24 = installed
    payload = b24.event_payload("ONAPPUNINSTALL")
    payload["auth[domain]"] = "elsewhere.bitrix24.com"
    assert post_event(client, payload).status_code == 200
    stored = Portal.objects.get(pk=portal.pk)
    assert stored.status == Portal.Status.UNINSTALLED and stored.domain == b24.domain


@pytest.mark.parametrize("version", ["", "x" * 40, "<script>", "1 OR 1"])
def test_update_with_a_malformed_version_changes_nothing(client, installed, version):
    portal, b24 = installed
    payload = b24.event_payload("ONAPPUPDATE", data={"VERSION": version})
    assert post_event(client, payload).status_code == 400
    assert Portal.objects.get(pk=portal.pk).app_version == "1"


def test_update_version_as_a_json_number(client, installed):
    portal, b24 = installed
    body = {"event": "ONAPPUPDATE", "data": {"VERSION": 4}, "auth": {"member_id": portal.member_id,
                                                                        "application_token": b24.application_token}}
    response = client.post("/events/", json.dumps(body), content_type="application/json")
    assert response.status_code == 200
    assert Portal.objects.get(pk=portal.pk).app_version == "4"
