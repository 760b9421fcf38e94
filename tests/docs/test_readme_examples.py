"""The README's "Build on it" examples, run as written (the blocks after `<!-- example: NAME -->`)."""

import io

import pytest
from django.test import Client

from placements import registry
from portals.lifecycle import portal_data_cleaned
from portals.models import Portal
from tests.conftest import do_install, do_uninstall
from tests.docs import examples

pytestmark = pytest.mark.django_db


def run(name: str, **given) -> dict:
    return examples.run("README.md", name, **given)


def test_the_readme_has_the_four_examples():
    assert set(examples.examples("README.md")) == {"placement", "event handler", "rest", "background task"}


def test_placement_example_is_bound_at_install_and_opens(monkeypatch, client, b24):
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))  # the example adds to it
    run("placement")
    assert "CRM_DEAL_DETAIL_TAB" in [b["PLACEMENT"] for b in registry.bindings()]
    do_install(client, b24)
    assert "CRM_DEAL_DETAIL_TAB" in {p["PLACEMENT"] for p in b24.bindings["placements"]}
    opened = Client(enforce_csrf_checks=True).post("/placement/", b24.placement_post(placement="CRM_DEAL_DETAIL_TAB"))
    assert opened.status_code == 200 and b'id="openlines-overview"' in opened.content


class DealNotes:
    """Stands in for the vendor's own model in the example."""

    def __init__(self):
        self.deleted_for = []
        self.objects = self

    def filter(self, portal):
        self.deleted_for.append(portal.member_id)
        return self

    def delete(self):
        return (1, {})


def test_event_handler_example_runs_on_a_cleaning_uninstall(client, installed):
    portal, b24 = installed
    notes = DealNotes()
    namespace = run("event handler", DealNote=notes)
    try:
        assert do_uninstall(client, b24, clean=True).status_code == 200
    finally:
        portal_data_cleaned.disconnect(namespace["forget_deal_notes"])
    assert notes.deleted_for == [portal.member_id]


def test_rest_example_calls_as_the_app_and_as_the_user(installed):
    portal, b24 = installed
    b24.crm_items = 120
    portal_and_user = run("rest")["portal_and_user"]
    assert portal_and_user(portal.member_id, b24.placement_post(user_id="2")["AUTH_ID"]) == {
        "deals": 120,
        "user_id": "2",
    }
    assert portal_and_user(portal.member_id, "not-a-token")["error"] in ("invalid_token", "expired_token")


def test_background_task_example_counts_every_active_portal(client, installed, standin):
    portal, b24 = installed
    b24.crm_items = 7
    other = standin.add_portal()
    do_install(client, other)
    Portal.objects.filter(member_id=other.member_id).update(status=Portal.Status.UNINSTALLED)
    out, err = io.StringIO(), io.StringIO()
    run("background task")["Command"](stdout=out, stderr=err).handle()
    assert out.getvalue().splitlines() == [f"{portal.domain}: 7 deals", "failed=0"]
