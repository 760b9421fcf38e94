"""POST /install/: believed only after the OAuth server confirms it; then stored and bound."""
import pytest
from django.db import connection

from portals.models import Portal, PortalEvent
from tests.conftest import do_install

pytestmark = pytest.mark.django_db

K = PortalEvent.Kind


def kinds(portal):
    return list(portal.events.order_by("id").values_list("kind", flat=True))


def test_fresh_install_stores_the_oauth_servers_answer(client, b24, standin):
    post = b24.install_post()
    response = client.post("/install/", post)
    assert response.status_code == 200
    body = response.content.decode()
    assert "BX24.installFinish()" in body
    assert 'src="https://api.bitrix24.com/api/v1/"' in body

    portal = Portal.objects.get(member_id=b24.member_id)
    assert portal.status == Portal.Status.NEW
    assert portal.domain == b24.domain
    assert portal.client_endpoint == b24.client_endpoint
    # The posted refresh token was spent by our refresh: the stored tokens are the OAuth server's new ones.
    assert portal.refresh_token and portal.refresh_token != post["REFRESH_ID"]
    assert portal.access_token and portal.access_token != post["AUTH_ID"]
    assert portal.access_expires_at is not None and portal.refresh_renewed_at is not None
    assert portal.installed_at is not None and portal.installed_by == "1"
    assert portal.application_token == ""
    assert standin.oauth_requests[-1]["client_secret"] == "test-client-secret"
    assert kinds(portal) == [K.INSTALLED, K.PLACEMENT_BOUND, K.EVENTS_BOUND]


def test_install_binds_contact_center_and_events(client, b24):
    do_install(client, b24, event=False)
    [placement] = b24.bindings["placements"]
    assert placement["PLACEMENT"] == "CONTACT_CENTER"
    assert placement["HANDLER"] == "https://app.example.test/placement/"
    assert set(placement["LANG_ALL"]) == {"en", "ru", "de"}
    assert placement["LANG_ALL"]["de"]["TITLE"]
    events = {(e["event"], e["handler"]) for e in b24.bindings["events"]}
    assert ("ONAPPINSTALL", "https://app.example.test/events/") in events
    assert ("ONAPPUNINSTALL", "https://app.example.test/events/") in events


def test_frame_headers_allow_only_the_portal(client, b24):
    response = client.post("/install/", b24.install_post())
    assert response["Content-Security-Policy"] == f"frame-ancestors http://{b24.domain}"
    assert "X-Frame-Options" not in response
    assert "no-store" in response["Cache-Control"]


def test_fields_in_the_query_string_as_a_real_portal_sends_them(client, b24):
    post = b24.install_post()
    query = {k: post.pop(k) for k in ("DOMAIN", "PROTOCOL", "LANG", "APP_SID")}
    response = client.post("/install/?" + "&".join(f"{k}={v}" for k, v in query.items()), post)
    assert response.status_code == 200
    assert Portal.objects.filter(member_id=b24.member_id).exists()


def test_reinstall_updates_the_same_row(client, b24):
    first = do_install(client, b24)
    assert first.status == Portal.Status.ACTIVE
    second = do_install(client, b24, event=False)
    assert Portal.objects.filter(member_id=b24.member_id).count() == 1
    assert second.pk == first.pk
    assert second.status == Portal.Status.ACTIVE
    assert K.REINSTALLED in kinds(second)
    # Placements were unbound before binding again: still exactly one binding.
    assert len(b24.bindings["placements"]) == 1


def test_reinstall_after_uninstall_starts_again_as_new(client, b24):
    portal = do_install(client, b24)
    client.post("/events/", b24.event_payload("ONAPPUNINSTALL"))
    b24.uninstall()
    portal = do_install(client, b24)
    assert portal.status == Portal.Status.ACTIVE
    assert portal.uninstalled_at is None
    assert portal.has_tokens


def test_forged_refresh_token_is_refused(client, b24):
    post = b24.install_post()
    post["REFRESH_ID"] = "forged" + post["REFRESH_ID"][6:]
    response = client.post("/install/", post)
    assert response.status_code == 403
    assert "did not confirm" in response.content.decode()
    assert not Portal.objects.exists()
    assert not b24.bindings["placements"]


