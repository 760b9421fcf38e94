"""POST /events/: ONAPPINSTALL, ONAPPUNINSTALL, ONAPPUPDATE; believed only with proof.

The request does the cheap checks (a 4xx stores nothing) and stores the event; its proof is checked
where it is processed. These unit tests process the inbox in the test process (tests.conftest.deliver,
no broker); the real worker is exercised in tests/portals/test_worker.py. Three senders are tried on
each: a stranger (knows a member_id, nothing else), an ordinary user of the portal (holds genuine tokens
of our app and the APPLICATION_TOKEN every placement POST carries), and an administrator (whose grant is
the only thing that may change an install).
"""

import json

import pytest

from inbox import queue as inbox
from inbox.models import InboxItem
from openlines.models import Channel
from portals import tokens
from portals.models import Portal, PortalEvent, Rejection, token_digest
from tests.conftest import deliver, do_install, do_uninstall
from tests.helpers import portal_snapshot as snapshot
from tests.placements.frames import is_widget, open_widget

pytestmark = pytest.mark.django_db
K = PortalEvent.Kind
State = InboxItem.State


def post_event(client, payload, *, as_json=False):
    """POST the event and process what was stored; the response carries the InboxItem as `.item`."""
    if as_json:
        nested = {}
        for key, value in payload.items():
            if "[" in key:
                outer, inner = key.rstrip("]").split("[", 1)
                nested.setdefault(outer, {})[inner] = value
            else:
                nested[key] = value
        response, item = deliver(client, json.dumps(nested), content_type="application/json")
    else:
        response, item = deliver(client, payload)
    response.item = item
    return response


def done(response, outcome=None) -> bool:
    assert response.status_code == 200, response.content[:300]
    assert response.item.state == State.DONE, (response.item.state, response.item.last_error)
    return outcome is None or response.item.outcome == outcome


def rejected(response, reason: str) -> bool:
    """Stored (200 at once), then refused where it was processed: final, with its reason."""
    assert response.status_code == 200, response.content[:300]
    assert response.item.state == State.REJECTED, (response.item.state, response.item.outcome)
    return reason in response.item.last_error


def user_event(b24, event, *, application_token, **kwargs):
    """An event forged by ordinary user 2 with his own genuine tokens of our app."""
    return b24.event_payload(event, with_tokens=True, user_id="2", application_token=application_token, **kwargs)


# --- ONAPPINSTALL -------------------------------------------------------------------------------------


def test_the_install_post_stores_the_application_token_and_onappinstall_confirms_it(client, b24, standin):
    portal = do_install(client, b24, event=False)
    assert portal.application_token == b24.application_token  # from the install POST's APPLICATION_TOKEN
    before = len(standin.oauth_requests)
    response = post_event(client, b24.event_payload("ONAPPINSTALL"))
    assert response.json()["result"] == "accepted" and done(response, "install confirmed")
    portal.refresh_from_db()
    assert portal.status == Portal.Status.ACTIVE and portal.app_version == "1"
    assert len(standin.oauth_requests) == before  # nothing to prove: the token is the one we hold


def test_a_lost_onappinstall_loses_nothing(client, b24):
    """Bitrix24 never resends a failed event: the install POST alone completes the install."""
    portal = do_install(client, b24, event=False)
    assert is_widget(open_widget(client, b24.placement_post(user_id="2")))
    portal.refresh_from_db()
    assert portal.status == Portal.Status.ACTIVE and portal.application_token == b24.application_token


def test_onappinstall_as_json(client, b24):
    do_install(client, b24, event=False)
    assert post_event(client, b24.event_payload("ONAPPINSTALL"), as_json=True).status_code == 200
    assert Portal.objects.get(member_id=b24.member_id).status == Portal.Status.ACTIVE


