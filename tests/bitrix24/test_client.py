"""bitrix24/client.py through the Credentials protocol alone: no Portal row, no database.

The credentials are a small dataclass (tests/bitrix24/conftest.py, fixture `app`) and the refresh step a
callable written here that records its calls (it refreshes at the stand-in's OAuth server, as
portals.tokens.refresh_portal does, but stores nothing). The client over a stored portal (PortalClient: the
refresh stored, the portal blocked, a move recorded, retries and limits) is tested in tests/portals/test_rest.py.

No test here asks for the `db` fixture: pytest-django refuses every query, so a client that touched the
database would fail (test_the_database_is_out_of_reach proves the guard is on).
"""

import contextlib
from dataclasses import replace

import pytest

from bitrix24 import oauth
from bitrix24.client import Client, build_query
from bitrix24.errors import (
    LimitWaitExceeded,
    OAuthRejected,
    OAuthUnavailable,
    PortalMovedUnexplained,
    RefreshInProgress,
    RestError,
    TokenRefreshFailed,
)


class Refresh:
    """A refresh step: records each call; exchanges the refresh token at the stand-in's OAuth server (or
    raises `fails`, or hands back `same` credentials unchanged) and returns the new credentials."""

    def __init__(self, refresh_token: str, *, fails: Exception | None = None, same: bool = False):
        self.refresh_token = refresh_token
        self.fails, self.same = fails, same
        self.calls: list[dict] = []

    def __call__(self, credentials, *, seen_access_token, force, wait):
        self.calls.append({"seen": seen_access_token, "force": force, "wait": wait})
        if self.fails is not None:
            raise self.fails
        if self.same:
            return credentials
        grant = oauth.request_refresh(self.refresh_token)
        self.refresh_token = grant.refresh_token
        return replace(
            credentials, access_token=grant.access_token, client_endpoint=grant.client_endpoint, domain=grant.domain
        )


def test_the_database_is_out_of_reach():
    from portals.models import Portal

    with pytest.raises(RuntimeError, match="Database access not allowed"):
        Portal.objects.count()


def test_a_call_with_credentials_alone(app, b24):
    credentials, _ = app
    assert Client(credentials).call("user.admin") is True
    answer = Client(credentials).call_raw("server.time")
    assert "result" in answer and "time" in answer
    assert [(r["method"], r["auth"]) for r in b24.requests] == [
        ("user.admin", credentials.access_token),
        ("server.time", credentials.access_token),
    ]


def test_a_batch_and_a_list_with_credentials_alone(app, b24):
    credentials, _ = app
    b24.crm_items = 3
    client = Client(credentials)
    result = client.batch({"admin": ("user.admin", {}), "bad": ("no.such.method", {})})
    assert result.result == {"admin": True} and result.errors["bad"].code == "ERROR_METHOD_NOT_FOUND"
    assert [item["id"] for item in client.list("crm.item.list", {"entityTypeId": 2})] == [1, 2, 3]


@pytest.mark.parametrize("plan,refused", [("", True), ("standard", True), ("enterprise", False)])
def test_the_credentials_name_the_rate_plan(app, b24, settings, plan, refused):
    """settings/performance/limits.md: 50 requests, then 2 a second; Enterprise 250, then 5. A web request
    (`interactive`) is refused rather than wait past B24_REQUEST_MAX_WAIT for its slot: on the standard bucket
    after about 50 calls in a row, on Enterprise's not within 80."""
    credentials, _ = app
    settings.B24_RATE_LIMIT_BURST = settings.B24_RATE_LIMIT_PER_SECOND = None
    settings.B24_REQUEST_MAX_WAIT = 0.1  # less than a slot of either plan (0.5 s, 0.2 s)
    client = Client(replace(credentials, rest_plan=plan), interactive=True)
    with pytest.raises(LimitWaitExceeded) if refused else contextlib.nullcontext():
        for _ in range(80):
            client.call("server.time")
    assert (b24.calls("server.time") < 80) is refused


