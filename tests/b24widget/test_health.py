"""/healthz recovers by itself: a recorded refusal of our OAuth credentials is put to the OAuth server again,
at most once per interval for the deployment, within a short deadline."""

import threading

import pytest

from bitrix24 import oauth
from tests.conftest import CLIENT_SECRET
from tests.workers import wait_for


def refused_once(settings):
    """What a refresh with a wrong B24_CLIENT_SECRET leaves behind: the refusal, recorded in the cache."""
    settings.B24_CLIENT_SECRET = "not-the-secret"
    with pytest.raises(oauth.ClientMisconfigured):
        oauth.request_refresh("any-refresh-token")
    assert oauth.client_rejected().startswith("invalid_client")


def checks(client) -> tuple[str, str]:
    body = client.get("/healthz").json()
    return body["status"], body["checks"]["oauth_client"]


@pytest.mark.django_db
def test_healthz_recovers_once_the_secret_is_fixed_without_any_other_oauth_call(client, settings, standin):
    refused_once(settings)
    settings.B24_CLIENT_SECRET = CLIENT_SECRET  # the operator fixes the secret; nothing else happens
    before = len(standin.oauth_requests)
    assert checks(client) == ("ok", "ok")
    [probe] = standin.oauth_requests[before:]  # one request: a refresh with a token nobody issued
    assert probe["grant_type"] == "refresh_token" and probe["refresh_token"].startswith("b24widget-client-check-")
    assert oauth.client_rejected() == ""
    assert checks(client) == ("ok", "ok") and len(standin.oauth_requests) == before + 1  # nothing to re-check


@pytest.mark.django_db
def test_a_secret_still_wrong_stays_degraded_and_is_asked_about_once_per_interval(client, settings, standin):
    refused_once(settings)
    before = len(standin.oauth_requests)
    for _ in range(3):
        status, detail = checks(client)
        assert status == "degraded" and detail.startswith("error: invalid_client")
    assert len(standin.oauth_requests) == before + 1  # B24_CLIENT_CHECK_INTERVAL (60 s) not over yet
    assert "not-the-secret" not in detail


@pytest.mark.django_db
def test_the_check_gives_up_at_its_deadline_and_changes_nothing(client, settings, standin):
    refused_once(settings)
    settings.B24_CLIENT_SECRET = CLIENT_SECRET
    settings.B24_CLIENT_CHECK_DEADLINE = 0.3
    standin.oauth_delay = 3  # the answer (invalid_grant: accepted) would come, but after the deadline
    status, detail = checks(client)
    assert status == "degraded" and detail.startswith("error: invalid_client")


@pytest.mark.django_db(transaction=True)
def test_a_check_in_flight_is_not_repeated(client, settings, standin):
    refused_once(settings)
    settings.B24_CLIENT_SECRET = CLIENT_SECRET
    settings.B24_CLIENT_CHECK_DEADLINE = 10
    before = len(standin.oauth_requests)
    standin.oauth_delay = 1.5  # the first probe is still waiting for its answer below
    first = {}
    thread = threading.Thread(target=lambda: first.update(result=checks(client)))
    thread.start()
    try:
        wait_for(lambda: len(standin.oauth_requests) > before, what="the first probe", timeout=30)
        assert checks(client)[0] == "degraded"  # answered at once, without a second probe
    finally:
        thread.join(30)
    assert first["result"] == ("ok", "ok") and len(standin.oauth_requests) == before + 1
