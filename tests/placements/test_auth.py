"""A placement open is believed only for a stored, serving portal, at its confirmed address, with an
AUTH_ID the portal itself confirms; the verdict is cached per token for at most the token's lifetime."""

import pickle
import time

import pytest
from django.core.cache import cache

from bitrix24 import oauth
from portals import tokens
from portals.models import Portal, PortalEvent
from tests.conftest import do_install, do_uninstall
from tests.placements.frames import is_widget, open_widget, portal_calls, text, with_fields

pytestmark = pytest.mark.django_db

K = PortalEvent.Kind
NOT_INSTALLED = "The app is not installed on this portal."
REINSTALL = "Please ask a portal administrator to reinstall the app."
DENIED = "Bitrix24 did not confirm your authorization."


# --- the stored portal (rule 3) ------------------------------------------------------------------


def test_unknown_member_id_is_not_installed(frame, installed, standin, stored_state):
    _, b24 = installed
    recorder = standin.add_recorder()
    fields = b24.placement_post()
    fields.update(member_id="0123456789abcdef0123456789abcdef", DOMAIN=recorder.address)
    before, calls = stored_state(), portal_calls(b24)
    response = open_widget(frame, fields)
    assert response.status_code == 403
    assert "App not installed" in text(response) and NOT_INSTALLED in text(response)
    assert stored_state() == before and portal_calls(b24) == calls and recorder.requests == []


def test_a_portal_that_never_installed_is_not_installed(frame, db, b24):
    response = open_widget(frame, b24.placement_post())
    assert response.status_code == 403 and NOT_INSTALLED in text(response)
    assert b24.calls("batch") == 0 and not Portal.objects.exists()


def test_uninstalled_portal_is_refused_without_asking_bitrix24(client, frame, installed, standin):
    portal, b24 = installed
    assert do_uninstall(client, b24).status_code == 200
    fields = b24.placement_post()  # the stand-in still honours its tokens: the refusal is ours
    calls, oauth_requests = portal_calls(b24), len(standin.oauth_requests)
    response = open_widget(frame, fields)
    assert response.status_code == 403 and NOT_INSTALLED in text(response)
    assert portal_calls(b24) == calls and len(standin.oauth_requests) == oauth_requests


def block_portal(portal, b24):
    """The portal's refresh token is refused (here: NOT_INSTALLED for a while), so it is blocked."""
    b24.block("NOT_INSTALLED")
    with pytest.raises(oauth.OAuthRejected):
        tokens.refresh_portal(portal, force=True)
    b24.unblock()
    assert Portal.objects.get(pk=portal.pk).status == Portal.Status.BLOCKED


def test_a_blocked_portal_asks_ordinary_users_for_an_administrator(frame, installed):
    portal, b24 = installed
    block_portal(portal, b24)
    response = open_widget(frame, b24.placement_post(user_id="2", lang="de"))
    assert response.status_code == 403
    assert "Administrator" in text(response) and "neu zu installieren" not in text(response)
    assert Portal.objects.get(pk=portal.pk).status == Portal.Status.BLOCKED
    # The refusal may be shown in the portal's frame, and only there.
    assert response["Content-Security-Policy"] == f"frame-ancestors http://{b24.domain}"


def test_a_blocked_portal_heals_at_an_administrators_open(frame, installed, standin):
    """No reinstall: the administrator's verified REFRESH_ID becomes the portal's new grant."""
    portal, b24 = installed
    block_portal(portal, b24)
    fields = b24.placement_post(user_id="1")
    response = open_widget(frame, fields)
    assert is_widget(response)
    healed = Portal.objects.get(pk=portal.pk)
    assert healed.status == Portal.Status.ACTIVE and healed.has_tokens and healed.last_error == ""
    assert healed.refresh_token != fields["REFRESH_ID"]  # spent at the OAuth server, its answer stored
    assert healed.events.filter(kind=K.RECOVERED, detail__via="administrator_open").exists()
    # The stored grant works for background calls again.
    from portals.tokens import PortalClient

    assert PortalClient(healed).call("user.admin") is True
    # And ordinary users are served again.
    assert is_widget(open_widget(frame, b24.placement_post(user_id="2")))


# --- the posted DOMAIN (rule 4) ------------------------------------------------------------------


