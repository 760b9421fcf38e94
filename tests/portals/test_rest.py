"""The REST client over a stored portal (PortalClient) against the stand-in: the refresh stored, retries, limits,
batches, moves recorded.

The client through the Credentials protocol alone is tested in tests/bitrix24/test_client.py, its paging in
tests/bitrix24/test_paging.py.
"""

import pytest

from bitrix24 import client as rest
from bitrix24 import limits
from bitrix24.errors import LimitWaitExceeded, PortalMovedUnexplained, RestError, TokenRefreshFailed
from portals.models import Portal, PortalEvent
from portals.tokens import PortalClient
from tests.conftest import do_uninstall

pytestmark = pytest.mark.django_db
K = PortalEvent.Kind


def client_for(portal):
    return PortalClient(Portal.objects.get(pk=portal.pk))


def test_expired_token_is_refreshed_once_and_the_call_retried(installed, standin):
    portal, b24 = installed
    b24.expire_access_tokens()
    before = len(standin.oauth_requests)
    assert client_for(portal).call("user.admin") is True
    assert len(standin.oauth_requests) == before + 1
    assert Portal.objects.get(pk=portal.pk).access_token != portal.access_token


def test_refresh_that_fails_is_typed_and_blocks(installed):
    portal, b24 = installed
    b24.expire_access_tokens()
    b24.block("PAYMENT_REQUIRED")
    with pytest.raises(TokenRefreshFailed) as info:
        client_for(portal).call("user.admin")
    assert info.value.code == "PAYMENT_REQUIRED"
    assert Portal.objects.get(pk=portal.pk).status == Portal.Status.BLOCKED


@pytest.mark.slow  # real time: back-off waits
def test_query_limit_is_retried_with_backoff(installed):
    portal, b24 = installed
    b24.fail_next("user.admin", "QUERY_LIMIT_EXCEEDED", 503, times=2)
    before = b24.calls("user.admin")
    assert client_for(portal).call("user.admin") is True
    assert b24.calls("user.admin") - before == 3


def test_retries_are_bounded(installed, settings):
    portal, b24 = installed
    settings.B24_REST_MAX_RETRIES = 2
    b24.fail_next("user.admin", "INTERNAL_SERVER_ERROR", 503, times=10)
    before = b24.calls("user.admin")
    with pytest.raises(RestError) as info:
        client_for(portal).call("user.admin")
    assert info.value.code == "INTERNAL_SERVER_ERROR"
    assert b24.calls("user.admin") - before == 3


@pytest.mark.slow  # real time: back-off waits
def test_limit_answers_are_retried_apart_from_the_generic_retries(installed, settings):
    """Each QUERY_LIMIT_EXCEEDED slows the shared bucket and waits for the next slot: never surfaced, counted."""
    portal, b24 = installed
    settings.B24_REST_MAX_RETRIES = 0
    settings.B24_RATE_LIMIT_PER_SECOND = 200  # the slowed slots stay short for the test
    b24.fail_next("user.admin", "QUERY_LIMIT_EXCEEDED", 503, times=8)
    before = limits.counters.snapshot()
    assert client_for(portal).call("user.admin") is True
    after = limits.counters.snapshot()
    assert after["limit_answers"] - before.get("limit_answers", 0) == 8
    assert after["limit_retries"] - before.get("limit_retries", 0) == 8


@pytest.mark.slow  # real time: back-off waits
def test_limit_answers_end_after_many(installed, settings):
    portal, b24 = installed
    settings.B24_RATE_LIMIT_PER_SECOND = 1000
    b24.fail_next("user.admin", "QUERY_LIMIT_EXCEEDED", 503, times=rest._LIMIT_RETRIES + 5)
    before = b24.calls("user.admin")
    with pytest.raises(RestError) as info:
        client_for(portal).call("user.admin")
    assert info.value.code == "QUERY_LIMIT_EXCEEDED"
    assert b24.calls("user.admin") - before == rest._LIMIT_RETRIES + 1