def test_errors_are_typed_with_the_bitrix24_code_and_hold_no_token(app):
    credentials, _ = app
    with pytest.raises(RestError) as info:
        Client(credentials).call("no.such.method")
    assert (info.value.code, info.value.http_status, info.value.method) == (
        "ERROR_METHOD_NOT_FOUND",
        404,
        "no.such.method",
    )
    assert credentials.access_token not in str(info.value)


# --- expired tokens and the refresh step ----------------------------------------------------------------


@pytest.mark.parametrize("interactive,wait", [(False, None), (True, "B24_REFRESH_WAIT")])
def test_an_expired_token_is_refreshed_once_and_the_call_sent_once_more(app, b24, standin, settings, interactive, wait):
    credentials, refresh_token = app
    refresh = Refresh(refresh_token)
    client = Client(credentials, refresh=refresh, interactive=interactive)
    b24.expire_access_tokens()
    before = len(standin.oauth_requests)
    assert client.call("user.admin") is True
    wait = getattr(settings, wait) if wait else None
    assert refresh.calls == [{"seen": credentials.access_token, "force": False, "wait": wait}]
    assert len(standin.oauth_requests) == before + 1
    sent = [(r["method"], r["auth"]) for r in b24.requests]
    assert sent == [("user.admin", credentials.access_token), ("user.admin", client.credentials.access_token)]
    assert client.credentials.access_token != credentials.access_token  # the client keeps the new credentials
    assert client.call("server.time") and len(refresh.calls) == 1


def test_a_token_still_expired_after_the_refresh_is_not_refreshed_again(app, b24):
    credentials, refresh_token = app
    refresh = Refresh(refresh_token, same=True)
    b24.expire_access_tokens()
    with pytest.raises(RestError) as info:
        Client(credentials, refresh=refresh).call("user.admin")
    assert info.value.code == "expired_token" and not isinstance(info.value, TokenRefreshFailed)
    assert len(refresh.calls) == 1 and b24.calls("user.admin") == 2


@pytest.mark.parametrize(
    "error",
    [
        OAuthRejected("invalid_grant", "The refresh token is invalid"),
        OAuthRejected("PAYMENT_REQUIRED", "pay"),
        OAuthUnavailable("unreachable", "OAuth server: no answer"),
        RefreshInProgress(),
    ],
)
def test_a_refresh_step_that_raises_an_oauth_error_is_token_refresh_failed(app, b24, error):
    credentials, refresh_token = app
    refresh = Refresh(refresh_token, fails=error)
    b24.expire_access_tokens()
    with pytest.raises(TokenRefreshFailed) as info:
        Client(credentials, refresh=refresh).call("user.admin")
    assert (info.value.code, info.value.description, info.value.method) == (error.code, error.description, "user.admin")
    assert len(refresh.calls) == 1 and b24.calls("user.admin") == 1


def test_without_a_refresh_step_an_expired_token_is_token_refresh_failed(app, b24, standin):
    credentials, _ = app
    b24.expire_access_tokens()
    before = len(standin.oauth_requests)
    with pytest.raises(TokenRefreshFailed) as info:
        Client(credentials).call("user.admin")
    assert info.value.code == "expired_token"
    assert b24.calls("user.admin") == 1 and len(standin.oauth_requests) == before


def test_credentials_without_an_access_token_send_nothing(app, b24):
    credentials, refresh_token = app
    refresh = Refresh(refresh_token)
    with pytest.raises(TokenRefreshFailed) as info:
        Client(replace(credentials, access_token=""), refresh=refresh).call("user.admin")
    assert info.value.code == "NO_AUTH_FOUND"
    assert b24.requests == [] and refresh.calls == []


