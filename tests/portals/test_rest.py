"""The REST client against the stand-in: call, batch, list, refresh, retries, moves."""
import pytest

from portals import limits, rest
from portals.models import Portal, PortalEvent
from portals.rest import PortalClient, PortalMovedUnexplained, RestError, TokenRefreshFailed, build_query
from tests.conftest import do_uninstall

pytestmark = pytest.mark.django_db
K = PortalEvent.Kind


def client_for(portal):
    return PortalClient(Portal.objects.get(pk=portal.pk))


def test_call_returns_the_result(installed):
    portal, b24 = installed
    assert client_for(portal).call("user.admin") is True
    answer = client_for(portal).call_raw("server.time")
    assert "time" in answer and "result" in answer


def test_errors_are_typed_with_the_bitrix24_code(installed):
    portal, b24 = installed
    with pytest.raises(RestError) as info:
        client_for(portal).call("no.such.method")
    assert info.value.code == "ERROR_METHOD_NOT_FOUND"
    assert info.value.http_status == 404
    assert portal.access_token not in str(info.value)


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


def test_invalid_token_is_not_refreshed(installed, standin):
    portal, b24 = installed
    before = len(standin.oauth_requests)
    with pytest.raises(RestError) as info:
        PortalClient(portal, access_token="x" * 32).call("user.current")
    assert info.value.code == "invalid_token"
    assert len(standin.oauth_requests) == before


def test_a_users_expired_token_is_not_refreshed(installed, standin):
    portal, b24 = installed
    user_token = b24.issue_tokens("2")["access_token"]
    b24.expire_access_tokens()
    before = len(standin.oauth_requests)
    with pytest.raises(RestError) as info:
        PortalClient(portal, access_token=user_token).call("user.current")
    assert info.value.code == "expired_token"
    assert len(standin.oauth_requests) == before


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
    params = {"PLACEMENT": "CONTACT_CENTER", "HANDLER": "https://a.example/h?x=1&y=2", "TITLE": "T & Co",
              "LANG_ALL": {"de": {"TITLE": "Grüße"}}}
    result = client_for(portal).batch({"u": ("placement.unbind", {"PLACEMENT": "CONTACT_CENTER",
                                                                  "HANDLER": params["HANDLER"]}),
                                       "b": ("placement.bind", params)})
    assert not result.errors or set(result.errors) == {"u"}
    bound = [p for p in b24.bindings["placements"] if p["HANDLER"] == params["HANDLER"]]
    assert bound and bound[0]["TITLE"] == "T & Co" and bound[0]["LANG_ALL"]["de"]["TITLE"] == "Grüße"


@pytest.mark.parametrize("count,requests_made", [(0, 1), (30, 1), (50, 1), (51, 1), (2500, 1), (2501, 2),
                                                 (3000, 2), (10000, 4), (10001, 5)])
def test_list_chains_pages_by_id_inside_batches(installed, count, requests_made):
    """settings/performance/huge-data.md + batch.md: start=-1, >id of the previous command's last item."""
    portal, b24 = installed
    b24.crm_items = count
    before = len(b24.requests)
    items = client_for(portal).list("crm.item.list", {"entityTypeId": 2})
    assert [item["id"] for item in items] == list(range(1, count + 1))
    sent = b24.requests[before:]
    assert [r["method"] for r in sent] == ["batch"] * requests_made  # no count query, no page on its own
    assert all(r["status"] == 200 for r in sent)


@pytest.mark.parametrize("params", [{"order": {"title": "ASC"}}, {"order": {"id": "DESC"}}, {"filter": {"<=id": 9}}])
def test_list_by_id_refuses_another_order_or_id_filter(installed, params):
    """Paging by id owns the order and the id condition; such a call says paging="start" outright."""
    portal, b24 = installed
    before = len(b24.requests)
    with pytest.raises(ValueError):
        client_for(portal).list("crm.item.list", {"entityTypeId": 2, **params})
    assert len(b24.requests) == before


@pytest.mark.parametrize("count,requests_made", [(0, 1), (50, 1), (51, 2), (3000, 3), (10000, 5)])
def test_list_by_start_stays_for_methods_not_filtered_by_id(installed, count, requests_made):
    portal, b24 = installed
    b24.crm_items = count
    before = len(b24.requests)
    items = client_for(portal).list("crm.item.list", {"entityTypeId": 2}, paging="start")
    assert [item["id"] for item in items] == list(range(1, count + 1))
    sent = [r["method"] for r in b24.requests[before:]]
    assert sent == ["crm.item.list"] + ["batch"] * (requests_made - 1)


def test_a_limit_inside_a_list_batch_is_retried_for_those_pages(installed):
    """OPERATION_TIME_LIMIT is per nested command: the chain goes on from the last id it has."""
    portal, b24 = installed
    b24.crm_items = 3000
    b24.fail_next("crm.item.list", "OPERATION_TIME_LIMIT", 429)
    items = client_for(portal).list("crm.item.list", {"entityTypeId": 2})
    assert [item["id"] for item in items] == list(range(1, 3001))


def test_build_query_matches_php():
    assert build_query({"a": {"b": [1, 2]}, "c": "x y&z", "d": True}) == "a[b][0]=1&a[b][1]=2&c=x%20y%26z&d=Y"


# --- portals that move (redirects) ---------------------------------------------------------------------

def test_a_302_after_rename_moves_the_portal_and_repeats_the_call_once(installed, standin):
    portal, b24 = installed
    old = b24.domain
    new = b24.rename()
    client = client_for(portal)
    result = client.batch({"bind": ("placement.bind", {"PLACEMENT": "CONTACT_CENTER", "HANDLER": "https://x.test/h",
                                                        "TITLE": "moved"})})
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


def test_app_info_can_be_asked_at_the_oauth_server(installed, standin):
    portal, b24 = installed
    portal = Portal.objects.get(pk=portal.pk)
    assert portal.server_endpoint == standin.server_endpoint
    before_server, before_portal = len(standin.server_requests), b24.calls("app.info")
    info = PortalClient(portal, oauth_server=True).call("app.info")
    assert info["client_id"] == "local.test.app" and info["install"]["member_id"] == portal.member_id
    assert len(standin.server_requests) == before_server + 1 and b24.calls("app.info") == before_portal
    # Without a known server endpoint the portal answers.
    portal.server_endpoint = ""
    PortalClient(portal, oauth_server=True).call("app.info")
    assert b24.calls("app.info") == before_portal + 1


def test_an_absurd_total_is_refused_before_anything_is_planned(installed):
    """The offset form plans its pages from the portal's `total`: a portal answering 10**12 gets an error,
    not a memory spike (a host answering like a portal, at the HTTP boundary)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Absurd(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.dumps({"result": [{"ID": "1"}], "total": 10**12, "next": 50}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Absurd)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        portal, _b24 = installed
        portal.client_endpoint = f"http://127.0.0.1:{server.server_address[1]}/rest/"
        with pytest.raises(RestError) as info:
            PortalClient(portal).list("some.entity.list", paging="start")
        assert info.value.code == "bad_answer"
    finally:
        server.shutdown()
