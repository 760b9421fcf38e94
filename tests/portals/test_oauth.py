"""Token refresh: validated answers, blocking errors, and the single-flight refresh under races."""
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.db import connection

from portals import oauth
from portals.models import Portal, PortalEvent
from portals.rest import PortalClient

K = PortalEvent.Kind
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
def test_refresh_rotates_and_records(installed, standin):
    portal, b24 = installed
    old_refresh = portal.refresh_token
    portal = oauth.refresh_portal(portal, force=True)
    assert portal.refresh_token != old_refresh
    assert Portal.objects.get(pk=portal.pk).refresh_token == portal.refresh_token
    assert portal.events.filter(kind=K.TOKEN_REFRESHED).exists()


@pytest.mark.django_db
def test_valid_token_is_not_refreshed_just_in_case(installed, standin):
    portal, _b24 = installed
    before = len(standin.oauth_requests)
    oauth.refresh_portal(portal)
    assert len(standin.oauth_requests) == before


@pytest.mark.django_db
@pytest.mark.parametrize("error", ["invalid_grant", "NOT_INSTALLED", "PAYMENT_REQUIRED", "PORTAL_DELETED"])
def test_blocking_errors_block_the_portal(installed, error):
    portal, b24 = installed
    b24.block(error)
    with pytest.raises(oauth.OAuthRejected) as info:
        oauth.refresh_portal(portal, force=True)
    assert info.value.code == error
    portal.refresh_from_db()
    assert portal.status == Portal.Status.BLOCKED
    assert error in portal.last_error
    assert portal.events.filter(kind=K.BLOCKED, detail__reason=error).exists()


@pytest.mark.django_db
def test_a_wrong_client_secret_blocks_no_portal(installed, settings, client):
    """Our misconfiguration is ours: no customer is blocked, and /healthz says what is wrong."""
    portal, _b24 = installed
    settings.B24_CLIENT_SECRET = "not-the-secret"
    with pytest.raises(oauth.ClientMisconfigured) as info:
        oauth.refresh_portal(portal, force=True)
    assert info.value.code == "invalid_client"
    assert "not-the-secret" not in str(info.value)
    stored = Portal.objects.get(pk=portal.pk)
    assert stored.status == Portal.Status.ACTIVE and stored.refresh_token == portal.refresh_token
    assert stored.refresh_lease_owner == ""  # the lease was given back
    health = client.get("/healthz").json()
    assert health["checks"]["oauth_client"].startswith("error: invalid_client")
    # Fixed: the next refresh works, and the warning goes away.
    settings.B24_CLIENT_SECRET = "test-client-secret"
    oauth.refresh_portal(portal, force=True)
    assert client.get("/healthz").json()["checks"]["oauth_client"] == "ok"


@pytest.mark.django_db
def test_outage_does_not_block(installed, standin):
    portal, _b24 = installed
    standin.oauth_down = True
    with pytest.raises(oauth.OAuthUnavailable):
        oauth.refresh_portal(portal, force=True)
    after = Portal.objects.get(pk=portal.pk)
    assert after.status == Portal.Status.ACTIVE
    assert after.refresh_token == portal.refresh_token
    assert after.events.filter(kind=K.REFRESH_FAILED).exists()


@pytest.mark.django_db
def test_unreachable_oauth_server(installed, settings):
    portal, _b24 = installed
    settings.B24_OAUTH_URL = "http://127.0.0.1:9/oauth/token/"  # discard port: nothing listens
    with pytest.raises(oauth.OAuthUnavailable):
        oauth.refresh_portal(portal, force=True)
    assert Portal.objects.get(pk=portal.pk).status == Portal.Status.ACTIVE


