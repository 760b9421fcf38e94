"""CONTRIBUTING.md's walk-throughs, run as written (the blocks after `<!-- example: NAME -->`), against the stand-in.

"Add a placement": the registered placement is bound at install and opens, its template rendered with
`portal`, `verdict` and `options`. "Add an event handler" (the handler and the install step that binds its
event): the event is bound at install to our /events/, and an event Bitrix24 sends there is stored and handed
to the handler by the worker path (tests/conftest.py `deliver`).

The walk-throughs add to the app's registries, as an app's ready() would: each test puts them back as they were.
"""

import pytest

from inbox import registry as inbox_registry
from inbox.models import InboxItem
from placements import registry as placement_registry
from portals import install, install_steps
from portals.models import Portal, PortalEvent
from tests.conftest import deliver, do_install
from tests.docs import examples

pytestmark = pytest.mark.django_db

DOCUMENT = "CONTRIBUTING.md"
# The template the walk-through names: the reader writes it; this one shows what the page is given.
DEAL_TAB = (
    '<p id="deal-notes">{{ portal.member_id }} user {{ verdict.user_id }} admin {{ verdict.is_admin }}'
    " deal {{ options.ID }}</p>"
)


@pytest.fixture(autouse=True)
def registries():
    """The registries as they were before the test (the walk-throughs register into them)."""
    kept = [
        (placement_registry._registry, dict(placement_registry._registry)),
        (inbox_registry._registry, dict(inbox_registry._registry)),
        (inbox_registry._aliases, dict(inbox_registry._aliases)),
        (install_steps._steps, dict(install_steps._steps)),
    ]
    yield
    for registry, before in kept:
        registry.clear()
        registry.update(before)


def run(name: str) -> dict:
    return examples.run(DOCUMENT, name)


def test_contributing_has_the_walkthroughs():
    assert set(examples.examples(DOCUMENT)) == {"add a placement", "add an event handler", "bind the event"}


@pytest.fixture
def deal_tab_template(settings, tmp_path):
    """myapp/deal_tab.html, in a template folder of its own."""
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "deal_tab.html").write_text(DEAL_TAB, encoding="utf-8")
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [*settings.TEMPLATES[0]["DIRS"], tmp_path]}]


def test_add_a_placement_is_bound_at_install_and_opens(client, frame, b24, deal_tab_template):
    run("add a placement")
    assert placement_registry.get("CRM_DEAL_DETAIL_TAB").bind is True
    portal = do_install(client, b24)

    [bound] = [p for p in b24.bindings["placements"] if p["PLACEMENT"] == "CRM_DEAL_DETAIL_TAB"]
    assert bound["HANDLER"] == placement_registry.handler_url() == install.app_url("placement")
    assert bound["TITLE"] == "Notes" and bound["LANG_ALL"]["ru"]["TITLE"] == "Заметки"
    assert bound["LANG_ALL"]["de"]["DESCRIPTION"] == "Notizen zum Deal"
    history = PortalEvent.objects.get(portal=portal, kind=PortalEvent.Kind.PLACEMENT_BOUND)
    assert "CRM_DEAL_DETAIL_TAB" in history.detail["placements"]

    for user, admin in (("1", "True"), ("2", "False")):
        opened = frame.post(
            "/placement/", b24.placement_post(user_id=user, placement="CRM_DEAL_DETAIL_TAB", options={"ID": "4711"})
        )
        assert opened.status_code == 200, opened.content[:300]
        assert opened.content.decode() == (
            f'<p id="deal-notes">{portal.member_id} user {user} admin {admin} deal 4711</p>'
        )
        assert opened["Content-Security-Policy"] == f"frame-ancestors http://{b24.domain}"


def test_add_a_placement_opens_only_for_a_verified_user(client, frame, b24, deal_tab_template):
    run("add a placement")
    do_install(client, b24)
    forged = b24.placement_post(placement="CRM_DEAL_DETAIL_TAB")
    forged["AUTH_ID"] = "0" * 64
    refused = frame.post("/placement/", forged)
    assert refused.status_code == 403 and b"deal-notes" not in refused.content


def test_add_an_event_handler_receives_the_stored_event_through_the_worker(client, b24):
    handler = run("add an event handler")["on_deal_add"]
    step = run("bind the event")["bind_deal_events"]
    assert inbox_registry.registration("ONCRMDEALADD").handler is handler
    assert [name for name, _step in install_steps.steps()][-1] == "myapp.events"
    assert dict(install_steps.steps())["myapp.events"] is step

    portal = do_install(client, b24)
    assert b24.event_handlers("ONCRMDEALADD") == [install.events_url()] == ["https://app.example.test/events/"]
    history = PortalEvent.objects.get(portal=portal, kind=PortalEvent.Kind.EVENTS_BOUND)
    assert history.detail["events"][-1] == "ONCRMDEALADD"  # after the app's own events (order 50 > 20)
    assert Portal.objects.get(pk=portal.pk).status == Portal.Status.ACTIVE

    response, item = deliver(client, b24.event_payload("ONCRMDEALADD", data={"FIELDS": {"ID": "7"}}))
    assert response.status_code == 200, response.content[:300]
    assert (item.event, item.state, item.outcome) == ("ONCRMDEALADD", InboxItem.State.DONE, "noted")
    assert item.portal_id == portal.pk and item.data == {"FIELDS": {"ID": "7"}}


def test_add_an_event_handler_events_url_checks_the_portal_and_its_application_token(client, b24, standin):
    run("add an event handler")
    run("bind the event")
    do_install(client, b24)
    forged = b24.event_payload("ONCRMDEALADD", application_token="f" * 32)
    assert client.post("/events/", forged).status_code == 403
    stranger = standin.add_portal()
    assert client.post("/events/", stranger.event_payload("ONCRMDEALADD")).status_code == 404
    assert not InboxItem.objects.filter(event="ONCRMDEALADD").exists()
