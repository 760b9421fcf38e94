"""The stand-in where it used to differ from the docs, and the fault knobs other tests use."""

import socket
import time

import pytest
import requests

from sandbox.standin import METHODS, NotAdministrator
from tests.sandbox.conftest import CLIENT_ID, CLIENT_SECRET, call, refresh

OTHER_ID, OTHER_SECRET = "app.other0000000000.00000000", "other-secret"


def test_every_method_names_an_existing_doc_page():
    assert METHODS and all(m.doc.endswith(".md") for m in METHODS.values())


# --- two apps on one portal ------------------------------------------------------------------------


def test_a_second_app_has_its_own_tokens_app_info_and_bindings(http, standin, portal):
    standin.add_app(OTHER_ID, OTHER_SECRET, code="vendor.other")
    ours, theirs = portal.issue_tokens("1"), portal.issue_tokens("1", client_id=OTHER_ID)
    # The portal's app.info answers for the token's app.
    assert call(http, portal, "app.info", theirs["access_token"]).json()["result"]["CODE"] == "vendor.other"
    assert call(http, portal, "app.info", ours["access_token"]).json()["result"]["CODE"] == CLIENT_ID
    # So does the OAuth server's.
    server = http.post(standin.server_endpoint + "app.info", data={"auth": theirs["access_token"]}, timeout=5)
    assert server.json()["result"]["client_id"] == OTHER_ID
    # Another app's refresh token is no grant for ours, nor ours for it (settings/oauth/error-codes.md).
    assert refresh(http, standin, theirs["refresh_token"]).json()["error"] == "invalid_grant"
    assert (
        refresh(http, standin, ours["refresh_token"], client_id=OTHER_ID, client_secret=OTHER_SECRET).json()["error"]
        == "invalid_grant"
    )
    renewed = refresh(http, standin, theirs["refresh_token"], client_id=OTHER_ID, client_secret=OTHER_SECRET)
    assert renewed.status_code == 200
    # placement.get lists the calling app's bindings only.
    assert (
        call(
            http,
            portal,
            "placement.bind",
            theirs["access_token"],
            PLACEMENT="CONTACT_CENTER",
            HANDLER="https://other.example.test/cc/",
        ).json()["result"]
        is True
    )
    assert call(http, portal, "placement.get", ours["access_token"]).json()["result"] == []
    assert portal.event_handlers("ONAPPINSTALL") == []


# --- install ---------------------------------------------------------------------------------------


def test_only_an_administrator_installs_and_the_post_carries_the_application_token(portal):
    with pytest.raises(NotAdministrator, match="not fully installed"):
        portal.install_post(user_id="2")
    assert not portal.installed
    forged = portal.install_post(user_id="2", forged=True)  # what an ordinary user could send by hand
    assert not portal.installed and forged["PLACEMENT"] == "DEFAULT"
    fields = portal.install_post(user_id="1")
    # settings/oauth/simple-way.md: APPLICATION_TOKEN in the body, the value events carry.
    assert fields["APPLICATION_TOKEN"] == portal.application_token
    assert portal.event_payload("ONAPPINSTALL")["auth[application_token]"] == fields["APPLICATION_TOKEN"]


def test_install_and_update_events_carry_tokens_unless_forged(portal):
    # on-app-install.md / on-app-update.md mark access_token and refresh_token required.
    install = portal.event_payload("ONAPPINSTALL")
    assert install["auth[access_token]"] and install["auth[refresh_token]"]
    assert "auth[access_token]" not in portal.event_payload("ONAPPINSTALL", with_tokens=False)
    assert "auth[access_token]" not in portal.event_payload("ONAPPUNINSTALL")
    before = portal.application_token
    update = portal.update_app()
    assert update["data[VERSION]"] == "2" and update["auth[refresh_token]"]
    assert update["auth[application_token]"] == portal.application_token != before