def test_an_invalid_token_is_not_refreshed(app, b24):
    """Only expired_token means "refresh": an unknown token is an answer, not a reason to spend a refresh token."""
    credentials, refresh_token = app
    refresh = Refresh(refresh_token)
    with pytest.raises(RestError) as info:
        Client(replace(credentials, access_token="x" * 32), refresh=refresh).call("user.current")
    assert info.value.code == "invalid_token" and refresh.calls == []


def test_a_users_token_is_never_refreshed(app, b24, standin):
    credentials, refresh_token = app
    user_token = b24.issue_tokens("2")["access_token"]
    refresh = Refresh(refresh_token)
    b24.expire_access_tokens()
    before = len(standin.oauth_requests)
    with pytest.raises(RestError) as info:
        Client(credentials, refresh=refresh, access_token=user_token).call("user.current")
    assert info.value.code == "expired_token" and not isinstance(info.value, TokenRefreshFailed)
    assert refresh.calls == [] and len(standin.oauth_requests) == before
    assert [r["auth"] for r in b24.requests] == [user_token]


def test_a_users_token_is_sent_even_when_the_app_has_none(app, b24):
    credentials, _ = app
    user_token = b24.issue_tokens("2")["access_token"]
    assert Client(replace(credentials, access_token=""), access_token=user_token).call("user.current")["ID"] == "2"


# --- portals that move --------------------------------------------------------------------------------


def test_a_redirect_is_followed_through_a_forced_refresh_and_the_call_sent_once_more(app, b24):
    credentials, refresh_token = app
    refresh = Refresh(refresh_token)
    new = b24.rename()
    client = Client(credentials, refresh=refresh)
    assert client.call("user.admin") is True
    assert refresh.calls == [{"seen": None, "force": True, "wait": None}]
    assert (client.credentials.domain, client.credentials.client_endpoint) == (new, f"http://{new}/rest/")
    assert [(r["address"], r["status"]) for r in b24.requests] == [(credentials.domain, 302), (new, 200)]


@pytest.mark.parametrize("how", ["no refresh step", "same address", "a user's token", "the oauth server"])
def test_a_redirect_nobody_explains_is_portal_moved_unexplained(app, b24, standin, how):
    credentials, refresh_token = app
    recorder = standin.add_recorder()
    b24.redirect_to(recorder.address)
    refresh = Refresh(refresh_token, same=how == "same address")
    kwargs = {"refresh": None if how == "no refresh step" else refresh}
    if how == "a user's token":
        kwargs["access_token"] = b24.issue_tokens("2")["access_token"]
    if how == "the oauth server":  # its answer is a redirect too: the portal's address is no explanation
        kwargs["oauth_server"] = True
        credentials = replace(credentials, server_endpoint=credentials.client_endpoint)
    with pytest.raises(PortalMovedUnexplained):
        Client(credentials, **kwargs).call("user.admin")
    assert recorder.requests == []
    assert len(refresh.calls) == (1 if how == "same address" else 0)


# --- the OAuth server's REST --------------------------------------------------------------------------


def test_app_info_can_be_asked_at_the_oauth_server(app, b24, standin):
    credentials, _ = app
    before = len(standin.server_requests)
    info = Client(credentials, oauth_server=True).call("app.info")
    assert info["client_id"] == "local.test.app" and info["install"]["member_id"] == b24.member_id
    assert len(standin.server_requests) == before + 1 and b24.calls("app.info") == 0
    # Without a known server endpoint the portal answers.
    Client(replace(credentials, server_endpoint=""), oauth_server=True).call("app.info")
    assert b24.calls("app.info") == 1


def test_build_query_matches_php():
    assert build_query({"a": {"b": [1, 2]}, "c": "x y&z", "d": True}) == "a[b][0]=1&a[b][1]=2&c=x%20y%26z&d=Y"
    assert build_query({"e": None, "f": False, "g": {"h": {"i": "ü"}}}) == "e=&f=N&g[h][i]=%C3%BC"
    assert build_query({}) == "" and build_query(None) == ""
