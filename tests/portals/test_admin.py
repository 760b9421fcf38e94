"""The Django admin: every install visible to staff, never a secret, actions, constant query count."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from portals import tokens
from portals.models import Portal, PortalEvent

pytestmark = pytest.mark.django_db


def test_anonymous_users_are_sent_to_login(client, installed):
    response = client.get("/admin/portals/portal/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_changelist_shows_installs(admin_client, installed):
    portal, b24 = installed
    response = admin_client.get("/admin/portals/portal/")
    body = response.content.decode()
    assert response.status_code == 200
    assert portal.domain in body and portal.member_id in body


def test_change_page_shows_history_and_no_secret(admin_client, installed):
    portal, b24 = installed
    portal.refresh_from_db()
    response = admin_client.get(reverse("admin:portals_portal_change", args=[portal.pk]))
    body = response.content.decode()
    assert response.status_code == 200
    assert 'id="portal-history"' in body
    assert "application token saved" in body
    for secret in (portal.access_token, portal.refresh_token, portal.application_token, "test-client-secret"):
        assert secret not in body
    assert "valid" in body  # the token's state, not the token


def test_search_and_filters(admin_client, installed, standin, client):
    portal, b24 = installed
    response = admin_client.get("/admin/portals/portal/", {"q": portal.member_id})
    assert portal.domain in response.content.decode()
    response = admin_client.get("/admin/portals/portal/", {"status__exact": "uninstalled"})
    assert portal.member_id not in response.content.decode()


def test_refresh_tokens_now_action(admin_client, installed, standin):
    portal, b24 = installed
    before = len(standin.oauth_requests)
    response = admin_client.post(
        "/admin/portals/portal/", {"action": "refresh_tokens_now", "_selected_action": [portal.pk]}, follow=True
    )
    assert response.status_code == 200
    assert len(standin.oauth_requests) == before + 1
    assert Portal.objects.get(pk=portal.pk).refresh_token != portal.refresh_token


def test_bind_placements_again_action(admin_client, installed):
    portal, b24 = installed
    b24.bindings["placements"].clear()
    admin_client.post(
        "/admin/portals/portal/", {"action": "bind_placements_again", "_selected_action": [portal.pk]}, follow=True
    )
    assert [p["PLACEMENT"] for p in b24.bindings["placements"]] == ["CONTACT_CENTER"]


def _changelist_queries(admin_client):
    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get("/admin/portals/portal/").status_code == 200
    return len(queries)


def test_changelist_query_count_does_not_grow_with_portals(admin_client):
    def add(n, start):
        Portal.objects.bulk_create(
            [
                Portal(
                    member_id=f"m{i}", domain=f"p{i}.bitrix24.com", client_endpoint=f"https://p{i}.bitrix24.com/rest/"
                )
                for i in range(start, start + n)
            ]
        )

    add(10, 0)
    few = _changelist_queries(admin_client)
    add(990, 10)
    many = _changelist_queries(admin_client)
    assert few == many


def test_events_admin_is_read_only(admin_client, installed):
    portal, b24 = installed
    event = PortalEvent.objects.filter(portal=portal).first()
    response = admin_client.get(reverse("admin:portals_portalevent_change", args=[event.pk]))
    assert response.status_code == 200
    assert (
        admin_client.post(reverse("admin:portals_portalevent_delete", args=[event.pk]), {"post": "yes"}).status_code
        == 403
    )


def test_refusals_are_counted_on_the_change_page_and_the_history_stays_genuine(admin_client, client, installed):
    portal, b24 = installed
    history = portal.events.count()
    for _ in range(30):
        client.post("/events/", b24.event_payload("ONAPPUNINSTALL", application_token="forged"))
    assert portal.events.count() == history
    body = admin_client.get(reverse("admin:portals_portal_change", args=[portal.pk])).content.decode()
    assert 'id="portal-refusals"' in body and "<td>30</td>" in body and "application_token does not match" in body
    assert "forged" not in body.replace("application_token does not match", "")
    listing = admin_client.get("/admin/portals/rejection/").content.decode()
    assert "ONAPPUNINSTALL" in listing


def test_the_admin_says_when_our_credentials_are_refused(admin_client, installed, settings):
    from bitrix24 import oauth

    portal, _b24 = installed
    settings.B24_CLIENT_SECRET = "wrong-secret"
    with pytest.raises(oauth.ClientMisconfigured):
        tokens.refresh_portal(portal, force=True)
    body = admin_client.get("/admin/portals/portal/").content.decode()
    assert "check B24_CLIENT_ID and B24_CLIENT_SECRET" in body and "wrong-secret" not in body
    assert Portal.objects.get(pk=portal.pk).status == Portal.Status.ACTIVE


def test_inbox_lists_events_with_their_state_and_never_a_secret(admin_client, client, installed, standin):
    from inbox.models import InboxItem
    from tests.conftest import deliver

    portal, b24 = installed
    b24.version = 4
    payload = b24.event_payload("ONAPPUPDATE", data={"VERSION": "4"}, with_tokens=True)
    deliver(client, payload)
    failed = InboxItem.objects.create(
        member_id=portal.member_id,
        portal=portal,
        event="ONAPPUNINSTALL",
        idempotency_key="f" * 64,
        state=InboxItem.State.FAILED,
        attempts=8,
        last_error="gave up after 8 attempts: Bitrix24 unavailable (unreachable)",
    )
    body = admin_client.get("/admin/inbox/inboxitem/").content.decode()
    assert "ONAPPUPDATE" in body and "gave up after 8 attempts" in body and portal.member_id in body
    filtered = admin_client.get("/admin/inbox/inboxitem/", {"state__exact": "failed"}).content.decode()
    assert 'field-event">ONAPPUNINSTALL<' in filtered and 'field-event">ONAPPUPDATE<' not in filtered
    item = InboxItem.objects.get(event="ONAPPUPDATE")
    detail = admin_client.get(reverse("admin:inbox_inboxitem_change", args=[item.pk])).content.decode()
    for secret in (
        payload["auth[access_token]"],
        payload["auth[refresh_token]"],
        b24.application_token,
        item.idempotency_key,
    ):
        assert secret not in body and secret not in detail
    assert "updated" in detail  # the outcome

    response = admin_client.post("/admin/inbox/inboxitem/", {"action": "replay", "_selected_action": [failed.pk]})
    assert response.status_code == 302
    failed.refresh_from_db()
    assert (failed.state, failed.attempts) == (InboxItem.State.PENDING, 0)


def test_admin_logins_are_throttled_per_client_address(db, settings):
    """A client address (X-Real-IP, set by the proxy) with ADMIN_LOGIN_FAILURE_LIMIT failed logins is refused
    (429) even with the right password, whatever X-Forwarded-For it sends; another address logs in."""
    from django.contrib.auth.models import User
    from django.test import Client

    User.objects.create_user("staff", password="right-password-1", is_staff=True, is_superuser=True)
    guesser = {"HTTP_X_REAL_IP": "203.0.113.9", "REMOTE_ADDR": "127.0.0.1"}

    def login(password, **meta):
        client = Client()
        return client.post("/admin/login/", {"username": "staff", "password": password, "next": "/admin/"}, **meta)

    for n in range(settings.AXES_FAILURE_LIMIT - 1):
        assert login(f"guess-{n}", **guesser).status_code == 200  # the form again, with its error
    assert login("guess-last", **guesser).status_code == 429
    assert login("right-password-1", **guesser).status_code == 429
    assert login("right-password-1", **guesser, HTTP_X_FORWARDED_FOR="198.51.100.7").status_code == 429
    other = login("right-password-1", HTTP_X_REAL_IP="203.0.113.10", REMOTE_ADDR="127.0.0.1")
    assert other.status_code == 302 and other["Location"] == "/admin/"