# --- placements and handlers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "handler, code",
    [
        ("ftp://app.example.test/cc/", "ERROR_UNSUPPORTED_PROTOCOL"),
        ("https://intranet/cc/", "ERROR_WRONG_HANDLER_URL"),
        ("https://app.localhost/cc/", "ERROR_WRONG_HANDLER_URL"),
        ("not a url", "ERROR_UNSUPPORTED_PROTOCOL"),
    ],
)
def test_handler_urls_are_checked_as_the_widget_docs_say(http, portal, handler, code):
    token = portal.issue_tokens("1")["access_token"]
    answer = call(http, portal, "placement.bind", token, PLACEMENT="CONTACT_CENTER", HANDLER=handler)
    assert (answer.status_code, answer.json()["error"]) == (400, code)
    answer = call(http, portal, "event.bind", token, event="ONAPPINSTALL", handler=handler)
    assert answer.json()["error"] == code


def test_contact_center_drops_options_and_placement_get_is_for_administrators(http, portal):
    admin, user = portal.issue_tokens("1")["access_token"], portal.issue_tokens("2")["access_token"]
    assert (
        call(
            http,
            portal,
            "placement.bind",
            admin,
            PLACEMENT="CONTACT_CENTER",
            HANDLER="https://app.example.test/cc/",
            **{"OPTIONS[x]": "1"},
        ).json()["result"]
        is True
    )
    [bound] = call(http, portal, "placement.get", admin).json()["result"]
    assert bound["options"] == []  # api-reference/widgets/contact-center.md
    assert call(http, portal, "placement.get", user).json()["error"] == "ACCESS_DENIED"  # placement-get.md
    portal.install_post()
    options = portal.placement_post(user_id="2")["PLACEMENT_OPTIONS"]
    assert options == f'{{"ID": "{bound["id"]}", "URI": "/contact_center/"}}'


# --- lists, batch, CORS ------------------------------------------------------------------------------


def test_start_minus_one_pages_without_a_count(http, portal):
    portal.crm_items = 120
    token = portal.issue_tokens()["access_token"]
    # settings/performance/huge-data.md: start=-1 and a filter on the last id; no total.
    page = call(http, portal, "crm.item.list", token, entityTypeId="2", start="-1", **{"filter[>id]": "100"}).json()
    assert [i["id"] for i in page["result"]["items"]] == list(range(101, 121))
    assert "total" not in page and "next" not in page
    counted = call(http, portal, "crm.item.list", token, entityTypeId="2").json()
    assert (counted["total"], counted["next"]) == (120, 50)


def test_batch_passes_earlier_results_with_result_references(http, portal):
    token = portal.issue_tokens("2")["access_token"]
    answer = http.post(
        portal.client_endpoint + "batch",
        timeout=5,
        data={
            "auth": token,
            "cmd[me]": "user.current",
            "cmd[items]": "crm.item.list?entityTypeId=$result[me][ID]",
            "cmd[unknown]": "crm.item.list?entityTypeId=$result[nobody][ID]",
        },
    ).json()["result"]
    assert answer["result"]["items"]["items"] == []  # entityTypeId=2 was found
    assert answer["result_error"]["unknown"]["error"] == "NOT_FOUND"


