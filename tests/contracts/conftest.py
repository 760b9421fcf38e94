"""A stand-in that speaks HTTPS (b24pysdk only calls https://), and b24pysdk pointed at it.

The certificate (tests/tls.py, shared with bench/peers.py) is for 127.0.0.1 and is handed to requests
through REQUESTS_CA_BUNDLE, which b24pysdk's plain ``requests.get``/``requests.post`` calls honour.
b24pysdk's OAuth host is a class constant (``https://oauth.bitrix24.tech``): the fixture points it at
the stand-in's OAuth server, the HTTP boundary and nothing of ours.
"""

import pytest

from sandbox.standin import StandIn
from tests.tls import self_signed_context

CLIENT_ID = "app.5f0c1d2e3a4b56.12345678"
CLIENT_SECRET = "contract-secret"
OTHER_ID, OTHER_SECRET = "app.6a1b2c3d4e5f67.87654321", "other-contract-secret"


@pytest.fixture(scope="session")
def tls_standin(tmp_path_factory):
    cert, context = self_signed_context(tmp_path_factory.mktemp("tls"))
    mp = pytest.MonkeyPatch()
    mp.setenv("REQUESTS_CA_BUNDLE", str(cert))
    mp.setenv("NO_PROXY", "127.0.0.1")
    with StandIn(CLIENT_ID, CLIENT_SECRET, tls=context) as standin:
        standin.add_app(OTHER_ID, OTHER_SECRET)
        standin.ca_bundle = str(cert)
        yield standin
        assert standin.errors == []
    mp.undo()


@pytest.fixture
def sdk(tls_standin, monkeypatch):
    """b24pysdk with its OAuth host pointed at the stand-in; fail fast, no retries."""
    from b24pysdk import Config
    from b24pysdk.api.requesters import BitrixOAuthRequester

    base = f"https://{tls_standin.address}"
    monkeypatch.setattr(BitrixOAuthRequester, "_OAUTH_TOKEN_URL", f"{base}/oauth/token/")
    monkeypatch.setattr(BitrixOAuthRequester, "_APP_INFO_URL", f"{base}/rest/app.info/")
    config = Config()
    saved = (config.default_max_retries, config.default_timeout)
    config.default_max_retries = 1
    config.default_timeout = 10
    yield tls_standin
    config.default_max_retries, config.default_timeout = saved


@pytest.fixture
def portal(tls_standin):
    portal = tls_standin.add_portal()
    portal.install_post()
    portal.finish_install()
    return portal


def token_for(portal, user_id="1", client_id=None, secret=None):
    """A b24pysdk BitrixToken holding a genuine token pair of that portal's user."""
    from b24pysdk import BitrixApp, BitrixToken

    tokens = portal.issue_tokens(user_id, client_id=client_id)
    app = BitrixApp(client_id=client_id or CLIENT_ID, client_secret=secret or CLIENT_SECRET)
    return BitrixToken(
        domain=portal.domain,
        auth_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
        expires_in=tokens["expires_in"],
        bitrix_app=app,
    )


@pytest.fixture
def http_recorder():
    """A plain-HTTP recorder (an app's event handler) on its own stand-in."""
    with StandIn("recorder.app", "recorder-secret") as plain:
        yield plain.add_recorder()
