"""The local Bitrix24 stand-in answers like oauth.bitrix.info and a portal's REST, over real HTTP."""

import json
import threading

import pytest
import requests

from sandbox.standin import StandIn, frame_query_and_body, parse_php_params
from tests.sandbox.conftest import CLIENT_ID, CLIENT_SECRET, call, refresh

TIME_KEYS = {
    "start",
    "finish",
    "duration",
    "processing",
    "date_start",
    "date_finish",
    "operating",
    "operating_reset_at",
}


# --- OAuth server -------------------------------------------------------------------------------


def test_refresh_rotates_and_a_spent_refresh_token_is_invalid_grant(http, standin, portal):
    tokens = portal.issue_tokens()

    first = refresh(http, standin, tokens["refresh_token"])
    assert first.status_code == 200
    body = first.json()
    assert body["refresh_token"] != tokens["refresh_token"]
    assert body["member_id"] == portal.member_id
    assert body["client_endpoint"] == portal.client_endpoint
    assert body["server_endpoint"] == standin.server_endpoint
    assert body["domain"] == standin.address
    assert body["expires_in"] == 3600 and body["user_id"] == 1 and body["status"] == "F"
    assert call(http, portal, "user.current", body["access_token"]).status_code == 200

    again = refresh(http, standin, tokens["refresh_token"])
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    # The rotated token works (and is a POST form too).
    posted = http.post(
        standin.oauth_url,
        timeout=5,
        data={
            "grant_type": "refresh_token",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "refresh_token": body["refresh_token"],
        },
    )
    assert posted.status_code == 200
    assert standin.oauth_requests[0]["refresh_token"] == tokens["refresh_token"]
    assert len(standin.oauth_requests) == 3


@pytest.mark.parametrize("override", [{"client_secret": "wrong"}, {"client_id": "app.other"}])
def test_wrong_client_credentials_are_invalid_client(http, standin, portal, override):
    tokens = portal.issue_tokens()
    answer = refresh(http, standin, tokens["refresh_token"], **override)
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"
    # The refresh token is not spent by a refused request.
    assert refresh(http, standin, tokens["refresh_token"]).status_code == 200


def test_unknown_refresh_token_is_invalid_grant(http, standin, portal):
    answer = refresh(http, standin, "no-such-token")
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_grant")


def test_oauth_down_answers_503_without_json(http, standin, portal):
    tokens = portal.issue_tokens()
    standin.oauth_down = True
    answer = refresh(http, standin, tokens["refresh_token"])
    assert answer.status_code == 503
    with pytest.raises(ValueError):
        answer.json()
    standin.oauth_down = False
    assert refresh(http, standin, tokens["refresh_token"]).status_code == 200


def test_concurrent_refreshes_of_one_token_only_one_wins(http, standin, portal):
    tokens = portal.issue_tokens()
    standin.oauth_delay = 0.2
    statuses = []

    def worker():
        with requests.Session() as session:
            session.trust_env = False
            statuses.append(refresh(session, standin, tokens["refresh_token"]).status_code)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 400]


def test_server_rest_app_info_is_the_trusted_status(http, standin):
    portal = standin.add_portal(app_status="T")
    portal.payment_expired, portal.days = True, -3
    token = portal.issue_tokens()["access_token"]
    answer = http.post(standin.server_endpoint + "app.info", data={"auth": token}, timeout=5)
    assert answer.status_code == 200
    info = answer.json()["result"]
    # The OAuth server's own shape (b24pysdk schemas/api.py B24AppInfoResultData), not the portal's.
    assert set(info) == {"client_id", "scope", "expires", "user_id", "install"}
    assert (info["client_id"], info["user_id"], info["install"]["status"]) == (CLIENT_ID, 1, "T")
    assert info["install"]["member_id"] == portal.member_id and info["install"]["installed"] is False
    assert info["install"]["client_endpoint"] == portal.client_endpoint
    assert "CODE" not in info and "PAYMENT_EXPIRED" not in info["install"]
    assert standin.server_requests[-1]["method"] == "app.info"
    unknown = http.get(standin.server_endpoint + "app.info.json", params={"auth": "nope"}, timeout=5)
    assert (unknown.status_code, unknown.json()["error"]) == (401, "invalid_token")