def test_onappinstall_with_an_administrators_tokens_installs(client, b24, standin):
    # No install POST at all (handler set in the version card): the event's own tokens prove it.
    b24.install_post()
    before = len(standin.oauth_requests)
    response = post_event(client, b24.event_payload("ONAPPINSTALL", with_tokens=True))
    assert done(response, "application_token saved")
    assert len(standin.oauth_requests) == before + 1
    portal = Portal.objects.get(member_id=b24.member_id)
    assert portal.application_token == b24.application_token
    assert portal.status == Portal.Status.ACTIVE and portal.has_tokens and portal.installed_by == "1"
    assert [p["PLACEMENT"] for p in b24.bindings["placements"]] == ["CONTACT_CENTER"]


def test_an_ordinary_user_cannot_take_over_the_install_with_onappinstall(client, installed):
    """His own genuine tokens, an application_token of his choosing: refused, and nothing changes."""
    portal, b24 = installed
    Channel.objects.create(portal=portal, connector_id="b24widget_http", line_id="1", secret="channel-secret")
    before = snapshot(portal)
    response = post_event(client, user_event(b24, "ONAPPINSTALL", application_token="attacker-token"))
    assert rejected(response, "not an administrator")
    assert snapshot(portal) == before
    # Bitrix24's real token still works, and his own uninstall (CLEAN=1) is refused.
    forged = user_event(b24, "ONAPPUNINSTALL", application_token="attacker-token", data={"CLEAN": "1"})
    assert post_event(client, forged).status_code == 403
    assert snapshot(portal) == before
    b24.version = 2
    assert done(post_event(client, b24.event_payload("ONAPPUPDATE", data={"VERSION": "2"})), "updated")


def test_an_ordinary_users_uninstall_with_the_real_application_token_is_refused(client, installed):
    """Every placement POST tells every user the APPLICATION_TOKEN: it alone cannot uninstall the portal."""
    portal, b24 = installed
    Channel.objects.create(portal=portal, connector_id="b24widget_http", line_id="1", secret="channel-secret")
    learned = b24.placement_post(user_id="2")["APPLICATION_TOKEN"]
    before = snapshot(portal)
    response = post_event(client, b24.event_payload("ONAPPUNINSTALL", application_token=learned, data={"CLEAN": "1"}))
    assert rejected(response, "the app is still installed on the portal")
    assert snapshot(portal) == before


def test_a_strangers_tokenless_onappinstall_plants_nothing(client, b24):
    """Even moments after a verified install POST, a token-less ONAPPINSTALL with another token is refused."""
    portal = do_install(client, b24, event=False)
    before = snapshot(portal)
    response = post_event(
        client, b24.event_payload("ONAPPINSTALL", with_tokens=False, application_token="attacker-token")
    )
    assert rejected(response, "without an administrator's tokens")
    assert snapshot(portal) == before
    assert (
        post_event(client, b24.event_payload("ONAPPUNINSTALL", application_token="attacker-token")).status_code == 403
    )
    assert snapshot(portal) == before


def test_forged_onappinstall_with_fake_tokens(client, b24):
    portal = do_install(client, b24, event=False)
    before = snapshot(portal)
    payload = b24.event_payload("ONAPPINSTALL", with_tokens=True, application_token="attacker-token")
    payload["auth[refresh_token]"] = "f" * 32
    payload["auth[access_token]"] = "e" * 32
    assert rejected(post_event(client, payload), "not an administrator's (oauth_invalid_grant)")
    assert snapshot(portal) == before


def test_onappinstall_with_an_administrators_tokens_of_another_portal(client, b24, standin):
    portal = do_install(client, b24, event=False)
    before = snapshot(portal)
    other = standin.add_portal()
    other.install_post()
    payload = b24.event_payload("ONAPPINSTALL", application_token="attacker-token")
    foreign = other.event_payload("ONAPPINSTALL", with_tokens=True)
    for key in ("auth[access_token]", "auth[refresh_token]"):
        payload[key] = foreign[key]
    assert rejected(post_event(client, payload), "wrong_member")
    assert snapshot(portal) == before


