"""bitrix24/oauth.py: token answers validated (parse_grant, token_info), and the refresh against the stand-in.

The stand-in's OAuth server answers as oauth.bitrix.info does (tests/conftest.py points B24_OAUTH_URL at it
for every test); answers it never gives (a malformed member_id, an unusable endpoint) come from a small local
server instead, still over real HTTP. Nothing here needs the database.
"""

import pytest

from bitrix24 import oauth
from bitrix24.addresses import BadAddress, parse_endpoint
from tests.helpers import QuietHandler, local_server

ENDPOINT = "https://x.bitrix24.com/rest/"


def answer(**changes):
    """A token answer as the OAuth server gives one (settings/oauth/index.md); None drops a field."""
    fields = {
        "access_token": "a",
        "refresh_token": "b",
        "expires_in": 3600,
        "member_id": "m1",
        "client_endpoint": ENDPOINT,
        "server_endpoint": "",
        "scope": "crm",
        "status": "F",
        "user_id": 1,
    }
    fields.update(changes)
    return {key: value for key, value in fields.items() if value is not None}


# --- parse_grant --------------------------------------------------------------------------------------


def test_a_token_answer_becomes_a_grant():
    grant = oauth.parse_grant(answer(client_endpoint="https://X.Bitrix24.com/rest", member_id="abc_1.2-3"))
    assert grant == oauth.TokenGrant(
        access_token="a",
        refresh_token="b",
        expires_in=3600,
        member_id="abc_1.2-3",
        client_endpoint="https://x.bitrix24.com/rest/",
        domain="x.bitrix24.com",
        server_endpoint="",
        scope="crm",
        status="F",
        user_id="1",
    )


@pytest.mark.parametrize(
    "answer_",
    [
        [],
        None,
        "text",
        42,
        {"access_token": "a"},
        answer(access_token=None),
        answer(refresh_token=None),
        answer(member_id=None),
        answer(client_endpoint=None),
        answer(access_token=""),
        answer(access_token={"x": 1}),
        answer(access_token=["a"]),
        answer(access_token="a" * (oauth.wire.MAX_TOKEN + 1)),
        answer(refresh_token=True),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_a_missing_or_malformed_token_is_no_grant(answer_):
    with pytest.raises(oauth.OAuthUnavailable) as info:
        oauth.parse_grant(answer_)
    assert info.value.code == "bad_answer"


@pytest.mark.parametrize("member_id", ["m 1; drop", "m1\n", "x" * 65, "м1", "m²", "", {"id": 1}])
def test_a_malformed_member_id_is_no_grant(member_id):
    with pytest.raises(oauth.OAuthUnavailable):
        oauth.parse_grant(answer(member_id=member_id))


def test_a_numeric_member_id_is_read_as_text():
    assert oauth.parse_grant(answer(member_id=12345)).member_id == "12345"


@pytest.mark.parametrize(
    "endpoint",
    [
        "ftp://x.bitrix24.com/rest/",
        "https://user:pw@x.bitrix24.com/rest/",
        "https://x.bitrix24.com/rest/?a=1",
        "https://x.bitrix24.com/rest/#f",
        "https://not a host/rest/",
        "https://x.bitrix24.com:99999/rest/",
        "x.bitrix24.com/rest/",
        "https://" + "a" * 250 + ".com/rest/",
        42,
    ],
)
def test_an_unusable_client_endpoint_is_no_grant(endpoint):
    with pytest.raises(oauth.OAuthUnavailable):
        oauth.parse_grant(answer(client_endpoint=endpoint))


def test_plain_http_or_a_private_address_only_where_the_deployment_allows():
    """The tests' deployment allows them (the stand-in is http://127.0.0.1:<port>); production does not (below)."""
    for endpoint in ("http://x.bitrix24.com/rest/", "https://127.0.0.1/rest/", "https://portal.local/rest/"):
        assert oauth.parse_grant(answer(client_endpoint=endpoint)).client_endpoint == endpoint


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://127.0.0.1/rest/",
        "https://10.0.0.5/rest/",
        "https://[::1]/rest/",
        "https://169.254.169.254/rest/",
        "https://localhost/rest/",
        "https://intranet/rest/",
        "https://portal.internal/rest/",
        "http://portal.bitrix24.de/rest/",
    ],
)
def test_a_client_endpoint_must_be_a_public_https_host(settings, endpoint):
    settings.B24_ALLOW_HTTP_PORTALS = False
    with pytest.raises(BadAddress):
        parse_endpoint(endpoint)
    with pytest.raises(oauth.OAuthUnavailable):
        oauth.parse_grant(answer(client_endpoint=endpoint))