# --- portal REST --------------------------------------------------------------------------------


def test_rest_success_carries_a_time_block(http, portal):
    token = portal.issue_tokens("2")["access_token"]
    answer = call(http, portal, "user.current", token)
    assert answer.status_code == 200
    body = answer.json()
    assert body["result"]["ID"] == "2" and body["result"]["EMAIL"] == "oleg@example.test"
    assert set(body["time"]) >= TIME_KEYS
    assert call(http, portal, "user.admin", token).json()["result"] is False
    admin = portal.issue_tokens("1")["access_token"]
    assert call(http, portal, "user.admin", admin).json()["result"] is True
    # Query-string auth and a JSON body are accepted too.
    assert http.get(portal.client_endpoint + "server.time", params={"auth": token}, timeout=5).status_code == 200
    info = http.post(portal.client_endpoint + "app.info", json={"auth": token}, timeout=5).json()
    assert info["result"]["CODE"] == CLIENT_ID and info["result"]["INSTALLED"] is False
    portal.finish_install()
    info = http.post(portal.client_endpoint + "app.info", json={"auth": token}, timeout=5).json()
    assert info["result"]["INSTALLED"] is True
    assert portal.requests[0]["method"] == "user.current"
    assert portal.requests[0]["auth"] == token and "auth" not in portal.requests[0]["params"]


def test_missing_invalid_and_expired_tokens(http, standin, portal):
    missing = http.post(portal.client_endpoint + "user.current.json", timeout=5)
    assert (missing.status_code, missing.json()["error"]) == (401, "NO_AUTH_FOUND")

    invalid = call(http, portal, "user.current", "not-a-token")
    assert (invalid.status_code, invalid.json()["error"]) == (401, "invalid_token")

    tokens = portal.issue_tokens()
    portal.expire_access_tokens()
    expired = call(http, portal, "user.current", tokens["access_token"])
    assert (expired.status_code, expired.json()["error"]) == (401, "expired_token")
    fresh = refresh(http, standin, tokens["refresh_token"]).json()["access_token"]
    assert call(http, portal, "user.current", fresh).status_code == 200

    unknown = call(http, portal, "no.such.method", fresh)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "ERROR_METHOD_NOT_FOUND")


def test_access_ttl_expires_tokens_by_time(http):
    with StandIn(CLIENT_ID, CLIENT_SECRET, access_ttl=0) as standin:
        portal = standin.add_portal()
        token = portal.issue_tokens()["access_token"]
        assert call(http, portal, "profile", token).json()["error"] == "expired_token"


def test_a_token_from_another_portal_is_refused(http, standin):
    first, second = standin.add_portal(), standin.add_portal()
    token = first.issue_tokens()["access_token"]
    answer = call(http, second, "user.current", token)
    assert (answer.status_code, answer.json()["error"]) == (401, "invalid_token")
    assert standin.portal_by_member_id(second.member_id) is second


def test_missing_scope_is_insufficient_scope(http, standin):
    portal = standin.add_portal(scope="placement")
    token = portal.issue_tokens()["access_token"]
    answer = call(http, portal, "imopenlines.config.list.get", token)
    assert (answer.status_code, answer.json()["error"]) == (403, "insufficient_scope")