def test_onappinstall_for_an_unknown_portal_without_tokens(client, b24):
    assert rejected(
        post_event(client, b24.event_payload("ONAPPINSTALL", with_tokens=False)), "without an administrator's tokens"
    )
    assert not Portal.objects.exists()


def test_a_reinstall_replaces_the_application_token(client, installed):
    """A reinstall over a record that is still active: the new token is Bitrix24's from now on."""
    portal, b24 = installed
    old = portal.application_token
    do_install(client, b24)  # the stand-in mints a new application_token for the reinstall
    portal.refresh_from_db()
    assert portal.application_token == b24.application_token != old
    assert done(post_event(client, b24.event_payload("ONAPPUPDATE", data={"VERSION": "2"})))
    assert (
        post_event(
            client, b24.event_payload("ONAPPUPDATE", with_tokens=False, data={"VERSION": "3"}, application_token=old)
        ).status_code
        == 403
    )


# --- ONAPPUNINSTALL -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ONAPPUNINSTALL", "ONAPPSUNINSTALL"])
def test_a_real_uninstall(client, installed, name):
    portal, b24 = installed
    Channel.objects.create(portal=portal, connector_id="b24widget_http", line_id="1", secret="channel-secret")
    response = do_uninstall(client, b24, name=name)
    assert response.status_code == 200 and response.inbox_item.outcome == "uninstalled"
    portal.refresh_from_db()
    assert portal.status == Portal.Status.UNINSTALLED and portal.uninstalled_at is not None
    assert (portal.access_token, portal.refresh_token, portal.application_token) == ("", "", "")
    assert Channel.objects.filter(portal=portal).exists()  # CLEAN=0: the channels (history) stay
    assert portal.events.filter(kind=K.UNINSTALLED).exists()


def test_uninstall_with_clean_deletes_the_apps_data_and_keeps_history(client, installed):
    portal, b24 = installed
    Channel.objects.create(portal=portal, connector_id="b24widget_http", line_id="1", secret="channel-secret")
    history = portal.events.count()
    assert do_uninstall(client, b24, clean=True).status_code == 200
    assert not Channel.objects.filter(portal=portal).exists()
    assert Portal.objects.filter(pk=portal.pk).exists()
    assert portal.events.filter(kind=K.DATA_CLEANED).exists()
    assert portal.events.count() >= history + 2


def test_forged_uninstalls_posted_ahead_never_swallow_the_genuine_one(client, installed):
    """An ordinary user holds the application_token and can predict the rest of the administrator's uninstall
    (the `ts` is seconds): he posts it ahead, for every second around. Rejected by the worker (the app is still
    installed), none of them makes Bitrix24's own delivery a "duplicate"."""
    portal, b24 = installed
    Channel.objects.create(portal=portal, connector_id="b24widget_http", line_id="1", secret="channel-secret")
    learned = b24.placement_post(user_id="2")["APPLICATION_TOKEN"]
    genuine = b24.event_payload("ONAPPUNINSTALL", application_token=learned, data={"CLEAN": "1"})
    for offset in range(-7, 8):
        forged = {**genuine, "ts": str(int(genuine["ts"]) + offset)}
        assert rejected(post_event(client, forged), "the app is still installed on the portal")
    b24.uninstall()
    response = post_event(client, genuine)
    assert response.json()["result"] == "accepted" and done(response, "uninstalled")
    portal.refresh_from_db()
    assert portal.status == Portal.Status.UNINSTALLED
    assert not Channel.objects.filter(portal=portal).exists()  # CLEAN=1 applied
    assert portal.events.filter(kind=K.DATA_CLEANED).exists()


@pytest.mark.parametrize("token", ["", "wrong", None])
def test_uninstall_with_a_wrong_or_missing_token_changes_nothing(client, installed, token):
    portal, b24 = installed
    b24.uninstall()  # even when the app really is gone, the event must carry the token
    payload = b24.event_payload("ONAPPUNINSTALL")
    if token is None:
        del payload["auth[application_token]"]
    else:
        payload["auth[application_token]"] = token
    before = snapshot(portal)
    assert post_event(client, payload).status_code in (400, 403)
    assert snapshot(portal) == before