def test_a_server_endpoint_off_the_oauth_servers_hosts_is_never_used(settings, standin):
    assert oauth.parse_grant(answer(server_endpoint=standin.server_endpoint)).server_endpoint == standin.server_endpoint
    settings.B24_ALLOW_HTTP_PORTALS = False
    settings.B24_OAUTH_URL = "https://oauth.bitrix.info/oauth/token/"
    base = answer(client_endpoint="https://portal.bitrix24.de/rest/")
    assert (
        oauth.parse_grant({**base, "server_endpoint": "https://oauth.bitrix.info/rest/"}).server_endpoint
        == "https://oauth.bitrix.info/rest/"
    )
    for evil in (
        "https://evil.example.com/rest/",
        "https://127.0.0.1/rest/",
        "http://oauth.bitrix.info/rest/",
        "ftp://oauth.bitrix.info/rest/",
    ):
        assert oauth.parse_grant({**base, "server_endpoint": evil}).server_endpoint == ""
    settings.B24_OAUTH_SERVER_HOSTS = ["oauth.bitrix24.tech"]
    assert oauth.parse_grant({**base, "server_endpoint": "https://oauth.bitrix24.tech/rest/"}).server_endpoint == (
        "https://oauth.bitrix24.tech/rest/"
    )


@pytest.mark.parametrize("expires_in,seconds", [(None, 3600), ("", 3600), ("7200", 7200), (1, 1), (172800, 172800)])
def test_expires_in(expires_in, seconds):
    assert oauth.parse_grant(answer(expires_in=expires_in)).expires_in == seconds


@pytest.mark.parametrize("expires_in", ["soon", -1, 172801, 10**12, "1e3", [3600], {"s": 1}])
def test_an_implausible_expires_in_is_no_grant(expires_in):
    with pytest.raises(oauth.OAuthUnavailable):
        oauth.parse_grant(answer(expires_in=expires_in))


@pytest.mark.parametrize(
    "status,kept", [("F", "F"), ("P", "P"), ("S", "S"), ("X", ""), ("", ""), (None, ""), ("f", "")]
)
def test_an_unknown_status_is_dropped(status, kept):
    assert oauth.parse_grant(answer(status=status)).status == kept


@pytest.mark.parametrize(
    "user_id,kept",
    [(1, "1"), ("17", "17"), ("<b>", ""), ("²", ""), ("-1", ""), (None, ""), ("1" * 20, "1" * 20), ("1" * 21, "")],
)
def test_an_odd_user_id_is_dropped(user_id, kept):
    assert oauth.parse_grant(answer(user_id=user_id)).user_id == kept


@pytest.mark.parametrize("changes", [{"status": "PP"}, {"user_id": "1" * 33}, {"scope": "s" * 4001}])
def test_a_field_longer_than_any_real_one_is_no_grant(changes):
    with pytest.raises(oauth.OAuthUnavailable):
        oauth.parse_grant(answer(**changes))


def test_grant_repr_holds_no_secret():
    grant = oauth.parse_grant(answer(access_token="SECRET-A", refresh_token="SECRET-R"))
    assert "SECRET" not in repr(grant)


# --- request_refresh against the stand-in's OAuth server ----------------------------------------------


def test_a_refresh_returns_the_validated_grant_and_spends_the_old_token(standin, b24):
    tokens = b24.issue_tokens("1")
    before = len(standin.oauth_requests)
    grant = oauth.request_refresh(tokens["refresh_token"])
    assert (grant.member_id, grant.client_endpoint, grant.domain, grant.user_id) == (
        b24.member_id,
        b24.client_endpoint,
        b24.domain,
        "1",
    )
    assert grant.server_endpoint == standin.server_endpoint and grant.status == "F"
    assert grant.refresh_token != tokens["refresh_token"] and grant.access_token != tokens["access_token"]
    sent = standin.oauth_requests[before:]
    assert [{k: v for k, v in r.items() if k != "refresh_token"} for r in sent] == [
        {"grant_type": "refresh_token", "client_id": "local.test.app", "client_secret": "test-client-secret"}
    ]
    with pytest.raises(oauth.OAuthRejected) as info:  # refresh tokens rotate
        oauth.request_refresh(tokens["refresh_token"])
    assert info.value.code == "invalid_grant"