def test_placement_bind_duplicate_admin_only_and_nested_params(http, portal):
    token = portal.issue_tokens("1")["access_token"]
    form = {
        "PLACEMENT": "CONTACT_CENTER",
        "HANDLER": "http://app.test/placement/",
        "TITLE": "Widget",
        "LANG_ALL[en][TITLE]": "Widget",
        "LANG_ALL[de][TITLE]": "Widget DE",
    }
    first = call(http, portal, "placement.bind", token, **form)
    assert first.status_code == 200 and first.json()["result"] is True
    binding = portal.bindings["placements"][0]
    assert binding["LANG_ALL"] == {"en": {"TITLE": "Widget"}, "de": {"TITLE": "Widget DE"}}

    duplicate = call(http, portal, "placement.bind", token, **form)
    assert duplicate.status_code == 400
    assert duplicate.json()["error"] == "ERROR_CORE"
    assert "Handler already binded" in duplicate.json()["error_description"]

    user_token = portal.issue_tokens("2")["access_token"]
    denied = call(
        http, portal, "placement.bind", user_token, PLACEMENT="CRM_DEAL_LIST_MENU", HANDLER="http://app.test/x/"
    )
    assert (denied.status_code, denied.json()["error"]) == (403, "ACCESS_DENIED")

    listed = call(http, portal, "placement.get", token).json()["result"]
    assert [(b["placement"], b["handler"]) for b in listed] == [("CONTACT_CENTER", "http://app.test/placement/")]
    unbound = call(
        http, portal, "placement.unbind", token, PLACEMENT="CONTACT_CENTER", HANDLER="http://app.test/placement/"
    )
    assert unbound.json()["result"] == {"count": 2}  # placement-unbind.md: +1 found, +1 removed
    assert portal.bindings["placements"] == []


def test_event_bind_duplicate_is_error_core(http, portal):
    token = portal.issue_tokens()["access_token"]
    params = {"event": "onAppUninstall", "handler": "http://app.test/events/"}
    assert call(http, portal, "event.bind", token, **params).json()["result"] is True
    duplicate = call(http, portal, "event.bind", token, **params)
    assert duplicate.status_code == 400
    assert duplicate.json() == {
        "error": "ERROR_CORE",
        "error_description": "Unable to set event handler: Handler already binded",
    }
    listed = call(http, portal, "event.get", token).json()["result"]
    assert [(e["event"], e["handler"]) for e in listed] == [("ONAPPUNINSTALL", "http://app.test/events/")]
    assert call(http, portal, "event.unbind", token, **params).json()["result"] == {"count": 1}


def test_batch_results_errors_and_counts(http, portal):
    portal.crm_items = 120
    token = portal.issue_tokens()["access_token"]
    answer = http.post(
        portal.client_endpoint + "batch",
        timeout=5,
        data={
            "auth": token,
            "halt": "0",
            "cmd[me]": "user.current",
            "cmd[lines]": "imopenlines.config.list.get",
            "cmd[items]": "crm.item.list?entityTypeId=2&start=50",
            "cmd[bad]": "no.such.method?x=1",
            "cmd[nested]": "batch?cmd[a]=user.current",
        },
    )
    assert answer.status_code == 200
    body = answer.json()
    result = body["result"]
    assert result["result"]["me"]["ID"] == "1"
    assert [line["LINE_NAME"] for line in result["result"]["lines"]] == ["Website chat", "Telegram"]
    assert result["result"]["items"]["items"][0] == {"id": 51, "title": "Item 51"}
    assert result["result_total"] == {"items": 120}
    assert result["result_next"] == {"items": 100}
    assert result["result_error"]["bad"]["error"] == "ERROR_METHOD_NOT_FOUND"
    assert result["result_error"]["nested"]["error"] == "ERROR_BATCH_METHOD_NOT_ALLOWED"
    # settings/performance/limits.md: the outer batch is not counted in operating; its nested calls are.
    assert set(result["result_time"]["me"]) >= TIME_KEYS
    assert TIME_KEYS - {"operating", "operating_reset_at"} == set(body["time"])
    # The nested batch counts too: sub-commands are counted under their own method names.
    assert portal.calls("batch") == 2 and portal.calls("user.current") == 1
    assert portal.calls("crm.item.list") == 1

    halted = http.post(
        portal.client_endpoint + "batch",
        timeout=5,
        json={"auth": token, "halt": 1, "cmd": {"bad": "no.such.method", "me": "user.current"}},
    ).json()
    assert halted["result"]["result"] == [] and list(halted["result"]["result_error"]) == ["bad"]


def test_batch_over_50_commands_reports_the_rest_as_exceeded(http, portal):
    token = portal.issue_tokens()["access_token"]
    commands = {f"c{n}": "server.time" for n in range(52)}
    answer = http.post(portal.client_endpoint + "batch", timeout=5, json={"auth": token, "cmd": commands})
    assert answer.status_code == 200
    result = answer.json()["result"]
    assert len(result["result"]) == 50
    assert set(result["result_error"]) == {"c50", "c51"}
    assert result["result_error"]["c50"]["error"] == "ERROR_BATCH_LENGTH_EXCEEDED"


