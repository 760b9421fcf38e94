"""The connector's registration through the install-step seam (portals/install_steps.py): at install, on
ONAPPUPDATE and from the admin's re-bind; imconnector.register + the connector events bound to /events/."""

import pytest

from bitrix24.errors import RestError
from openlines import registry
from portals import install_steps
from portals.models import PortalEvent
from sandbox.standin import rest_imconnector as imc
from tests.conftest import do_install

pytestmark = pytest.mark.django_db
EVENTS_URL = "https://app.example.test/events/"


def test_install_registers_the_connector_and_binds_its_events(installed):
    portal, b24 = installed
    connector = imc.state(b24).connectors["b24widget_http"]
    assert connector["PLACEMENT_HANDLER"] == "https://app.example.test/placement/"
    assert connector["NAME"] == registry.HTTP.name
    assert connector["ICON"]["DATA_IMAGE"].startswith("data:image/svg+xml,%3Csvg")
    assert connector["ICON_DISABLED"]["DATA_IMAGE"].startswith("data:image/svg+xml,")
    assert connector["CHAT_GROUP"] is False
    bound = {(e["event"], e["handler"]) for e in b24.bindings["events"]}
    for event in registry.CONNECTOR_EVENTS:
        assert (event, EVENTS_URL) in bound
    recorded = portal.events.filter(kind=PortalEvent.Kind.EVENTS_BOUND).latest("id").detail["events"]
    assert set(registry.CONNECTOR_EVENTS) <= set(recorded)


def test_binding_twice_leaves_one_handler_per_event(client, installed):
    portal, b24 = installed
    from portals import install

    install.bind(portal)
    events = [e["event"] for e in b24.bindings["events"] if e["event"].startswith("ONIMCONNECTOR")]
    assert sorted(events) == sorted(registry.CONNECTOR_EVENTS)


def test_onappupdate_registers_again(client, installed):
    """event-bind.md: an update removes the app's handlers; the connector comes back with them."""
    portal, b24 = installed
    imc.state(b24).connectors.clear()
    b24.bindings["events"].clear()
    from tests.conftest import deliver

    response, item = deliver(client, b24.update_app())
    assert response.status_code == 200 and item.outcome == "updated"
    assert "b24widget_http" in imc.state(b24).connectors
    assert any(e["event"] == "ONIMCONNECTORMESSAGEADD" for e in b24.bindings["events"])


def test_the_admin_rebind_action_registers_again(admin_client, installed):
    portal, b24 = installed
    imc.state(b24).connectors.clear()
    response = admin_client.post(
        "/admin/portals/portal/", {"action": "bind_placements_again", "_selected_action": [portal.pk]}
    )
    assert response.status_code == 302
    assert "b24widget_http" in imc.state(b24).connectors


def test_a_portal_without_the_open_lines_scope_installs_without_a_connector(client, standin):
    b24 = standin.add_portal(scope="placement,contact_center,user_brief")
    portal = do_install(client, b24)
    assert portal.bound_at is not None
    assert imc.state(b24).connectors == {}


def test_a_refused_step_leaves_the_install_incomplete_and_says_which(client, b24):
    def refuse(portal, client):
        raise RestError("APPLICATION_REGISTRATION_ERROR", "refused for the test", method="imconnector.register")

    install_steps.register("tests.refuse", refuse)
    try:
        response = client.post("/install/", b24.install_post())
    finally:
        install_steps.unregister("tests.refuse")
    assert response.status_code == 503
    from portals.models import Portal

    portal = Portal.objects.get(member_id=b24.member_id)
    assert portal.bound_at is None
    failure = portal.events.filter(kind=PortalEvent.Kind.INSTALL_FAILED).latest("id")
    assert failure.detail["reason"] == "APPLICATION_REGISTRATION_ERROR"
    assert failure.detail["description"].startswith("tests.refuse:")


def test_a_register_answered_result_false_is_a_failure(client, standin):
    """imconnector-register.md: errors come as HTTP 200 with result.result = false; not a success."""
    b24 = standin.add_portal()
    imc.state(b24).connectors["b24widget_http"] = {"app": "someone.else", "NAME": "theirs"}
    response = client.post("/install/", b24.install_post())
    assert response.status_code == 503
    from portals.models import Portal

    assert "GENERAL_CONNECTOR_REGISTRATION_ERROR" in Portal.objects.get(member_id=b24.member_id).last_error


def test_registry_refuses_an_id_bitrix24_would_refuse():
    with pytest.raises(ValueError):
        registry.Connector(id="my.connector", name="x", icon=registry.HTTP.icon, icon_disabled=registry.HTTP.icon)


def test_the_deploy_check_refuses_private_webhooks_without_debug(settings):
    from openlines.checks import private_webhooks_in_production

    settings.OPENLINES_ALLOW_PRIVATE_WEBHOOKS, settings.DEBUG = True, False
    assert [e.id for e in private_webhooks_in_production(None)] == ["openlines.E001"]
    settings.OPENLINES_ALLOW_PRIVATE_WEBHOOKS = False
    assert private_webhooks_in_production(None) == []