def test_second_uninstall_is_refused(client, installed):
    portal, b24 = installed
    assert do_uninstall(client, b24).status_code == 200
    assert post_event(client, b24.event_payload("ONAPPUNINSTALL")).status_code == 403


@pytest.mark.slow  # over 1.5 s: 200 forged events
def test_a_flood_of_forged_events_writes_no_history(client, installed):
    """Strangers' refusals are counted, not stored one row each: the genuine history stays in view."""
    portal, b24 = installed
    before = snapshot(portal)
    for _ in range(200):
        post_event(client, b24.event_payload("ONAPPUNINSTALL", application_token="forged"))
    assert snapshot(portal) == before
    [counted] = Rejection.objects.filter(portal=portal)
    assert (counted.source, counted.count) == ("ONAPPUNINSTALL", 200)
    assert counted.reason == "application_token does not match"


@pytest.mark.parametrize("budget", ["per_minute", "waiting"])
def test_events_for_portals_nobody_installed_stay_within_the_deployments_budget(client, b24, settings, budget):
    """Forged ONAPPINSTALLs for made-up member_ids (each within its own per-portal budget): the rows stay within
    the deployment-wide budget, per minute or in total waiting; beyond it 429 with Retry-After, nothing stored."""
    settings.B24_INBOX_UNPROVEN_BURST, settings.B24_INBOX_UNPROVEN_PER_MINUTE = (
        (8, 1) if budget == "per_minute" else (1000, 0)
    )
    settings.B24_INBOX_UNPROVEN_MAX_WAITING = 1000 if budget == "per_minute" else 5
    answers = []
    for n in range(40):
        payload = b24.event_payload("ONAPPINSTALL", with_tokens=False, application_token=f"made-up-{n}")
        payload["auth[member_id]"] = f"{n:032x}"
        response = client.post("/events/", payload)
        answers.append(response.status_code)
        if response.status_code == 429:
            assert int(response["Retry-After"]) >= 1
    allowed = 8 if budget == "per_minute" else 5
    assert answers == [200] * allowed + [429] * (40 - allowed)
    assert InboxItem.objects.count() == allowed
    assert set(InboxItem.objects.values_list("lane", flat=True)) == {InboxItem.Lane.UNPROVEN}


# --- ONAPPUPDATE ----------------------------------------------------------------------------------------


def test_update_records_the_version_and_binds_again(client, installed):
    portal, b24 = installed
    # "When an application is deleted or updated, its [event handlers] will be removed" (event-bind.md).
    b24.bindings["events"].clear()
    b24.version = 3  # the new version is installed on the portal (its app.info says so)
    response = post_event(client, b24.event_payload("ONAPPUPDATE", data={"VERSION": "3", "PREVIOUS_VERSION": "1"}))
    assert done(response, "updated")
    portal.refresh_from_db()
    assert portal.app_version == "3"
    assert portal.events.filter(kind=K.UPDATED, detail__new="3").exists()
    assert {e["event"] for e in b24.bindings["events"]} >= {"ONAPPINSTALL", "ONAPPUNINSTALL", "ONAPPUPDATE"}


def test_update_with_a_new_application_token_from_an_administrator(client, installed):
    portal, b24 = installed
    b24.version = 2
    payload = b24.event_payload(
        "ONAPPUPDATE", data={"VERSION": "2"}, with_tokens=True, application_token="updated-application-token"
    )
    assert done(post_event(client, payload))
    portal.refresh_from_db()
    assert portal.application_token == "updated-application-token" and portal.app_version == "2"


def test_update_with_a_new_application_token_from_an_ordinary_user(client, installed):
    portal, b24 = installed
    before = snapshot(portal)
    payload = user_event(b24, "ONAPPUPDATE", application_token="attacker-token", data={"VERSION": "2"})
    assert rejected(post_event(client, payload), "not an administrator")
    assert snapshot(portal) == before


