"""POST /install/: believed only as an administrator's grant (the OAuth server confirms it, the portal
says its user is an administrator); then stored with its APPLICATION_TOKEN and bound."""

import pytest
from django.db import connection

from inbox.models import InboxItem
from openlines.models import Channel
from portals.models import Portal, PortalEvent, Rejection
from tests.conftest import deliver, do_install, do_uninstall
from tests.helpers import kinds
from tests.helpers import portal_snapshot as snapshot
from tests.workers import wait_for

pytestmark = pytest.mark.django_db

K = PortalEvent.Kind


def test_fresh_install_stores_the_oauth_servers_answer(client, b24, standin):
    post = b24.install_post()
    response = client.post("/install/", post)
    assert response.status_code == 200
    body = response.content.decode()
    # The official frame library finishes the install (B24Frame.installFinish through b24widget/frame.js).
    assert "b24jssdk.umd.min.js" in body and "frame.installFinish()" in body
    assert 'src="/static/b24widget/vendor/b24jssdk-2.2.0/b24jssdk.umd.min.js"' in body
    assert "api.bitrix24.com" not in body  # no third-party script host

    portal = Portal.objects.get(member_id=b24.member_id)
    assert portal.status == Portal.Status.NEW
    assert portal.domain == b24.domain
    assert portal.client_endpoint == b24.client_endpoint
    # The posted refresh token was spent by our refresh: the stored tokens are the OAuth server's new ones.
    assert portal.refresh_token and portal.refresh_token != post["REFRESH_ID"]
    assert portal.access_token and portal.access_token != post["AUTH_ID"]
    assert portal.access_expires_at is not None and portal.refresh_renewed_at is not None
    assert portal.installed_at is not None and portal.installed_by == "1"
    assert portal.application_token == post["APPLICATION_TOKEN"] == b24.application_token
    assert standin.oauth_requests[-1]["client_secret"] == "test-client-secret"
    assert portal.bound_at is not None
    assert kinds(portal) == [K.INSTALLED, K.APPLICATION_TOKEN_SAVED, K.PLACEMENT_BOUND, K.EVENTS_BOUND]


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
    do_uninstall(client, b24)
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
    before = snapshot(portal)
    post = b24.install_post()
    post["REFRESH_ID"] = "0" * 40
    assert client.post("/install/", post).status_code == 403
    assert snapshot(portal) == before
    assert Rejection.objects.get(portal=portal).reason == "oauth_invalid_grant"


def test_an_ordinary_users_widget_refresh_id_cannot_replace_the_portals_tokens(client, installed):
    """He POSTs his genuine widget REFRESH_ID (and an APPLICATION_TOKEN of his choosing) to /install/."""
    portal, b24 = installed
    Channel.objects.create(portal=portal, connector_id="b24widget_http", line_id="1", secret="channel-secret")
    before = snapshot(portal)
    post = b24.placement_post(user_id="2")
    post.update(PLACEMENT="DEFAULT", APPLICATION_TOKEN="attacker-token")
    response = client.post("/install/", post)
    assert response.status_code == 403
    assert "Only a Bitrix24 administrator can install this app" in response.content.decode()
    assert snapshot(portal) == before
    assert Rejection.objects.get(portal=portal).reason == "not_admin"


def test_forged_installs_are_throttled_per_portal(client, installed, standin, settings):
    """Each unverified install costs an OAuth request with our client secret: a few per portal, then 429."""
    settings.B24_UNVERIFIED_OAUTH_BURST = 4  # the fixture's genuine install took one of them
    settings.B24_UNVERIFIED_OAUTH_PER_MINUTE = 1
    portal, b24 = installed
    before = len(standin.oauth_requests)
    answers = []
    for _ in range(20):
        post = b24.install_post()
        post["REFRESH_ID"] = "0" * 40
        answers.append(client.post("/install/", post))
    assert len(standin.oauth_requests) - before == 3
    assert [a.status_code for a in answers].count(429) == 17
    assert int(answers[-1]["Retry-After"]) >= 1
    assert Portal.objects.get(pk=portal.pk).status == Portal.Status.ACTIVE


def test_oauth_down_is_a_503_and_stores_nothing(client, b24, standin):
    standin.oauth_down = True
    response = client.post("/install/", b24.install_post())
    assert response.status_code == 503 and response["Retry-After"]
    assert not Portal.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_refresh_token_is_not_spent_when_the_database_cannot_store_it(client, b24, standin):
    """A read-only database (a replica after failover, a full disk): the install stops before OAuth."""
    post = b24.install_post()
    before = len(standin.oauth_requests)
    read_only, writable = {
        "postgresql": (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        ),
        "sqlite": ("PRAGMA query_only = ON", "PRAGMA query_only = OFF"),
    }[connection.vendor]
    with connection.cursor() as cursor:
        cursor.execute(read_only)
    try:
        response = client.post("/install/", post)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(writable)
    assert response.status_code == 503
    assert len(standin.oauth_requests) == before
    # The same REFRESH_ID still installs once the database is back.
    assert client.post("/install/", post).status_code == 200