def test_crm_item_list_pages_by_50(http, portal):
    portal.crm_items = 120
    token = portal.issue_tokens()["access_token"]
    seen, start = [], 0
    while start is not None:
        body = call(http, portal, "crm.item.list", token, entityTypeId="2", start=str(start)).json()
        assert body["total"] == 120
        seen += [item["id"] for item in body["result"]["items"]]
        start = body.get("next")
    assert seen == list(range(1, 121))
    assert portal.calls("crm.item.list") == 3


def test_rename_redirects_old_address_and_oauth_reports_new_endpoint(http, standin, portal):
    tokens = portal.issue_tokens()
    old = portal.domain
    new = portal.rename()
    assert portal.domain == new != old and portal.client_endpoint == f"http://{new}/rest/"

    moved = http.post(
        f"http://{old}/rest/user.current.json?x=1",
        data={"auth": tokens["access_token"]},
        timeout=5,
        allow_redirects=False,
    )
    assert moved.status_code == 302
    assert moved.headers["Location"] == f"http://{new}/rest/user.current.json?x=1"
    assert moved.content == b""
    assert portal.requests[-1]["address"] == old and portal.requests[-1]["status"] == 302

    body = refresh(http, standin, tokens["refresh_token"]).json()
    assert body["client_endpoint"] == f"http://{new}/rest/"
    assert call(http, portal, "user.current", body["access_token"]).status_code == 200

    newest = portal.rename()
    for address in (old, new):
        again = http.get(f"http://{address}/rest/server.time", timeout=5, allow_redirects=False)
        assert again.headers["Location"] == f"http://{newest}/rest/server.time"


def test_redirect_to_without_the_oauth_server_knowing(http, standin, portal):
    recorder = standin.add_recorder()
    tokens = portal.issue_tokens()
    portal.redirect_to(recorder.address)
    moved = call(http, portal, "user.current", tokens["access_token"])
    assert moved.status_code == 302
    assert moved.headers["Location"] == f"http://{recorder.address}/rest/user.current.json"
    body = refresh(http, standin, tokens["refresh_token"]).json()
    assert body["client_endpoint"] == portal.client_endpoint  # unchanged


def test_recorder_records_and_answers_404(http, standin):
    recorder = standin.add_recorder()
    answer = http.post(
        f"http://{recorder.address}/rest/user.current.json?a=1", data={"auth": "tok", "x[y]": "z"}, timeout=5
    )
    assert answer.status_code == 404
    entry = recorder.requests[0]
    assert (entry["http_method"], entry["path"], entry["query"]) == ("POST", "/rest/user.current.json", "a=1")
    assert entry["params"] == {"a": "1", "auth": "tok", "x": {"y": "z"}}


def test_rate_limit_answers_query_limit_exceeded(http, portal):
    portal.rate_limit = True
    token = portal.issue_tokens()["access_token"]
    statuses = [call(http, portal, "server.time", token).status_code for _ in range(55)]
    assert statuses[:50] == [200] * 50
    assert 503 in statuses[50:]
    limited = call(http, portal, "server.time", token)
    assert limited.json() == {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}


def test_fail_next_answers_the_scripted_error_then_recovers(http, portal):
    token = portal.issue_tokens()["access_token"]
    portal.fail_next("user.current", "OPERATION_TIME_LIMIT", 429, times=2)
    for _ in range(2):
        failed = call(http, portal, "user.current", token)
        assert failed.status_code == 429 and failed.json()["error"] == "OPERATION_TIME_LIMIT"
        assert failed.json()["error_description"]
    assert call(http, portal, "user.current", token).status_code == 200
    assert portal.calls("user.current") == 3