def test_a_forged_update_with_the_known_token_changes_no_version_and_writes_no_row(client, installed):
    """Every user knows the application_token: an ONAPPUPDATE claiming version 999 is checked against the
    portal's own app.info, and a version we already hold records nothing and binds nothing."""
    portal, b24 = installed
    history, binds = portal.events.count(), b24.calls("event.bind")
    for version in ("999", "1000", "1001"):
        assert done(post_event(client, b24.event_payload("ONAPPUPDATE", data={"VERSION": version})), "no change")
    stored = Portal.objects.get(pk=portal.pk)
    assert stored.app_version == "1" and stored.events.count() == history
    assert b24.calls("event.bind") == binds


def test_a_known_token_onappinstall_takes_no_version(client, installed):
    portal, b24 = installed
    history = portal.events.count()
    assert done(post_event(client, b24.event_payload("ONAPPINSTALL", data={"VERSION": "777"})), "install confirmed")
    stored = Portal.objects.get(pk=portal.pk)
    assert stored.app_version == "1" and stored.events.count() == history


def test_an_ordinary_user_cannot_uninstall_a_portal_waiting_to_heal(client, installed):
    """The portal is blocked (its refresh token was lost) and its access token expired: our own refresh
    proves nothing now, so the real application_token alone does not uninstall it."""
    from bitrix24 import oauth

    portal, b24 = installed
    Channel.objects.create(portal=portal, connector_id="b24widget_http", line_id="1", secret="channel-secret")
    b24.block("NOT_INSTALLED")
    with pytest.raises(oauth.OAuthRejected):
        tokens.refresh_portal(portal, force=True)
    b24.unblock()
    Portal.objects.filter(pk=portal.pk).update(access_expires_at=None)
    b24.expire_access_tokens()
    learned = b24.placement_post(user_id="2")["APPLICATION_TOKEN"]
    response, item = deliver(
        client, b24.event_payload("ONAPPUNINSTALL", application_token=learned, data={"CLEAN": "1"})
    )
    assert item.state == State.REJECTED and "blocked portal" in item.last_error
    stored = Portal.objects.get(pk=portal.pk)
    assert stored.status == Portal.Status.BLOCKED and Channel.objects.filter(portal=portal).exists()


def test_update_with_a_wrong_token(client, installed):
    portal, b24 = installed
    payload = b24.event_payload("ONAPPUPDATE", with_tokens=False, data={"VERSION": "3"}, application_token="nope")
    assert post_event(client, payload).status_code == 403
    assert Portal.objects.get(pk=portal.pk).app_version == "1"


@pytest.mark.parametrize("version", ["", "x" * 40, "<script>", "1 OR 1"])
def test_update_with_a_malformed_version_changes_nothing(client, installed, version):
    portal, b24 = installed
    payload = b24.event_payload("ONAPPUPDATE", data={"VERSION": version})
    assert post_event(client, payload).status_code == 400
    assert Portal.objects.get(pk=portal.pk).app_version == "1"


def test_update_version_as_a_json_number(client, installed):
    portal, b24 = installed
    b24.version = 4
    body = {
        "event": "ONAPPUPDATE",
        "data": {"VERSION": 4},
        "auth": {"member_id": portal.member_id, "application_token": b24.application_token},
    }
    response, item = deliver(client, json.dumps(body), content_type="application/json")
    assert response.status_code == 200 and item.state == State.DONE
    assert Portal.objects.get(pk=portal.pk).app_version == "4"


# --- bad bodies -----------------------------------------------------------------------------------------


def test_unknown_event(client, installed):
    _portal, b24 = installed
    payload = b24.event_payload("ONAPPUPDATE")
    payload["event"] = "ONCRMDEALADD"
    assert post_event(client, payload).status_code == 400


def test_unknown_portal(client, installed):
    _portal, b24 = installed
    payload = b24.event_payload("ONAPPUNINSTALL")
    payload["auth[member_id]"] = "f" * 32
    assert post_event(client, payload).status_code == 404


