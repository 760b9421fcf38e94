"""Fixtures: a local Bitrix24 stand-in over real HTTP, and portals installed through it."""
import pytest
from django.core.cache import caches
from django.test import Client

from portals.models import Portal
from sandbox.standin import StandIn
from tests.redis_keys import clear_cache

CLIENT_ID = "local.test.app"
CLIENT_SECRET = "test-client-secret"
# A second application on the same stand-in: genuine tokens on every portal, but not ours.
OTHER_CLIENT_ID = "local.second.app"
OTHER_CLIENT_SECRET = "other-client-secret"


@pytest.fixture(scope="session")
def standin():
    with StandIn(CLIENT_ID, CLIENT_SECRET) as server:
        yield server


@pytest.fixture(scope="session")
def other_app(standin):
    """Another app registered with the stand-in's OAuth server (``portal.issue_tokens(client_id=...)``)."""
    if OTHER_CLIENT_ID in standin.apps:
        return standin.apps[OTHER_CLIENT_ID]
    return standin.add_app(OTHER_CLIENT_ID, OTHER_CLIENT_SECRET)


@pytest.fixture(autouse=True)
def _bitrix24(settings, standin):
    """Every test talks to the stand-in's OAuth server, with an empty cache."""
    settings.B24_OAUTH_URL = standin.oauth_url
    standin.oauth_down = False
    standin.oauth_delay = 0
    standin.oauth_late = 0
    clear_cache(caches["default"])
    yield
    clear_cache(caches["default"])


@pytest.fixture
def b24(standin):
    """A fresh portal on the stand-in (not yet installed)."""
    return standin.add_portal()


def do_install(client, b24, *, user_id="1", lang="en", event=True):
    """Install as Bitrix24 does: the install POST into the frame, the page's installFinish, then ONAPPINSTALL.

    settings/app-installation/installation-finish.md: no event is sent before installFinish.
    """
    response = client.post("/install/", b24.install_post(user_id=user_id, lang=lang))
    assert response.status_code == 200, response.content[:500]
    b24.finish_install()  # what the install page's BX24.installFinish() does
    if event:
        answer = client.post("/events/", b24.event_payload("ONAPPINSTALL"))
        assert answer.status_code == 200, answer.content[:500]
    return Portal.objects.get(member_id=b24.member_id)


def do_uninstall(client, b24, *, clean=False, name="ONAPPUNINSTALL"):
    """Uninstall as Bitrix24 does: the app is removed from the portal, then ONAPPUNINSTALL is sent."""
    b24.uninstall()
    payload = b24.event_payload("ONAPPUNINSTALL", data={"CLEAN": "1" if clean else "0"})
    payload["event"] = name
    return client.post("/events/", payload)


@pytest.fixture
def installed(db, client, b24):
    """(stored Portal, stand-in portal) after a complete install."""
    return do_install(client, b24), b24


@pytest.fixture
def frame():
    """What a browser inside the portal's frame is: a cross-site client with CSRF checks on."""
    return Client(enforce_csrf_checks=True)


@pytest.fixture
def frame_500():
    """The same client, but a server error comes back as a 500 response instead of an exception."""
    return Client(enforce_csrf_checks=True, raise_request_exception=False)