def test_a_foreign_domain_is_refused_and_never_contacted(frame, installed, standin):
    portal, b24 = installed
    recorder = standin.add_recorder()
    fields = b24.placement_post(lang="de")
    fields["DOMAIN"] = recorder.address
    response = open_widget(frame, fields)
    assert response.status_code == 403
    assert "Unbekannte Portaladresse" in text(response)
    assert "laden Sie Bitrix24 neu und öffnen Sie das Widget erneut" in text(response)
    assert recorder.requests == []
    assert recorder.address not in response.get("Content-Security-Policy", "")
    assert response["Content-Security-Policy"] == f"frame-ancestors http://{b24.domain}"
    stored = Portal.objects.get(pk=portal.pk)
    assert stored.domain == b24.domain and stored.status == Portal.Status.ACTIVE
    assert not stored.events.filter(kind=K.DOMAIN_CHANGED).exists()


def test_domain_comparison_ignores_case(settings):
    """The posted DOMAIN is normalized before it is compared with the stored (OAuth-confirmed) address."""
    from bitrix24.addresses import normalize_domain

    settings.B24_ALLOW_HTTP_PORTALS = True
    assert normalize_domain("Portal.Bitrix24.DE.") == "portal.bitrix24.de"
    assert normalize_domain("LocalHost:8000") == "localhost:8000"


# --- AUTH_ID (rule 5) ----------------------------------------------------------------------------


def test_the_portal_confirms_the_user_before_anything_is_shown(frame, installed):
    _, b24 = installed
    before = {m: b24.calls(m) for m in ("user.current", "user.admin", "app.info")}
    response = open_widget(frame, b24.placement_post())
    assert is_widget(response)
    assert {m: b24.calls(m) - n for m, n in before.items()} == {"user.current": 1, "user.admin": 1, "app.info": 1}
    # ... at the stored endpoint, with the user's token (not the app's).
    last = b24.requests[-1]
    assert last["address"] == b24.domain and last["method"] == "batch"


def test_forged_auth_id_is_refused(frame, installed):
    _, b24 = installed
    fields = b24.placement_post()
    fields["AUTH_ID"] = "f" * 64
    response = open_widget(frame, fields)
    assert response.status_code == 403
    assert "Access denied" in text(response) and DENIED in text(response)
    assert 'name="widget_token"' not in response.content.decode()


def test_expired_auth_id_is_refused(frame, installed):
    _, b24 = installed
    fields = b24.placement_post()
    b24.expire_access_tokens()
    response = open_widget(frame, fields)
    assert response.status_code == 403 and DENIED in text(response)


def test_a_token_of_another_portal_is_refused(frame, installed, standin):
    _, b24 = installed
    other = standin.add_portal()
    fields = b24.placement_post()
    fields["AUTH_ID"] = other.issue_tokens()["access_token"]
    response = open_widget(frame, fields)
    assert response.status_code == 403 and DENIED in text(response)
    assert other.calls("batch") == 0  # asked at our stored portal, never at the token's own


def test_a_token_of_another_app_is_refused(frame, installed, settings, standin):
    _, b24 = installed
    settings.B24_CLIENT_ID = "local.another.app"  # the OAuth server now names an app that is not us
    asked = len(standin.server_requests)
    response = open_widget(frame, b24.placement_post())
    assert response.status_code == 403 and DENIED in text(response)
    assert standin.server_requests[asked]["method"] == "app.info"  # the OAuth server's word decides


def test_no_auth_id_is_refused_without_asking_anyone(frame, installed, standin):
    _, b24 = installed
    fields = b24.placement_post()
    del fields["AUTH_ID"]
    calls, oauth_requests = portal_calls(b24), len(standin.oauth_requests)
    response = open_widget(frame, fields)
    assert response.status_code == 403 and "Not signed in" in text(response)
    assert portal_calls(b24) == calls and len(standin.oauth_requests) == oauth_requests


def test_reopening_is_served_from_the_cached_verdict(frame, installed, standin, django_assert_max_num_queries):
    _, b24 = installed
    fields = b24.placement_post(user_id="2")
    assert is_widget(open_widget(frame, fields))
    calls, oauth_requests, server = portal_calls(b24), len(standin.oauth_requests), len(standin.server_requests)

    with django_assert_max_num_queries(3):
        again = open_widget(frame, fields, shape="real")

    assert is_widget(again) and "Oleg User" in text(again)
    assert portal_calls(b24) == calls
    assert len(standin.oauth_requests) == oauth_requests and len(standin.server_requests) == server


