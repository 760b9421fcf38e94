"""Offline events at install, ONAPPUPDATE and the admin's re-bind (portals/install.py bind_offline), and a plan
without them: recorded on the portal, said in the admin, nothing else changes.

Pages: api-reference/events/offline-events.md, event-bind.md (event_type=offline, options.minTimeout),
on-offline-event.md, api-reference/common/system/feature-get.md (rest_offline_extended)."""

import pytest
from django.urls import reverse

from inbox import offline
from openlines.registry import CONNECTOR_EVENTS
from portals.install import APP_EVENTS, events_url
from portals.models import Portal, PortalEvent
from sandbox.standin import rest_offline
from tests.conftest import deliver, do_install

pytestmark = pytest.mark.django_db
EVERY_EVENT = {*APP_EVENTS, *CONNECTOR_EVENTS}


def offline_bound(b24):
    return {b["event"] for b in rest_offline.offline_bindings(b24)}


def test_install_binds_every_event_offline_too_and_onofflineevent_online(installed, settings):
    portal, b24 = installed
    portal.refresh_from_db()
    assert portal.offline_events == Portal.OfflineEvents.BOUND
    assert offline_bound(b24) == EVERY_EVENT
    [note] = [b for b in b24.bindings["events"] if b["event"] == "ONOFFLINEEVENT"]
    assert note["handler"] == events_url()
    assert int(note["options"]["minTimeout"]) == settings.B24_OFFLINE_MIN_TIMEOUT
    bound = portal.events.filter(kind=PortalEvent.Kind.EVENTS_BOUND).latest("id").detail
    assert set(bound["offline"]) == EVERY_EVENT == set(bound["events"])


def test_onappupdate_and_the_admin_rebind_bind_them_again(client, admin_client, installed):
    """event-bind.md: "When an application is deleted or updated, its [handlers] will be removed"."""
    portal, b24 = installed
    b24.bindings["events"].clear()
    b24.bindings["offline"].clear()
    response, item = deliver(client, b24.update_app())
    assert item.outcome == "updated" and offline_bound(b24) == EVERY_EVENT
    b24.bindings["offline"].clear()
    admin_client.post(
        "/admin/portals/portal/", {"action": "bind_placements_again", "_selected_action": [portal.pk]}, follow=True
    )
    assert offline_bound(b24) == EVERY_EVENT
    assert sum(b["event"] == "ONOFFLINEEVENT" for b in b24.bindings["events"]) == 1  # unbound before each bind


def test_a_plan_without_offline_events_is_recorded_and_said_in_the_admin_and_nothing_breaks(
    client, admin_client, standin
):
    b24 = standin.add_portal()
    b24.set_feature("rest_offline_extended", False)
    portal = do_install(client, b24)
    assert portal.status == Portal.Status.ACTIVE and portal.offline_events == Portal.OfflineEvents.UNAVAILABLE
    assert offline_bound(b24) == set()
    assert not any(b["event"] == "ONOFFLINEEVENT" for b in b24.bindings["events"])
    noted = portal.events.get(kind=PortalEvent.Kind.OFFLINE_EVENTS).detail
    assert noted["state"] == "unavailable" and "rest_offline_extended = N" in noted["reason"]
    page = admin_client.get(reverse("admin:portals_portal_change", args=[portal.pk])).content.decode()
    assert 'id="offline-events" data-state="unavailable"' in page and "not available on this portal&#x27;s plan" in page
    listed = admin_client.get("/admin/portals/portal/", {"offline_events__exact": "unavailable"}).content.decode()
    assert portal.member_id in listed
    # The pull leaves the portal alone; online events work as before.
    assert offline.pull(b24.member_id).skipped and b24.calls("event.offline.get") == 0
    b24.version = 2
    response, item = deliver(client, b24.update_app())
    assert item.outcome == "updated"
    # The plan changes: the next bind finds the feature and binds them.
    b24.set_feature("rest_offline_extended", True)
    admin_client.post(
        "/admin/portals/portal/", {"action": "bind_placements_again", "_selected_action": [portal.pk]}, follow=True
    )
    assert Portal.objects.get(pk=portal.pk).offline_events == Portal.OfflineEvents.BOUND
    assert offline_bound(b24) == EVERY_EVENT


def test_a_refused_offline_binding_is_recorded_and_the_install_completes(client, standin):
    """A portal that does not answer feature.get (an older one) and refuses the offline binding: the online
    bindings stand, the portal says offline events were refused."""
    b24 = standin.add_portal()
    b24.set_feature("rest_offline_extended", False)
    b24.fail_next("feature.get", "ERROR_METHOD_NOT_FOUND", 404)
    portal = do_install(client, b24)
    assert portal.status == Portal.Status.ACTIVE and portal.offline_events == Portal.OfflineEvents.FAILED
    noted = portal.events.get(kind=PortalEvent.Kind.OFFLINE_EVENTS).detail
    assert noted["state"] == "failed" and noted["reason"].startswith("ACCESS_DENIED")
    assert {b["event"] for b in b24.bindings["events"]} >= EVERY_EVENT