@pytest.mark.parametrize("token", ["", "r" * (oauth.wire.MAX_TOKEN + 1)])
def test_no_usable_refresh_token_is_refused_without_asking(standin, token):
    before = len(standin.oauth_requests)
    with pytest.raises(oauth.OAuthRejected) as info:
        oauth.request_refresh(token)
    assert info.value.code == "invalid_grant" and len(standin.oauth_requests) == before


@pytest.mark.parametrize("error", sorted(oauth.BLOCKING_ERRORS))
def test_a_portal_the_oauth_server_refuses_is_rejected_with_its_code(b24, error):
    tokens = b24.issue_tokens("1")
    b24.block(error)
    with pytest.raises(oauth.OAuthRejected) as info:
        oauth.request_refresh(tokens["refresh_token"])
    assert info.value.code == error and tokens["refresh_token"] not in str(info.value)


def test_our_own_credentials_refused_are_the_deployments_fault(settings, b24):
    settings.B24_CLIENT_SECRET = "not-the-secret"
    with pytest.raises(oauth.ClientMisconfigured) as info:
        oauth.request_refresh(b24.issue_tokens("1")["refresh_token"])
    assert info.value.code == "invalid_client" and "not-the-secret" not in str(info.value)
    assert oauth.client_rejected().startswith("invalid_client at ")
    settings.B24_CLIENT_SECRET = "test-client-secret"
    oauth.request_refresh(b24.issue_tokens("1")["refresh_token"])
    assert oauth.client_rejected() == ""


def test_an_oauth_server_that_is_down_or_unreachable_is_unavailable(settings, standin, b24):
    tokens = b24.issue_tokens("1")
    standin.oauth_down = True
    with pytest.raises(oauth.OAuthUnavailable) as info:
        oauth.request_refresh(tokens["refresh_token"])
    assert info.value.code == "bad_answer"
    standin.oauth_down = False
    settings.B24_OAUTH_URL = "http://127.0.0.1:9/oauth/token/"  # the discard port: nothing listens
    with pytest.raises(oauth.OAuthUnavailable) as info:
        oauth.request_refresh(tokens["refresh_token"])
    assert info.value.code == "unreachable"
    settings.B24_OAUTH_URL = standin.oauth_url
    assert oauth.request_refresh(tokens["refresh_token"]).member_id == b24.member_id  # nothing was spent


def test_a_late_answer_within_the_deadline_is_taken(settings, standin, b24):
    standin.oauth_late = 0.3
    assert oauth.request_refresh(b24.issue_tokens("1")["refresh_token"], deadline=10).member_id == b24.member_id


def test_an_unverified_exchange_spends_nothing_when_before_spending_refuses(standin, b24):
    tokens = b24.issue_tokens("1")
    before = len(standin.oauth_requests)

    def refuse():
        raise RuntimeError("the database cannot store the grant")

    with pytest.raises(RuntimeError):
        oauth.exchange_unverified(b24.member_id, tokens["refresh_token"], before_spending=refuse)
    assert len(standin.oauth_requests) == before
    assert oauth.exchange_unverified(b24.member_id, tokens["refresh_token"]).member_id == b24.member_id


def test_unverified_exchanges_are_budgeted_per_member_id(settings, standin, b24):
    settings.B24_UNVERIFIED_OAUTH_BURST, settings.B24_UNVERIFIED_OAUTH_PER_MINUTE = 2, 1
    for _ in range(2):
        with pytest.raises(oauth.OAuthRejected):
            oauth.exchange_unverified(b24.member_id, "forged-refresh-token")
    before = len(standin.oauth_requests)
    with pytest.raises(oauth.OAuthThrottled) as info:
        oauth.exchange_unverified(b24.member_id, b24.issue_tokens("1")["refresh_token"])
    assert info.value.retry_after > 0 and len(standin.oauth_requests) == before
    other = standin.add_portal()
    assert oauth.exchange_unverified(other.member_id, other.issue_tokens("1")["refresh_token"]).member_id == (
        other.member_id
    )


# --- token_info: the OAuth server's app.info ------------------------------------------------------------


def test_token_info_names_the_tokens_app_portal_and_user(standin, b24):
    b24.install_post()
    b24.finish_install()
    info = oauth.token_info(b24.issue_tokens("2")["access_token"])
    assert info == oauth.TokenInfo(
        client_id="local.test.app",
        member_id=b24.member_id,
        user_id="2",
        domain=b24.domain,
        client_endpoint=b24.client_endpoint,
        status="F",
        installed=True,
    )


def test_token_info_of_another_apps_token_says_so(standin, b24, other_app):
    info = oauth.token_info(b24.issue_tokens("1", client_id=other_app.client_id)["access_token"])
    assert info.client_id == other_app.client_id and info.member_id == b24.member_id