def test_the_cache_is_per_token(frame, installed):
    _, b24 = installed
    admin = b24.placement_post(user_id="1")
    assert is_widget(open_widget(frame, admin))
    forged = dict(admin, AUTH_ID="0" * 64)
    assert open_widget(frame, forged).status_code == 403
    other_user = b24.placement_post(user_id="2")
    page = open_widget(frame, other_user)
    assert is_widget(page) and "Oleg User" in text(page) and 'id="admin-only"' in page.content.decode()


def test_auth_expires_zero_is_not_cached(frame, installed):
    _, b24 = installed
    fields = b24.placement_post()
    fields["AUTH_EXPIRES"] = "0"
    assert is_widget(open_widget(frame, fields))
    calls = b24.calls("user.current")
    assert is_widget(open_widget(frame, fields))
    assert b24.calls("user.current") == calls + 1


def _verdict_entries():
    """(seconds left, pickled value) of every cached verdict; the test settings use the local-memory cache."""
    now = time.time()
    return [(cache._expire_info[key] - now, cache._cache[key]) for key in list(cache._cache) if ":verdict:" in key]


@pytest.mark.parametrize("auth_expires,at_most", [("120", 120), ("3600", 300), ("86400", 300), (None, 300)])
def test_the_verdict_lives_no_longer_than_the_token_nor_minutes(frame, installed, auth_expires, at_most):
    """AUTH_EXPIRES is the client's word: it may shorten our B24_VERDICT_MAX_AGE (300 s), never lengthen it."""
    _, b24 = installed
    fields = with_fields(b24.placement_post(), AUTH_EXPIRES=auth_expires)
    assert is_widget(open_widget(frame, fields))
    [(left, value)] = _verdict_entries()
    assert 0 < left <= at_most
    # Cached under a hash: neither the key nor the value holds the token.
    assert all(fields["AUTH_ID"] not in key for key in cache._cache)
    expires_at, verdict = pickle.loads(value)
    assert fields["AUTH_ID"].encode() not in value and verdict.user_id == "1"


def test_a_new_portal_is_activated_by_its_first_verified_open(client, frame, b24):
    portal = do_install(client, b24, event=False)
    assert portal.status == Portal.Status.NEW
    forged = dict(b24.placement_post(), AUTH_ID="e" * 64)
    assert open_widget(frame, forged).status_code == 403
    assert Portal.objects.get(pk=portal.pk).status == Portal.Status.NEW
    assert is_widget(open_widget(frame, b24.placement_post()))
    portal.refresh_from_db()
    assert portal.status == Portal.Status.ACTIVE
    assert portal.events.filter(kind=K.ACTIVATED, detail__via="widget_open").exists()


# --- Bitrix24 failing while it verifies ------------------------------------------------------------


@pytest.mark.parametrize(
    "method,error,status",
    [
        ("user.current", "INTERNAL_SERVER_ERROR", 500),  # one command of the batch fails
        ("app.info", "ERROR_METHOD_NOT_FOUND", 404),  # at the OAuth server (fail_next covers it too)
        ("batch", "INTERNAL_SERVER_ERROR", 500),  # the whole request fails
        ("batch", "OPERATION_TIME_LIMIT", 429),
    ],
)
def test_bitrix24_failures_are_a_502_page_and_not_cached(frame_500, installed, settings, method, error, status):
    _, b24 = installed
    settings.B24_REST_MAX_RETRIES = 0  # one scripted failure is the whole story
    fields = b24.placement_post()
    b24.fail_next(method, error, status)
    response = open_widget(frame_500, fields)
    assert response.status_code == 502
    page = text(response)
    assert "Bitrix24" in page and "Please try again" in page
    assert DENIED not in page  # the user's authorization was not the problem
    assert is_widget(open_widget(frame_500, fields))  # the failure was not cached as a verdict