@pytest.mark.parametrize(
    "body,content_type",
    [
        ("not json", "application/json"),
        ("[1, 2]", "application/json"),
        ("[" * 100000 + "]" * 100000, "application/json"),  # deep nesting: a RecursionError, not a 500
        (b'{"event": "\xff\xfe"}', "application/json"),  # not UTF-8
        (json.dumps({"event": "ONAPPUNINSTALL"}), "application/json"),
        (json.dumps({"event": "ONAPPUNINSTALL", "auth": "x"}), "application/json"),
        (json.dumps({"event": "ONAPPUNINSTALL", "auth": {"member_id": "a b"}}), "application/json"),
        (
            json.dumps({"event": "ONAPPUNINSTALL", "auth": {"member_id": "abc", "application_token": {"x": 1}}}),
            "application/json",
        ),
        ("event=ONAPPUNINSTALL&auth[member_id]=abc&auth[member_id][x]=1", "application/x-www-form-urlencoded"),
        ("auth[member_id]=abc", "application/x-www-form-urlencoded"),
        ("event=ONAPPUNINSTALL&" + "&".join(f"f{i}=1" for i in range(1200)), "application/x-www-form-urlencoded"),
        ("x" * (3 * 1024 * 1024), "application/json"),  # over DATA_UPLOAD_MAX_MEMORY_SIZE
    ],
)
def test_malformed_bodies_are_400(installed, body, content_type):
    from django.test import Client

    portal, _b24 = installed
    response = Client(raise_request_exception=False).post("/events/", body, content_type=content_type)
    assert response.status_code == 400
    assert Portal.objects.get(pk=portal.pk).status == Portal.Status.ACTIVE


def test_get_is_not_allowed(client):
    assert client.get("/events/").status_code == 405


# --- addresses carried by events (portals that move) ------------------------------------------------------


def test_event_addresses_are_never_contacted_nor_stored(client, b24, standin):
    portal = do_install(client, b24, event=False)
    recorder = standin.add_recorder()
    payload = b24.event_payload("ONAPPINSTALL", with_tokens=True)
    payload["auth[domain]"] = recorder.address
    payload["auth[client_endpoint]"] = f"http://{recorder.address}/rest/"
    assert done(post_event(client, payload))
    assert recorder.requests == []
    stored = Portal.objects.get(pk=portal.pk)
    assert stored.domain == b24.domain and stored.client_endpoint == b24.client_endpoint


def test_event_tokens_reveal_a_move_through_the_oauth_server(client, b24):
    portal = do_install(client, b24, event=False)
    old = b24.domain
    new = b24.rename()
    b24.install_post()  # reinstalled at the new address: a new application_token, proven by the event's tokens
    assert done(post_event(client, b24.event_payload("ONAPPINSTALL", with_tokens=True)))
    stored = Portal.objects.get(pk=portal.pk)
    assert stored.domain == new
    assert stored.events.filter(kind=K.DOMAIN_CHANGED, detail__old=old, detail__new=new).exists()


def test_uninstall_is_keyed_by_member_id_whatever_domain_it_names(client, installed):
    portal, b24 = installed
    b24.uninstall()
    payload = b24.event_payload("ONAPPUNINSTALL")
    payload["auth[domain]"] = "elsewhere.bitrix24.com"
    assert done(post_event(client, payload), "uninstalled")
    stored = Portal.objects.get(pk=portal.pk)
    assert stored.status == Portal.Status.UNINSTALLED and stored.domain == b24.domain


# --- the inbox: answered at once, processed later, once -------------------------------------------------


def test_the_request_makes_no_outbound_call_and_answers_at_once(client, b24, standin):
    b24.install_post()
    before = len(standin.oauth_requests)
    response = client.post("/events/", b24.event_payload("ONAPPINSTALL", with_tokens=True))
    assert response.status_code == 200 and response.json()["result"] == "accepted"
    assert len(standin.oauth_requests) == before and not Portal.objects.exists()  # nothing done yet
    assert InboxItem.objects.get().state == State.PENDING
    inbox.process_pending()
    assert Portal.objects.get().status == Portal.Status.ACTIVE and len(standin.oauth_requests) == before + 1