@pytest.mark.django_db
def test_blocked_portal_is_not_refreshed_unless_asked(installed, standin):
    portal, b24 = installed
    b24.block("PAYMENT_REQUIRED")
    with pytest.raises(oauth.OAuthRejected):
        oauth.refresh_portal(portal, force=True)
    with pytest.raises(oauth.PortalNotServing):
        oauth.refresh_portal(portal, force=True)
    b24.block(None)
    portal = oauth.refresh_portal(portal, force=True, allow_blocked=True)
    assert portal.status == Portal.Status.ACTIVE
    assert portal.events.filter(kind=K.UNBLOCKED).exists()


@pytest.mark.parametrize("answer", [
    [], {"access_token": "a"}, {"access_token": "a", "refresh_token": "b", "member_id": "m"},
    {"access_token": "a", "refresh_token": "b", "member_id": "m", "client_endpoint": "ftp://x/rest/"},
    {"access_token": "a", "refresh_token": "b", "member_id": "m", "client_endpoint": "https://x.bitrix24.com/rest/",
     "expires_in": "soon"},
    {"access_token": {"x": 1}, "refresh_token": "b", "member_id": "m", "client_endpoint": "https://x.b24.com/rest/"},
])
def test_malformed_oauth_answers_are_rejected(answer):
    with pytest.raises(oauth.OAuthUnavailable):
        oauth.parse_grant(answer)


def test_unknown_status_and_odd_user_id_are_dropped():
    grant = oauth.parse_grant({"access_token": "a", "refresh_token": "b", "member_id": "m1", "status": "X",
                               "user_id": "<b>", "client_endpoint": "https://x.bitrix24.com/rest/"})
    assert (grant.status, grant.user_id) == ("", "")


def test_malformed_member_id_is_rejected():
    with pytest.raises(oauth.OAuthUnavailable):
        oauth.parse_grant({"access_token": "a", "refresh_token": "b", "member_id": "m 1; drop",
                           "client_endpoint": "https://x.bitrix24.com/rest/"})


def test_grant_repr_holds_no_secret():
    grant = oauth.parse_grant({"access_token": "SECRET-A", "refresh_token": "SECRET-R", "member_id": "m",
                               "client_endpoint": "https://x.bitrix24.com/rest/", "expires_in": 3600})
    assert "SECRET" not in repr(grant)


@pytest.mark.django_db(transaction=True)
def test_refresh_race_between_threads_makes_one_oauth_request(client, b24, standin):
    from tests.conftest import do_install
    portal = do_install(client, b24)
    b24.expire_access_tokens()
    standin.oauth_delay = 0.2  # widen the window in which the threads overlap
    before = len(standin.oauth_requests)
    errors, results = [], []
    barrier = threading.Barrier(8)

    def worker():
        try:
            barrier.wait()
            results.append(PortalClient(Portal.objects.get(pk=portal.pk)).call("server.time"))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(results) == 8
    assert len(standin.oauth_requests) - before == 1


RACE_SCRIPT = """
import os, sys, django
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
django.setup()
from django.conf import settings
settings.B24_OAUTH_URL = sys.argv[2]
from portals.models import Portal
from portals.rest import PortalClient
portal = Portal.objects.get(pk=int(sys.argv[1]))
sys.stdin.readline()  # start together
PortalClient(portal).call("server.time")
print("ok")
"""


@pytest.mark.slow  # processes (PostgreSQL only)
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_refresh_race_between_processes_makes_one_oauth_request(client, b24, standin):
    if connection.vendor != "postgresql":
        pytest.skip("the multi-process race runs on PostgreSQL (SQLite is one process at a time)")
    from tests.conftest import do_install
    portal = do_install(client, b24)
    b24.expire_access_tokens()
    standin.oauth_delay = 0.3
    before = len(standin.oauth_requests)
    db = connection.settings_dict
    env = {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"}
    procs = [
        subprocess.Popen([sys.executable, "-c", RACE_SCRIPT, str(portal.pk), standin.oauth_url], cwd=ROOT, env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    import time
    time.sleep(2.5)  # let every process finish django.setup()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-2000:]
        assert out.strip() == "ok"
    assert len(standin.oauth_requests) - before == 1