def test_uninstall_and_block(http, standin, portal):
    tokens = portal.issue_tokens()
    portal.block("PAYMENT_REQUIRED")
    assert refresh(http, standin, tokens["refresh_token"]).json()["error"] == "PAYMENT_REQUIRED"
    paid = call(http, portal, "user.current", tokens["access_token"])
    assert (paid.status_code, paid.json()["error"]) == (402, "PAYMENT_REQUIRED")
    portal.unblock()

    portal.uninstall()
    gone = call(http, portal, "user.current", tokens["access_token"])
    assert (gone.status_code, gone.json()["error"]) == (401, "invalid_token")
    later = portal.issue_tokens()
    assert refresh(http, standin, later["refresh_token"]).json()["error"] == "NOT_INSTALLED"

    portal.install_post()
    assert refresh(http, standin, later["refresh_token"]).status_code == 200


# --- what Bitrix24 posts to the app -------------------------------------------------------------


def test_install_and_placement_posts(http, standin, portal):
    before = portal.application_token
    fields = portal.install_post(lang="de")
    assert portal.application_token != before and portal.installed and not portal.install_finished
    assert {
        k: fields[k]
        for k in ("DOMAIN", "PROTOCOL", "LANG", "AUTH_EXPIRES", "member_id", "status", "PLACEMENT", "PLACEMENT_OPTIONS")
    } == {
        "DOMAIN": portal.domain,
        "PROTOCOL": "0",
        "LANG": "de",
        "AUTH_EXPIRES": "3600",
        "member_id": portal.member_id,
        "status": "F",
        "PLACEMENT": "DEFAULT",
        "PLACEMENT_OPTIONS": "{}",
    }
    assert refresh(http, standin, fields["REFRESH_ID"]).status_code == 200
    info = call(http, portal, "app.info", fields["AUTH_ID"]).json()["result"]
    assert info["INSTALLED"] is False
    portal.finish_install()

    opened = portal.placement_post(user_id="2", options={"ID": "7"})
    assert opened["PLACEMENT"] == "CONTACT_CENTER"
    assert json.loads(opened["PLACEMENT_OPTIONS"]) == {"ID": "7"}
    assert call(http, portal, "user.current", opened["AUTH_ID"]).json()["result"]["ID"] == "2"
    query, body = frame_query_and_body(opened)
    assert set(query) == {"DOMAIN", "PROTOCOL", "LANG", "APP_SID"} and "AUTH_ID" in body


def test_event_payloads(portal):
    install = portal.event_payload("ONAPPINSTALL", with_tokens=True)
    assert install["event"] == "ONAPPINSTALL"
    assert install["data[INSTALLED]"] == "Y" and install["data[LANGUAGE_ID]"] == "en"
    assert install["auth[application_token]"] == portal.application_token
    assert install["auth[member_id]"] == portal.member_id
    assert install["auth[client_endpoint]"] == portal.client_endpoint
    assert install["auth[access_token]"] and install["auth[user_id]"] == "1"

    uninstall = portal.event_payload("ONAPPUNINSTALL", data={"CLEAN": "1"}, application_token="forged")
    assert uninstall["data[CLEAN]"] == "1" and uninstall["auth[application_token]"] == "forged"
    assert "auth[access_token]" not in uninstall
    update = portal.event_payload("ONAPPUPDATE")
    assert {"data[VERSION]", "data[PREVIOUS_VERSION]"} <= set(update)


def test_parse_php_params():
    pairs = [
        ("LANG_ALL[en][TITLE]", "T"),
        ("cmd[a]", "x?y=1"),
        ("filter[ID][]", "1"),
        ("filter[ID][]", "2"),
        ("plain", "v"),
        ("odd[", "w"),
    ]
    assert parse_php_params(pairs) == {
        "LANG_ALL": {"en": {"TITLE": "T"}},
        "cmd": {"a": "x?y=1"},
        "filter": {"ID": ["1", "2"]},
        "plain": "v",
        "odd[": "w",
    }


def test_stop_closes_every_server(http):
    standin = StandIn(CLIENT_ID, CLIENT_SECRET).start()
    portal = standin.add_portal()
    recorder = standin.add_recorder()
    token = portal.issue_tokens()["access_token"]
    assert call(http, portal, "server.time", token).status_code == 200  # keeps a connection open
    standin.stop()
    standin.stop()  # idempotent
    for url in (portal.client_endpoint + "server.time", standin.oauth_url, recorder.url):
        with pytest.raises(requests.ConnectionError):
            http.get(url, timeout=2)