def test_a_web_request_retries_a_limit_answer_only_briefly(installed, settings):
    """No web thread sleeps long: at most two more tries, each within B24_REQUEST_MAX_WAIT."""
    portal, b24 = installed
    settings.B24_RATE_LIMIT_PER_SECOND = 1000
    limits.cache.delete(f"b24widget:rl:{portal.member_id}")  # the install's slots were at the plan's 2/s
    b24.fail_next("user.admin", "QUERY_LIMIT_EXCEEDED", 503, times=5)
    before = b24.calls("user.admin")
    with pytest.raises(RestError) as info:
        PortalClient(Portal.objects.get(pk=portal.pk), interactive=True).call("user.admin")
    assert info.value.code == "QUERY_LIMIT_EXCEEDED"
    assert b24.calls("user.admin") - before == 3


def test_a_limit_inside_a_batch_is_retried_for_just_that_command(installed):
    """settings/performance/limits.md: OPERATION_TIME_LIMIT is per nested method; the others ran once."""
    portal, b24 = installed
    b24.fail_next("user.admin", "OPERATION_TIME_LIMIT", 429)
    before_admin, before_time, before_batch = b24.calls("user.admin"), b24.calls("server.time"), b24.calls("batch")
    result = client_for(portal).batch({"admin": ("user.admin", {}), "time": ("server.time", {})})
    assert not result.errors and result.result["admin"] is True and result.result["time"]
    assert b24.calls("user.admin") - before_admin == 2  # refused once, then sent again alone
    assert b24.calls("server.time") - before_time == 1
    assert b24.calls("batch") - before_batch == 2


def test_overload_limit_is_never_retried(installed):
    portal, b24 = installed
    b24.fail_next("user.admin", "OVERLOAD_LIMIT", 503, times=2)
    before = b24.calls("user.admin")
    with pytest.raises(RestError) as info:
        client_for(portal).call("user.admin")
    assert info.value.code == "OVERLOAD_LIMIT"
    assert b24.calls("user.admin") - before == 1


def test_operation_time_limit_is_retried(installed):
    portal, b24 = installed
    b24.fail_next("user.admin", "OPERATION_TIME_LIMIT", 429, times=1)
    assert client_for(portal).call("user.admin") is True


# --- a caller that waits elsewhere (limit_retries=0): no limit waited out in its thread (issue 26) -----------


def test_a_caller_that_waits_elsewhere_gets_a_batchs_limit_answers_at_once(installed):
    """limit_retries=0 (a background task that comes back at the portal's slot): commands refused for a limit
    inside a batch are reported, not sent again alone in the caller's thread; the other commands ran once."""
    portal, b24 = installed
    b24.fail_next("user.admin", "QUERY_LIMIT_EXCEEDED", 503, times=10)
    b24.fail_next("app.info", "OPERATION_TIME_LIMIT", 429, times=10)
    before = {m: b24.calls(m) for m in ("batch", "user.admin", "app.info", "server.time")}
    client = PortalClient(Portal.objects.get(pk=portal.pk), limit_retries=0)
    result = client.batch({"admin": ("user.admin", {}), "info": ("app.info", {}), "time": ("server.time", {})})
    assert (result.errors["admin"].code, result.errors["info"].code) == ("QUERY_LIMIT_EXCEEDED", "OPERATION_TIME_LIMIT")
    assert result.result["time"]
    assert {m: b24.calls(m) - n for m, n in before.items()} == {
        "batch": 1,
        "user.admin": 1,
        "app.info": 1,
        "server.time": 1,
    }
    # The default client (and a web request's) still sends them again, alone.
    result = client_for(portal).batch({"admin": ("user.admin", {}), "time": ("server.time", {})})
    assert b24.calls("batch") - before["batch"] == 1 + 1 + 4 and result.errors["admin"].code == "QUERY_LIMIT_EXCEEDED"


