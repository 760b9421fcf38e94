"""The client's tests know a portal only through Credentials (bitrix24.client.Credentials): no Portal row."""

from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Credentials:
    """The least the client needs to know of a portal."""

    member_id: str
    domain: str
    client_endpoint: str
    server_endpoint: str
    access_token: str
    rest_plan: str = ""


@pytest.fixture
def app(b24, standin):
    """(the app's credentials on a fresh stand-in portal, their refresh token)."""
    tokens = b24.issue_tokens("1")
    credentials = Credentials(
        member_id=b24.member_id,
        domain=b24.domain,
        client_endpoint=b24.client_endpoint,
        server_endpoint=standin.server_endpoint,
        access_token=tokens["access_token"],
    )
    return credentials, tokens["refresh_token"]
