"""Fixtures of the stand-in's own tests: a fresh stand-in per test (not the suite's shared one), a portal on it,
and the two requests most tests send it by hand (a token refresh, a REST call)."""

import pytest
import requests

from sandbox.standin import StandIn

CLIENT_ID = "app.0123456789abcd.12345678"
CLIENT_SECRET = "s3cret-for-tests"


@pytest.fixture
def standin():
    with StandIn(CLIENT_ID, CLIENT_SECRET) as instance:
        yield instance
        assert instance.errors == []  # the stand-in itself never broke


@pytest.fixture
def portal(standin):
    return standin.add_portal()


@pytest.fixture
def http():
    with requests.Session() as session:
        session.trust_env = False  # never route loopback calls through a proxy
        yield session


def refresh(http, standin, refresh_token, *, post=False, **overrides):
    """The OAuth server's token refresh (settings/oauth/index.md): GET with the parameters in the query as
    documented, or (`post`) a form POST; `overrides` replace parameters."""
    params = {
        "grant_type": "refresh_token",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": refresh_token,
        **overrides,
    }
    if post:
        return http.post(standin.oauth_url, data=params, timeout=5)
    return http.get(standin.oauth_url, params=params, timeout=5)


def call(http, portal, method, auth, **params):
    """One REST call, form-encoded, redirects not followed."""
    return http.post(
        f"{portal.client_endpoint}{method}.json", data={"auth": auth, **params}, timeout=5, allow_redirects=False
    )
