"""Fixtures for the placement tests: a stored-state snapshot (the frame clients live in tests/conftest.py)."""

import pytest

from portals.models import Portal, PortalEvent


@pytest.fixture
def stored_state(db):
    """A callable returning every stored portal row and event, to prove a request changed nothing."""

    def snapshot():
        portals = list(Portal.objects.order_by("pk").values())
        events = list(PortalEvent.objects.order_by("pk").values_list("pk", "kind"))
        return portals, events

    return snapshot