def test_a_limit_answer_while_verifying_is_retried_within_the_short_wait(frame, client, b24, settings):
    """QUERY_LIMIT_EXCEEDED is the client's to absorb: the widget opens, the answer is counted."""
    from bitrix24 import limits

    # Set before the install, whose requests (placements, events, install steps) fill the bucket at this rate:
    settings.B24_RATE_LIMIT_PER_SECOND = 50  # the next slot after the answer is well within B24_REQUEST_MAX_WAIT
    settings.B24_REST_MAX_RETRIES = 0  # not the generic retries: the limit's own
    do_install(client, b24)
    b24.fail_next("batch", "QUERY_LIMIT_EXCEEDED", 503)
    before = limits.counters.snapshot().get("limit_answers", 0)
    assert is_widget(open_widget(frame, b24.placement_post()))
    assert limits.counters.snapshot()["limit_answers"] == before + 1


def test_payment_required_says_so(frame, installed):
    _, b24 = installed
    fields = b24.placement_post(lang="ru")
    b24.block("PAYMENT_REQUIRED")
    response = open_widget(frame, fields)
    assert 400 <= response.status_code < 500
    assert "Требуется оплата" in text(response) and "Оплаченный период приложения истёк." in text(response)
    assert DENIED not in text(response)


def test_open_lines_failure_still_shows_the_widget(frame, installed):
    _, b24 = installed
    b24.fail_next("imopenlines.config.list.get", "ACCESS_DENIED", 403)
    response = open_widget(frame, b24.placement_post())
    assert is_widget(response)
    assert "The Open Lines of this portal could not be loaded." in text(response)
    assert "Website chat" not in text(response)


def test_with_a_shared_redis_cache_each_process_keeps_a_local_copy(frame, installed, settings):
    """Verdicts read from Redis are kept in the process: a re-open skips the network round trip too."""
    from django.core.cache import caches

    from tests.redis_keys import REDIS_URL, RUN_PREFIX, clear_cache, delete_prefixed

    prefix = f"{RUN_PREFIX}-l1"  # only this test's keys: the server is shared
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": prefix,
        }
    }
    clear_cache(caches["default"])
    _, b24 = installed
    fields = b24.placement_post()
    assert is_widget(open_widget(frame, fields))  # verified, stored in Redis
    assert is_widget(open_widget(frame, fields))  # read from Redis, kept locally
    assert delete_prefixed(REDIS_URL, prefix) > 0  # the verdict was in Redis; now only the local copy is left
    calls = b24.calls("user.current")
    assert is_widget(open_widget(frame, fields))  # from the local copy
    assert b24.calls("user.current") == calls
    # A token nobody verified is still asked about: the local copy is per token.
    other = b24.placement_post(user_id="2")
    assert is_widget(open_widget(frame, other))
    assert b24.calls("user.current") == calls + 1


# --- answers about the plan or the user's access (_includes/system-errors.md) ----------------------------


@pytest.mark.parametrize(
    "error,status,description,page_status,words",
    [
        ("user_access_error", 403, None, 403, "has given access to this app to some users only"),
        ("ACCESS_DENIED", 403, "REST API is available only on commercial plans", 402, "commercial plans only"),
        ("OVERLOAD_LIMIT", 503, None, 503, "paused apps' access to this portal"),
    ],
)
def test_plan_and_access_answers_get_their_own_page(frame, installed, error, status, description, page_status, words):
    _, b24 = installed
    b24.fail_next("user.current", error, status, description=description)
    response = open_widget(frame, b24.placement_post(user_id="2"))
    assert response.status_code == page_status and words in text(response)
    assert DENIED not in text(response)


def test_an_expired_trial_keeps_its_negative_days(frame, installed):
    from placements import auth

    assert auth._days(-3) == -3 and auth._days("-3") == -3 and auth._days("x") is None
    _, b24 = installed
    b24.app_status, b24.days = "T", -3
    response = open_widget(frame, b24.placement_post(user_id="2"))
    assert is_widget(response) and "days left" not in text(response)


@pytest.mark.parametrize(
    "posted,stored", [("portal.bitrix24.de:443", "portal.bitrix24.de"), ("Portal.Bitrix24.DE", "portal.bitrix24.de")]
)
def test_a_domain_with_the_https_port_is_the_same_portal(settings, posted, stored):
    from bitrix24.addresses import normalize_domain

    settings.B24_ALLOW_HTTP_PORTALS = False
    assert normalize_domain(posted) == stored