def test_a_duplicate_delivery_is_recognized_and_changes_nothing(client, installed):
    portal, b24 = installed
    b24.version = 5
    payload = b24.event_payload("ONAPPUPDATE", data={"VERSION": "5"})
    first = post_event(client, payload)
    history = portal.events.count()
    again = client.post("/events/", payload)
    assert again.status_code == 200 and again.json() == {"result": "duplicate", "id": first.item.pk}
    inbox.process_pending()
    assert InboxItem.objects.filter(event="ONAPPUPDATE").count() == 1
    assert portal.events.count() == history and portal.events.filter(kind=K.UPDATED).count() == 1


def test_onappinstall_while_the_oauth_server_is_down_is_applied_when_it_returns(client, b24, standin, settings):
    settings.B24_INBOX_BACKOFF = 0.01
    b24.install_post()
    standin.oauth_down = True
    response = post_event(client, b24.event_payload("ONAPPINSTALL", with_tokens=True))
    assert response.status_code == 200
    item = InboxItem.objects.get(pk=response.item.pk)
    assert item.state == State.PENDING and "oauth_unavailable" in item.last_error and not Portal.objects.exists()
    standin.oauth_down = False
    InboxItem.objects.filter(pk=item.pk).update(next_attempt_at=item.next_attempt_at.replace(year=2000))
    inbox.process_pending()
    item.refresh_from_db()
    assert (item.state, item.attempts) == (State.DONE, 2)
    assert Portal.objects.get(member_id=b24.member_id).status == Portal.Status.ACTIVE


def test_install_before_uninstall_of_one_portal(client, b24):
    """An uninstall task that a worker takes first waits for the portal's older install; the install's task then
    goes on with it (the lane's next ordered event, inbox.queue.process)."""
    do_install(client, b24, event=False)
    install = client.post("/events/", b24.event_payload("ONAPPINSTALL")).json()["id"]
    b24.uninstall()
    uninstall = client.post("/events/", b24.event_payload("ONAPPUNINSTALL")).json()["id"]
    assert inbox.process(uninstall) == "waiting for an older event of the portal"
    assert InboxItem.objects.get(pk=uninstall).state == State.PENDING
    assert inbox.process(install) == "install confirmed"
    assert InboxItem.objects.get(pk=uninstall).outcome == "uninstalled"
    assert inbox.process(uninstall) == "already done"
    kinds = list(Portal.objects.get().events.order_by("pk").values_list("kind", flat=True))
    assert kinds.index(K.ACTIVATED) < kinds.index(K.UNINSTALLED)


# --- a Bitrix24 limit: the event waits in the inbox, not in the worker (issue 26) --------------------------


