"""OAuth server contract, driven by b24pysdk's own client and parsers.

Doc paths: settings/oauth/index.md (refresh), settings/oauth/auto-renewal.md (rotation),
settings/oauth/error-codes.md (errors), settings/oauth/simple-way.md (the server's app.info); the
server app.info shape is b24pysdk's (schemas/api.py B24AppInfoResultData), the docs show none.
"""

import pytest
from b24pysdk import BitrixApp
from b24pysdk.errors.oauth import BitrixOAuthInvalidClient, BitrixOAuthInvalidGrant

from tests.contracts.conftest import CLIENT_ID, OTHER_ID, OTHER_SECRET, token_for


def test_refresh_is_parsed_by_the_sdk_and_rotates(sdk, portal):
    """settings/oauth/index.md, "Extending the OAuth token"; settings/oauth/auto-renewal.md."""
    token = token_for(portal)
    spent = token.refresh_token
    renewed = token.refresh_oauth_token()  # RenewedOAuth.from_dict: every field it requires is there
    assert renewed.member_id == portal.member_id and renewed.client_endpoint == portal.client_endpoint
    assert renewed.server_endpoint == sdk.server_endpoint and renewed.user_id == 1
    assert renewed.oauth_token.refresh_token != spent
    with pytest.raises(BitrixOAuthInvalidGrant):  # settings/oauth/error-codes.md: invalid_grant
        token.refresh_oauth_token()


def test_refresh_goes_as_a_get_like_the_sdk_sends_it(sdk, portal):
    """settings/oauth/index.md shows the refresh as a GET with the parameters in the query."""
    before = len(sdk.oauth_requests)
    token_for(portal).refresh_oauth_token()
    [sent] = sdk.oauth_requests[before:]
    assert sent["grant_type"] == "refresh_token" and sent["client_id"] == CLIENT_ID


def test_wrong_secret_is_invalid_client(sdk, portal):
    """settings/oauth/error-codes.md: invalid_client."""
    token = token_for(portal)
    token.bitrix_app = BitrixApp(client_id=CLIENT_ID, client_secret="wrong")
    with pytest.raises(BitrixOAuthInvalidClient):
        token.refresh_oauth_token()


def test_server_app_info_is_parsed_by_the_sdk(sdk, portal):
    """settings/oauth/simple-way.md: the trusted status is the server's app.info; shape B24AppInfoResultData."""
    token = token_for(portal, "2")
    info = token.get_app_info().result
    assert info.client_id == CLIENT_ID and info.user_id == 2
    assert info.install.member_id == portal.member_id and info.install.installed is True
    assert info.install.client_endpoint == portal.client_endpoint and info.install.status.value == "F"


def test_server_app_info_names_another_apps_token(sdk, portal):
    """A token's application is the server app.info's client_id (b24pysdk B24AppInfoResult.client_id)."""
    token = token_for(portal, "1", client_id=OTHER_ID, secret=OTHER_SECRET)
    assert token.get_app_info().result.client_id == OTHER_ID
    # and it refreshes only with its own app's credentials (settings/oauth/error-codes.md: invalid_grant)
    token.bitrix_app = BitrixApp(client_id=CLIENT_ID, client_secret="contract-secret")
    with pytest.raises(BitrixOAuthInvalidGrant):
        token.refresh_oauth_token()


def test_server_app_info_before_install_finish(sdk, tls_standin):
    """settings/app-installation/installation-finish.md: not installed until installFinish."""
    portal = tls_standin.add_portal()
    portal.install_post()
    assert token_for(portal).get_app_info().result.install.installed is False
