"""A stored portal's token refresh: rotation, blocking errors, and the single-flight refresh under races.

The OAuth answers themselves (parse_grant, token_info, request_refresh) are tested in tests/bitrix24/test_oauth.py.
"""

import os
import threading

import pytest
from django.db import connection

from bitrix24 import oauth
from portals import tokens
from portals.models import Portal, PortalEvent
from portals.tokens import PortalClient
from tests.helpers import database_url, in_threads, run_together

K = PortalEvent.Kind


@pytest.mark.django_db
def test_refresh_rotates_and_records(installed, standin):
    portal, b24 = installed
    old_refresh = portal.refresh_token
    portal = tokens.refresh_portal(portal, force=True)
    assert portal.refresh_token != old_refresh
    assert Portal.objects.get(pk=portal.pk).refresh_token == portal.refresh_token
    assert portal.events.filter(kind=K.TOKEN_REFRESHED).exists()


@pytest.mark.django_db
def test_valid_token_is_not_refreshed_just_in_case(installed, standin):
    portal, _b24 = installed
    before = len(standin.oauth_requests)
    tokens.refresh_portal(portal)
    assert len(standin.oauth_requests) == before


@pytest.mark.django_db
@pytest.mark.parametrize("error", ["invalid_grant", "NOT_INSTALLED", "PAYMENT_REQUIRED", "PORTAL_DELETED"])
def test_blocking_errors_block_the_portal(installed, error):
    portal, b24 = installed
    b24.block(error)
    with pytest.raises(oauth.OAuthRejected) as info:
        tokens.refresh_portal(portal, force=True)
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
        tokens.refresh_portal(portal, force=True)
    assert info.value.code == "invalid_client"
    assert "not-the-secret" not in str(info.value)
    stored = Portal.objects.get(pk=portal.pk)
    assert stored.status == Portal.Status.ACTIVE and stored.refresh_token == portal.refresh_token
    assert stored.refresh_lease_owner == ""  # the lease was given back
    health = client.get("/healthz").json()
    assert health["checks"]["oauth_client"].startswith("error: invalid_client")
    # Fixed: the next refresh works, and the warning goes away.
    settings.B24_CLIENT_SECRET = "test-client-secret"
    tokens.refresh_portal(portal, force=True)
    assert client.get("/healthz").json()["checks"]["oauth_client"] == "ok"


@pytest.mark.django_db
def test_outage_does_not_block(installed, standin):
    portal, _b24 = installed
    standin.oauth_down = True
    with pytest.raises(oauth.OAuthUnavailable):
        tokens.refresh_portal(portal, force=True)
    after = Portal.objects.get(pk=portal.pk)
    assert after.status == Portal.Status.ACTIVE
    assert after.refresh_token == portal.refresh_token
    assert after.events.filter(kind=K.REFRESH_FAILED).exists()


@pytest.mark.django_db
def test_unreachable_oauth_server(installed, settings):
    portal, _b24 = installed
    settings.B24_OAUTH_URL = "http://127.0.0.1:9/oauth/token/"  # discard port: nothing listens
    with pytest.raises(oauth.OAuthUnavailable):
        tokens.refresh_portal(portal, force=True)
    assert Portal.objects.get(pk=portal.pk).status == Portal.Status.ACTIVE


@pytest.mark.django_db
def test_blocked_portal_is_not_refreshed_unless_asked(installed, standin):
    portal, b24 = installed
    b24.block("PAYMENT_REQUIRED")
    with pytest.raises(oauth.OAuthRejected):
        tokens.refresh_portal(portal, force=True)
    with pytest.raises(oauth.PortalNotServing):
        tokens.refresh_portal(portal, force=True)
    b24.block(None)
    portal = tokens.refresh_portal(portal, force=True, allow_blocked=True)
    assert portal.status == Portal.Status.ACTIVE
    assert portal.events.filter(kind=K.UNBLOCKED).exists()


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

    in_threads(worker, 8, timeout=60)
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
from portals.tokens import PortalClient
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
    env = {**os.environ, "DATABASE_URL": database_url()}
    outputs = run_together(RACE_SCRIPT, str(portal.pk), standin.oauth_url, count=4, env=env, timeout=60)
    assert [out for out, _err in outputs] == ["ok"] * 4
    assert len(standin.oauth_requests) - before == 1