@pytest.mark.parametrize(
    "event, error, status",
    [
        ("ONAPPUPDATE", "QUERY_LIMIT_EXCEEDED", 503),
        ("ONAPPUNINSTALL", "QUERY_LIMIT_EXCEEDED", 503),
        ("ONAPPUPDATE", "OPERATION_TIME_LIMIT", 429),
    ],
)
def test_an_app_event_whose_portal_call_meets_a_limit_waits_in_the_inbox_with_no_attempt_counted(
    client, installed, settings, event, error, status
):
    """The handler's app.info meets a limit (the portal's counter, or the method's operating time): asked once,
    not again in the worker (the client's 12 limit retries, each at a slowed slot, or its wait for the method's
    reset), and the event waits for the portal's next slot in the inbox (Later): no attempt counted however long
    the limit lasts (past B24_INBOX_MAX_ATTEMPTS here), never a dead letter; once it ends, the event is applied."""
    import time

    from django.utils import timezone

    from bitrix24 import limits

    settings.B24_RATE_LIMIT_BURST, settings.B24_RATE_LIMIT_PER_SECOND = 5, 500.0  # a fast bucket: short slots
    settings.B24_INBOX_MAX_ATTEMPTS = 2
    portal, b24 = installed
    if event == "ONAPPUNINSTALL":
        b24.uninstall()
        payload, outcome = b24.event_payload(event, data={"CLEAN": "0"}), "uninstalled"
    else:
        b24.version = 3
        payload, outcome = b24.event_payload(event, data={"VERSION": "3", "PREVIOUS_VERSION": "1"}), "updated"
    limits.cache.delete(f"b24widget:rl:{portal.member_id}")  # the install's slots were at the plan's 2/s
    b24.fail_next("app.info", error, status, times=1000)
    asked = b24.calls("app.info")
    item = post_event(client, payload).item
    assert (item.state, item.attempts) == (State.PENDING, 0)
    assert item.last_error == f"later: the portal's limit ({error})"
    assert b24.calls("app.info") - asked == 1  # asked once
    for n in range(2, 5):  # the limit goes on: each time the slot (or the method's reset) comes, asked once more
        limits.pause_method(portal.member_id, "app.info", time.time())  # the reset came (OPERATION_TIME_LIMIT)
        InboxItem.objects.filter(pk=item.pk).update(next_attempt_at=timezone.now())
        inbox.process_pending()
        item.refresh_from_db()
        assert (item.state, item.attempts, b24.calls("app.info") - asked) == (State.PENDING, 0, n)
    b24._failures.clear()  # the limit is over
    limits.pause_method(portal.member_id, "app.info", time.time())
    InboxItem.objects.filter(pk=item.pk).update(next_attempt_at=timezone.now())
    inbox.process_pending()
    item.refresh_from_db()
    assert (item.state, item.attempts, item.outcome) == (State.DONE, 1, outcome)
    portal.refresh_from_db()
    assert portal.status == (Portal.Status.UNINSTALLED if event == "ONAPPUNINSTALL" else Portal.Status.ACTIVE)


def test_a_token_changed_after_this_process_read_the_portal_is_judged_on_the_row_as_it_is(client, installed):
    """`/events/` keeps a portal's row per process after its first event, but stores a proven event only if the row
    still holds that token's digest (checked in the INSERT): a new application_token (a reinstall, written by
    another process) refuses the old one at once and admits the new one."""
    portal, b24 = installed
    old = b24.application_token
    first = post_event(client, b24.event_payload("ONAPPUNINSTALL", application_token=old, data={"n": "1"}))
    assert first.status_code == 200  # (the row now known to this process)
    Portal.objects.filter(pk=portal.pk).update(application_token_digest=token_digest("rotated"))
    before = InboxItem.objects.count()
    stale = post_event(client, b24.event_payload("ONAPPUNINSTALL", application_token=old, data={"n": "2"}))
    assert stale.status_code == 403 and InboxItem.objects.count() == before
    new = post_event(client, b24.event_payload("ONAPPUNINSTALL", application_token="rotated", data={"n": "3"}))
    assert new.status_code == 200 and InboxItem.objects.count() == before + 1
    assert InboxItem.objects.get(pk=new.json()["id"]).lane == InboxItem.Lane.PROVEN


def test_an_update_is_judged_on_the_portals_status_as_it_is_not_as_this_process_read_it(client, installed):
    """ONAPPUPDATE's request-time check reads the portal's status: a copy this process kept from when the portal was
    uninstalled must not refuse the update of the portal installed again meanwhile (Bitrix24 never resends it)."""
    portal, b24 = installed
    Portal.objects.filter(pk=portal.pk).update(status=Portal.Status.UNINSTALLED)
    payload = b24.event_payload("ONAPPUPDATE", data={"VERSION": "2"}, with_tokens=True)
    assert post_event(client, payload).status_code == 409  # (this process has now read the row uninstalled)
    Portal.objects.filter(pk=portal.pk).update(status=Portal.Status.ACTIVE)  # installed again, by another process
    b24.version = 2
    assert done(post_event(client, b24.event_payload("ONAPPUPDATE", data={"VERSION": "2"}, with_tokens=True)))
