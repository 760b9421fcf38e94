"""Fixtures for the placement tests: a browser-like client (CSRF checks on) and a stored-state snapshot."""
import pytest
from django.test import Client

from portals.models import Portal, PortalEvent


@pytest.fixture
def frame():
    """What a browser inside the portal's frame is: a cross-site client with CSRF checks on."""
    return Client(enforce_csrf_checks=True)


@pytest.fixture
def frame_500():
    """The same client, but a server error comes back as a 500 response instead of an exception."""
    return Client(enforce_csrf_checks=True, raise_request_exception=False)


@pytest.fixture
def stored_state(db):
    """A callable returning every stored portal row and event, to prove a request changed nothing."""
    def snapshot():
        portals = list(Portal.objects.order_by("pk").values())
        events = list(PortalEvent.objects.order_by("pk").values_list("pk", "kind"))
        return portals, events
    return snapshot
