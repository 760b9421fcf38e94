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


@pytest.mark.slow  # waits on a slow OAuth server in real time
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


@pytest.mark.django_db
def test_a_stalled_inbox_makes_healthz_degraded_and_an_unproven_backlog_does_not(client, settings):
    """A claim lapsed for longer than a sweep and a lease (its worker died, nobody took the row over), or a proven
    event due for longer than B24_INBOX_STALL_SECONDS: degraded, with the figures. Unproven rows waiting behind a
    stranger's flood are no stall (they wait by design, inbox lanes)."""
    from datetime import timedelta

    from django.utils import timezone

    from inbox.models import InboxItem

    settings.B24_INBOX_SWEEP_INTERVAL, settings.B24_INBOX_LEASE, settings.B24_INBOX_STALL_SECONDS = 30, 30, 120
    long_ago = timezone.now() - timedelta(seconds=600)
    InboxItem.objects.create(
        member_id="m",
        event="ONAPPINSTALL",
        idempotency_key="u" * 64,
        lane=InboxItem.Lane.UNPROVEN,
        next_attempt_at=long_ago,
        received_at=long_ago,
    )
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["inbox"]["degraded"] is False and body["inbox"]["unfinished"] == 1

    stuck = InboxItem.objects.create(
        member_id="m",
        event="ONAPPUPDATE",
        idempotency_key="p" * 64,
        state=InboxItem.State.PROCESSING,
        lease_owner="dead",
        lease_until=timezone.now() - timedelta(seconds=61),
    )
    body = client.get("/healthz").json()
    assert body["status"] == "degraded" and body["inbox"]["lapsed_claims"] == 1
    assert body["inbox"]["oldest_lapsed_claim_seconds"] >= 61

    stuck.delete()
    InboxItem.objects.create(
        member_id="m",
        event="ONAPPUPDATE",
        idempotency_key="q" * 64,
        next_attempt_at=timezone.now() - timedelta(seconds=121),
    )
    body = client.get("/healthz").json()
    assert body["status"] == "degraded" and body["inbox"]["oldest_overdue_seconds"] >= 121


@pytest.mark.slow  # each frozen round trip gives up after B24_BROKER_IO_TIMEOUT
@pytest.mark.django_db
def test_a_frozen_broker_makes_healthz_degraded(client, frozen_broker, hang_guard):
    """A broker that accepts the connection and then answers nothing (both ways of tests/frozen_broker.py: no
    answer at all, or the handshake answered and then silence, as a broker that froze after it) is reported, so
    a monitor sees the relay's hand-offs failing; the check answers within its deadlines and stays 200 (the
    process itself serves)."""
    answer = client.get("/healthz")
    body = answer.json()
    assert answer.status_code == 200, body
    assert body["status"] == "degraded" and body["checks"]["broker"].startswith("error: "), body
    assert frozen_broker.accepted