def test_a_caller_that_waits_elsewhere_gets_operation_time_limit_at_once_and_the_method_stays_held_back(installed):
    """OPERATION_TIME_LIMIT to a caller with limit_retries=0: not sent again (the client waited for the method's
    reset, up to B24_MAX_WAIT, in the caller's thread); the method is held back for every process, and its next
    call fails at once, unsent, saying how long the hold lasts."""
    import time

    portal, b24 = installed
    b24.fail_next("user.admin", "OPERATION_TIME_LIMIT", 429, times=1)
    before = b24.calls("user.admin")
    client = PortalClient(Portal.objects.get(pk=portal.pk), limit_retries=0)
    with pytest.raises(RestError) as info:
        client.call("user.admin")
    assert info.value.code == "OPERATION_TIME_LIMIT" and b24.calls("user.admin") - before == 1
    assert limits.paused_until(portal.member_id, "user.admin")  # held back for everyone
    limits.pause_method(portal.member_id, "user.admin", time.time() + 30)  # the reset is 30 s away
    with pytest.raises(LimitWaitExceeded) as held:
        client.call("user.admin")
    assert b24.calls("user.admin") - before == 1  # nothing sent
    assert 25 < held.value.retry_after <= 30 and 25 < limits.retry_in(portal.member_id, held.value) <= 30
    assert client.call("server.time")  # other methods go on


def test_batch_splits_into_requests_of_50(installed):
    portal, b24 = installed
    commands = {f"c{i}": ("user.admin", {}) for i in range(120)}
    before = b24.calls("batch")
    result = client_for(portal).batch(commands)
    assert b24.calls("batch") - before == 3
    assert len(result.result) == 120 and not result.errors
    assert all(v is True for v in result.result.values())


def test_batch_reports_per_command_errors(installed):
    portal, b24 = installed
    result = client_for(portal).batch({"ok": ("user.admin", {}), "bad": ("no.such.method", {})})
    assert result.result["ok"] is True
    assert result.errors["bad"].code == "ERROR_METHOD_NOT_FOUND"


def test_batch_passes_nested_parameters(installed):
    portal, b24 = installed
    params = {
        "PLACEMENT": "CONTACT_CENTER",
        "HANDLER": "https://a.example/h?x=1&y=2",
        "TITLE": "T & Co",
        "LANG_ALL": {"de": {"TITLE": "Grüße"}},
    }
    result = client_for(portal).batch(
        {
            "u": ("placement.unbind", {"PLACEMENT": "CONTACT_CENTER", "HANDLER": params["HANDLER"]}),
            "b": ("placement.bind", params),
        }
    )
    assert not result.errors or set(result.errors) == {"u"}
    bound = [p for p in b24.bindings["placements"] if p["HANDLER"] == params["HANDLER"]]
    assert bound and bound[0]["TITLE"] == "T & Co" and bound[0]["LANG_ALL"]["de"]["TITLE"] == "Grüße"


# --- portals that move (redirects) ---------------------------------------------------------------------


def test_a_302_after_rename_moves_the_portal_and_repeats_the_call_once(installed, standin):
    portal, b24 = installed
    old = b24.domain
    new = b24.rename()
    client = client_for(portal)
    result = client.batch(
        {"bind": ("placement.bind", {"PLACEMENT": "CONTACT_CENTER", "HANDLER": "https://x.test/h", "TITLE": "moved"})}
    )
    assert not result.errors
    # The call arrived at the new address with its parameters, exactly once.
    arrived = [r for r in b24.requests if r["method"] == "batch" and r["address"] == new]
    assert len(arrived) == 1
    assert [p["TITLE"] for p in b24.bindings["placements"] if p["HANDLER"] == "https://x.test/h"] == ["moved"]
    stored = Portal.objects.get(pk=portal.pk)
    assert stored.domain == new and stored.client_endpoint == f"http://{new}/rest/"
    assert stored.events.filter(kind=K.DOMAIN_CHANGED, detail__old=old, detail__new=new).exists()


def test_a_redirect_the_oauth_server_does_not_explain_is_an_error(installed, standin):
    portal, b24 = installed
    recorder = standin.add_recorder()
    b24.redirect_to(recorder.address)
    with pytest.raises(PortalMovedUnexplained):
        client_for(portal).call("user.admin")
    assert recorder.requests == []
    assert Portal.objects.get(pk=portal.pk).domain == b24.domain


def test_uninstalled_portal_has_no_token_to_send(installed, client):
    portal, b24 = installed
    assert do_uninstall(client, b24).status_code == 200
    with pytest.raises(TokenRefreshFailed):
        client_for(portal).call("user.admin")