@pytest.mark.parametrize("token", ["", "t" * (oauth.wire.MAX_TOKEN + 1)])
def test_token_info_of_no_usable_token_asks_nobody(standin, token):
    before = len(standin.server_requests)
    with pytest.raises(oauth.OAuthRejected):
        oauth.token_info(token)
    assert len(standin.server_requests) == before


def test_token_info_of_an_unknown_or_expired_token_is_rejected(standin, b24):
    with pytest.raises(oauth.OAuthRejected) as info:
        oauth.token_info("0" * 64)
    assert info.value.code == "invalid_token"
    token = b24.issue_tokens("1")["access_token"]
    b24.expire_access_tokens()
    with pytest.raises(oauth.OAuthRejected) as info:
        oauth.token_info(token)
    assert info.value.code == "expired_token"


class _AppInfo(QuietHandler):
    """An OAuth server answering app.info with the class's `status` and `reply`."""

    status, reply = 200, {}

    def do_POST(self):  # noqa: N802
        self.body()
        self.answer(self.status, self.reply)


def _install(**changes):
    install = {
        "installed": True,
        "version": 1,
        "status": "P",
        "scope": "crm",
        "domain": "x.bitrix24.com",
        "uri": "https://x.bitrix24.com",
        "client_endpoint": ENDPOINT,
        "member_id": "m1",
        "member_type": "company",
    }
    install.update(changes)
    return {key: value for key, value in install.items() if value is not None}


def _app_info(**result_changes):
    result = {
        "client_id": "local.test.app",
        "scope": "crm",
        "expires": "2030-01-01T00:00:00+00:00",
        "user_id": 5,
        "install": _install(),
    }
    result.update(result_changes)
    return {"result": {key: value for key, value in result.items() if value is not None}}


def _token_info_from(settings, status, reply):
    handler = type("AppInfo", (_AppInfo,), {"status": status, "reply": reply})
    with local_server(handler) as server:
        settings.B24_OAUTH_URL = f"{server.url}/oauth/token/"
        return oauth.token_info("some-token")


def test_token_info_reads_a_full_answer(settings):
    assert _token_info_from(settings, 200, _app_info()) == oauth.TokenInfo(
        client_id="local.test.app",
        member_id="m1",
        user_id="5",
        domain="x.bitrix24.com",
        client_endpoint=ENDPOINT,
        status="P",
        installed=True,
    )


@pytest.mark.parametrize(
    "reply,field,kept",
    [
        (_app_info(user_id="<b>"), "user_id", ""),
        (_app_info(user_id=None), "user_id", ""),
        (_app_info(install=_install(status="X")), "status", ""),
        (_app_info(install=_install(status=None)), "status", ""),
        (_app_info(install=_install(installed="Y")), "installed", None),
        (_app_info(install=_install(installed=False)), "installed", False),
    ],
)
def test_token_info_drops_what_it_cannot_read(settings, reply, field, kept):
    assert getattr(_token_info_from(settings, 200, reply), field) == kept


@pytest.mark.parametrize(
    "status,reply",
    [
        (200, _app_info(install=_install(member_id="m 1"))),
        (200, _app_info(install=_install(member_id="m1\n"))),
        (200, _app_info(install=_install(member_id=None))),
        (200, _app_info(install=_install(client_endpoint="ftp://x/rest/"))),
        (200, _app_info(install=_install(client_endpoint=None))),
        (200, _app_info(install=None)),
        (200, _app_info(install=[])),
        (200, _app_info(client_id=None)),
        (200, _app_info(user_id="1" * 33)),
        (200, {"result": []}),
        (200, []),
        (500, _app_info()),
        (200, b"<html>"),
        (503, {"error": "INTERNAL_SERVER_ERROR", "error_description": "later"}),
    ],
    ids=lambda value: repr(value)[:60],
)
def test_token_info_of_a_malformed_answer_is_unavailable(settings, status, reply):
    with pytest.raises(oauth.OAuthUnavailable):
        _token_info_from(settings, status, reply)


@pytest.mark.parametrize(
    "code",
    ["invalid_token", "expired_token", "NO_AUTH_FOUND", "PAYMENT_REQUIRED", "APPLICATION_NOT_FOUND", "ACCESS_DENIED"],
)
def test_token_info_of_a_token_the_server_refuses_is_rejected(settings, code):
    with pytest.raises(oauth.OAuthRejected) as info:
        _token_info_from(settings, 401, {"error": code, "error_description": "no"})
    assert info.value.code == code
