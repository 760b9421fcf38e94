"""Placement contract: binding rules and the widget POST, parsed by b24pysdk's OAuthPlacementData.

Doc paths: api-reference/widgets/placement-bind.md, placement-get.md, placement-unbind.md,
api-reference/widgets/contact-center.md, api-reference/widgets/index.md, api-reference/widgets/_includes/widget_data.md.
"""

import json

import pytest
from b24pysdk.credentials import OAuthPlacementData
from b24pysdk.errors import BitrixAPIAccessDenied, BitrixAPIError

from tests.contracts.conftest import token_for

HANDLER = "https://app.example.test/placement/"


def bind(token, **params):
    return token.call_method("placement.bind", {"PLACEMENT": "CONTACT_CENTER", "HANDLER": HANDLER, **params})


def test_bind_get_unbind(sdk, portal):
    """placement-bind.md (true), placement-get.md (the app's handlers), placement-unbind.md (count)."""
    token = token_for(portal)
    assert bind(token, TITLE="b24widget")["result"] is True
    [bound] = token.call_method("placement.get")["result"]
    assert (bound["placement"], bound["handler"], bound["title"]) == ("CONTACT_CENTER", HANDLER, "b24widget")
    assert token.call_method("placement.unbind", {"PLACEMENT": "CONTACT_CENTER"})["result"] == {"count": 2}


def test_contact_center_keeps_no_options(sdk, portal):
    """contact-center.md: OPTIONS "are not retained, and placement.get returns an empty array"."""
    token = token_for(portal)
    bind(token, OPTIONS={"errorHandlerUrl": "https://app.example.test/error/"})
    assert token.call_method("placement.get")["result"][0]["options"] == []


def test_only_administrators_bind(sdk, portal):
    """placement-bind.md: "Who can execute the method: administrator"."""
    with pytest.raises(BitrixAPIAccessDenied):
        bind(token_for(portal, "2"))


@pytest.mark.parametrize(
    "handler, code",
    [("ftp://app.example.test/x", "ERROR_UNSUPPORTED_PROTOCOL"), ("https://intranet/x", "ERROR_WRONG_HANDLER_URL")],
)
def test_handler_urls_are_checked(sdk, portal, handler, code):
    """api-reference/widgets/index.md, "Common Mistakes": a domain name and http/https."""
    with pytest.raises(BitrixAPIError) as info:
        bind(token_for(portal), HANDLER=handler)
    assert info.value.error == code


def test_widget_post_parses_and_matches_the_oauth_servers_word(sdk, portal):
    """widget_data.md fields; contact-center.md PLACEMENT_OPTIONS {"ID","URI"}; b24pysdk checks it against app.info."""
    token = token_for(portal)
    bind(token)
    fields = portal.placement_post(user_id="2")
    data = OAuthPlacementData.from_dict(fields)
    assert data.placement == "CONTACT_CENTER" and data.protocol.value == 1  # the TLS stand-in
    assert set(data.placement_options) == {"ID", "URI"}
    assert data.placement_options["ID"] == str(token.call_method("placement.get")["result"][0]["id"])
    info = token_for(portal, "2").get_app_info().result
    assert data.validate_against_app_info(info)
    assert {"SERVER_ENDPOINT", "APPLICATION_TOKEN", "APPLICATION_SCOPE"} <= set(fields)
    assert fields["APPLICATION_TOKEN"] == portal.application_token
    assert json.loads(fields["PLACEMENT_OPTIONS"])["URI"] == "/contact_center/"