def test_error_pages_are_localized(client, b24, standin):
    standin.oauth_down = True
    response = client.post("/install/", b24.install_post(lang="de"))
    assert response.status_code == 503
    assert 'lang="de"' in response.content.decode()
    assert "Bitrix24 ist nicht erreichbar" in response.content.decode()


def test_binding_failure_leaves_the_portal_new_with_the_reason(client, b24):
    b24.fail_next("batch", "INTERNAL_SERVER_ERROR", 500, times=10)
    response = client.post("/install/", b24.install_post())
    assert response.status_code == 503
    portal = Portal.objects.get(member_id=b24.member_id)
    assert portal.status == Portal.Status.NEW
    assert "INTERNAL_SERVER_ERROR" in portal.last_error
    assert kinds(portal)[-1] == K.INSTALL_FAILED


@pytest.mark.parametrize(
    "field,value",
    [
        ("member_id", ""),
        ("member_id", "bad member id!"),
        ("DOMAIN", "not a domain/"),
        ("PROTOCOL", "2"),
        ("LANG", "english!"),
        ("AUTH_EXPIRES", "soon"),
        ("status", "X"),
        ("REFRESH_ID", "x" * 2000),
    ],
)
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
        cursor.execute(
            "SELECT access_token, refresh_token, application_token FROM portals_portal WHERE id = %s", [portal.pk]
        )
        raw = cursor.fetchone()
    for column, plain in zip(raw, (portal.access_token, portal.refresh_token, portal.application_token), strict=True):
        assert plain and plain not in column
        assert column.startswith("gAAAA")  # Fernet


def test_install_by_a_non_administrator_stores_and_binds_nothing(client, b24, settings):
    response = client.post("/install/", b24.install_post(user_id="2", lang="de", forged=True))
    assert response.status_code == 403
    assert "Nur ein Bitrix24-Administrator" in response.content.decode()
    assert b24.bindings["placements"] == [] and b24.bindings["events"] == []
    assert not Portal.objects.exists()
    # A token-less ONAPPINSTALL after this refused install does not complete anything either.
    response, item = deliver(client, b24.event_payload("ONAPPINSTALL", with_tokens=False))
    assert response.status_code == 200 and item.state == InboxItem.State.REJECTED  # stored, refused in processing
    assert not Portal.objects.exists()
    # An administrator installs: all is well.
    portal = do_install(client, b24)
    assert portal.status == Portal.Status.ACTIVE and portal.last_error == ""


@pytest.mark.slow  # real time: threads wait on a slow OAuth server
@pytest.mark.django_db(transaction=True)
def test_threads_waiting_on_the_oauth_server_for_unverified_installs_are_few(standin, settings):
    """A slow OAuth server cannot make unverified installs hold every thread: beyond
    B24_UNVERIFIED_OAUTH_CONCURRENCY per process they are refused at once (429)."""
    import threading

    from django.db import connection as conn
    from django.test import Client

    settings.B24_UNVERIFIED_OAUTH_CONCURRENCY = 1
    standin.oauth_gate = gate = threading.Event()  # the OAuth server answers the first install when told
    portals = [standin.add_portal() for _ in range(3)]
    statuses = {}

    def install(b24):
        try:
            statuses[b24.member_id] = Client().post("/install/", b24.install_post()).status_code
        finally:
            conn.close()

    before = len(standin.oauth_requests)
    first = threading.Thread(target=install, args=(portals[0],))
    first.start()
    wait_for(  # the first install is now waiting on the OAuth server
        lambda: len(standin.oauth_requests) > before,
        timeout=30,
        every=0.01,
        what="the first install to reach the OAuth server",
        detail=lambda: f"answers so far: {statuses}",
    )
    others = [threading.Thread(target=install, args=(b24,)) for b24 in portals[1:]]
    for thread in others:
        thread.start()
    for thread in others:  # refused while the first still waits on the OAuth server
        thread.join(30)
    assert [statuses.get(b.member_id) for b in portals[1:]] == [429, 429]
    gate.set()
    first.join(30)
    assert statuses[portals[0].member_id] == 200
    assert [statuses[b.member_id] for b in portals[1:]] == [429, 429]
    assert len(standin.oauth_requests) - before == 1


def test_a_throttled_forged_install_writes_nothing(client, installed, settings):
    """Refused by its budget before anything else: no write transaction, no row (a stranger's flood must
    not serialize the database)."""
    from django.test.utils import CaptureQueriesContext

    settings.B24_UNVERIFIED_OAUTH_BURST, settings.B24_UNVERIFIED_OAUTH_PER_MINUTE = 1, 1
    _, b24 = installed  # the fixture's install spent the budget
    post = b24.install_post()
    post["REFRESH_ID"] = "0" * 40
    with CaptureQueriesContext(connection) as queries:
        response = client.post("/install/", post)
    assert response.status_code == 429
    writes = [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith(("UPDATE", "INSERT"))]
    assert writes == []