def test_member_id_the_oauth_server_does_not_confirm(client, b24, standin):
    other = standin.add_portal()
    post = b24.install_post()
    post["member_id"] = other.member_id
    response = client.post("/install/", post)
    assert response.status_code == 403
    assert not Portal.objects.exists()


def test_forged_install_for_a_known_portal_changes_nothing(client, b24):
    portal = do_install(client, b24)
    post = b24.install_post()
    post["REFRESH_ID"] = "0" * 40
    assert client.post("/install/", post).status_code == 403
    after = Portal.objects.get(pk=portal.pk)
    assert after.status == Portal.Status.ACTIVE
    assert after.refresh_token == portal.refresh_token
    assert kinds(after)[-1] == K.INSTALL_FAILED


def test_oauth_down_is_a_502_and_stores_nothing(client, b24, standin):
    standin.oauth_down = True
    response = client.post("/install/", b24.install_post())
    assert response.status_code == 502
    assert not Portal.objects.exists()


def test_error_pages_are_localized(client, b24, standin):
    standin.oauth_down = True
    response = client.post("/install/", b24.install_post(lang="de"))
    assert response.status_code == 502
    assert 'lang="de"' in response.content.decode()
    assert "Bitrix24 ist nicht erreichbar" in response.content.decode()


def test_binding_failure_leaves_the_portal_new_with_the_reason(client, b24):
    b24.fail_next("batch", "INTERNAL_SERVER_ERROR", 500, times=10)
    response = client.post("/install/", b24.install_post())
    assert response.status_code == 502
    portal = Portal.objects.get(member_id=b24.member_id)
    assert portal.status == Portal.Status.NEW
    assert "INTERNAL_SERVER_ERROR" in portal.last_error
    assert kinds(portal)[-1] == K.INSTALL_FAILED


@pytest.mark.parametrize("field,value", [
    ("member_id", ""), ("member_id", "bad member id!"), ("DOMAIN", "not a domain/"), ("PROTOCOL", "2"),
    ("LANG", "english!"), ("AUTH_EXPIRES", "soon"), ("status", "X"), ("REFRESH_ID", "x" * 2000),
])
def test_malformed_install_posts_are_400(client, b24, standin, field, value):
    before = len(standin.oauth_requests)
    post = b24.install_post()
    post[field] = value
    response = client.post("/install/", post)
    assert response.status_code == 400
    assert len(standin.oauth_requests) == before
    assert not Portal.objects.exists()


def test_get_explains_itself(client):
    response = client.get("/install/")
    assert response.status_code == 200
    assert "opened by Bitrix24" in response.content.decode()


def test_tokens_are_encrypted_at_rest(client, b24):
    portal = do_install(client, b24)
    with connection.cursor() as cursor:
        cursor.execute("SELECT access_token, refresh_token, application_token FROM portals_portal WHERE id = %s",
                       [portal.pk])
        raw = cursor.fetchone()
    for column, plain in zip(raw, (portal.access_token, portal.refresh_token, portal.application_token)):
        assert plain and plain not in column
        assert column.startswith("gAAAA")  # Fernet


def test_install_by_a_non_administrator_binds_nothing_and_never_activates(client, b24):
    # placement.bind is for administrators only; event.bind is not, so it must not run either.
    response = client.post("/install/", b24.install_post(user_id="2", forged=True))
    assert response.status_code == 403
    assert "administrator" in response.content.decode()
    assert b24.bindings["placements"] == [] and b24.bindings["events"] == []
    portal = Portal.objects.get(member_id=b24.member_id)
    assert portal.status == Portal.Status.NEW and "ACCESS_DENIED" in portal.last_error
    # A token-less ONAPPINSTALL right after this failed install does not complete it.
    assert client.post("/events/", b24.event_payload("ONAPPINSTALL", with_tokens=False)).status_code == 409
    portal.refresh_from_db()
    assert portal.status == Portal.Status.NEW and portal.application_token == ""
    # An administrator installs again: all is well.
    portal = do_install(client, b24)
    assert portal.status == Portal.Status.ACTIVE and portal.last_error == ""