def test_the_portal_rest_allows_calls_from_a_frame(http, portal):
    token = portal.issue_tokens()["access_token"]
    preflight = http.options(
        portal.client_endpoint + "user.current.json",
        timeout=5,
        headers={
            "Origin": "https://app.example.test",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == "content-type"
    answer = call(http, portal, "user.current", token)
    assert answer.headers["Access-Control-Allow-Origin"] == "*"


# --- limits -------------------------------------------------------------------------------------------


@pytest.mark.slow  # real time: the portal's bucket drains
def test_plans_set_the_burst(http, portal):
    token = portal.issue_tokens()["access_token"]
    portal.set_plan("others")
    statuses = [call(http, portal, "server.time", token).status_code for _ in range(51)]
    assert statuses.count(200) >= 50 and statuses[-1] in (200, 503)
    portal.set_plan("enterprise")
    assert (portal.rate_limit_burst, portal.rate_limit_drain) == (250, 5.0)
    # Calls until the first refusal: the burst, plus what drained meanwhile (5 a second; on a loaded machine
    # the calls are slower and more of them pass, so the bound counts the time they took).
    over, passed, started = None, 0, time.monotonic()
    while over is None and passed < 3000:
        answer = call(http, portal, "server.time", token)
        if answer.status_code == 200:
            passed += 1
        else:
            over = answer
    elapsed = time.monotonic() - started
    assert over is not None and (over.status_code, over.json()["error"]) == (503, "QUERY_LIMIT_EXCEEDED")
    assert 250 <= passed <= 250 + 5.0 * elapsed + 1, (passed, elapsed)


def test_operating_time_is_per_method_and_batch_is_not_counted(http, portal):
    token = portal.issue_tokens()["access_token"]
    portal.limits.operating_cost["crm.item.list"] = 200.0
    portal.crm_items = 1
    first = call(http, portal, "crm.item.list", token, entityTypeId="2").json()
    assert first["time"]["operating"] == 200.0 and first["time"]["operating_reset_at"] > time.time()
    batch = http.post(
        portal.client_endpoint + "batch",
        timeout=5,
        data={
            "auth": token,
            "cmd[a]": "crm.item.list?entityTypeId=2",
            "cmd[b]": "crm.item.list?entityTypeId=2",
            "cmd[c]": "server.time",
        },
    ).json()
    assert "operating" not in batch["time"]
    assert batch["result"]["result_time"]["b"]["operating"] == 600.0
    # Now past 480 s: the method is blocked, inside a batch too; other methods go on.
    blocked = call(http, portal, "crm.item.list", token, entityTypeId="2")
    assert (blocked.status_code, blocked.json()["error"]) == (429, "OPERATION_TIME_LIMIT")
    assert call(http, portal, "server.time", token).status_code == 200


# --- fault knobs ----------------------------------------------------------------------------------


@pytest.mark.slow  # real time: a late OAuth answer
def test_a_late_oauth_answer_has_already_rotated_the_refresh_token(http, standin, portal):
    tokens = portal.issue_tokens()
    standin.oauth_late = 60.0  # stop() ends the wait at teardown
    with pytest.raises(requests.ReadTimeout):
        http.get(
            standin.oauth_url,
            timeout=1,
            params={
                "grant_type": "refresh_token",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "refresh_token": tokens["refresh_token"],
            },
        )
    standin.oauth_late = 0
    # The client gave up, but the rotation happened: the old refresh token is spent.
    assert refresh(http, standin, tokens["refresh_token"]).json()["error"] == "invalid_grant"


@pytest.mark.slow  # real time: a trickled answer
def test_a_trickled_answer_arrives_byte_by_byte(standin, portal):
    token = portal.issue_tokens()["access_token"]
    portal.slow_answer("server.time", chunk=1, pause=60)  # stop() ends the trickle at teardown
    host, port = portal.domain.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"GET /rest/server.time?auth={token} HTTP/1.1\r\nHost: {portal.domain}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        body = head.split(b"\r\n\r\n", 1)[1]
        sock.settimeout(1.0)
        try:
            more = sock.recv(4096)
        except TimeoutError:
            more = b""
    assert len(body) + len(more) == 1  # one byte, then a long pause before the next


def test_an_oversized_answer_is_valid_json_of_that_size(http, standin, portal):
    token = portal.issue_tokens()["access_token"]
    portal.oversized_answer("server.time", megabytes=2)
    big = call(http, portal, "server.time", token)
    assert len(big.content) > 2 * 1024 * 1024 and big.json()["result"]
    assert len(call(http, portal, "server.time", token).content) < 1000  # once only
    standin.oversized_answer("oauth.token", megabytes=1)
    renewed = refresh(http, standin, portal.issue_tokens()["refresh_token"])
    assert len(renewed.content) > 1024 * 1024 and renewed.json()["access_token"]


def test_the_oauth_server_grants_no_cors_and_an_options_request_spends_nothing(http, standin, portal):
    tokens = portal.issue_tokens()
    answer = http.options(
        standin.oauth_url,
        timeout=5,
        params={
            "grant_type": "refresh_token",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "refresh_token": tokens["refresh_token"],
        },
        headers={"Origin": "https://app.example.test"},
    )
    assert answer.status_code == 204 and "Access-Control-Allow-Origin" not in answer.headers
    assert refresh(http, standin, tokens["refresh_token"]).status_code == 200  # still unspent
