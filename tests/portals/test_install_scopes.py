"""An install Bitrix24 refuses for a scope the portal did not grant: the page names the scope (and the
placement), never "Bitrix24 is not reachable"."""

import pytest

from placements import registry
from portals.models import Portal

pytestmark = pytest.mark.django_db

TAB = registry.Placement(
    code="CRM_DEAL_DETAIL_TAB",
    template="placements/contact_center.html",
    titles={"en": "Tab", "ru": "Tab", "de": "Tab"},
    descriptions={"en": "A tab", "ru": "A tab", "de": "A tab"},
)


@pytest.fixture
def deal_tab():
    registry.register(TAB)
    yield TAB
    registry._registry.pop(TAB.code, None)


def text(response) -> str:
    return response.content.decode()


def test_a_new_placement_whose_scope_the_portal_lacks_names_the_scope(client, standin, deal_tab):
    """placement.bind of a CRM placement on a portal without `crm`: Bitrix24 does not offer it to the app."""
    b24 = standin.add_portal(scope="placement,contact_center,imopenlines,user_brief")
    response = client.post("/install/", b24.install_post())
    assert response.status_code == 403 and "Retry-After" not in response
    page = text(response)
    assert "Installation incomplete" in page and "not reachable" not in page
    assert "CRM_DEAL_DETAIL_TAB" in page and "(scope) crm," in page
    portal = Portal.objects.get(member_id=b24.member_id)
    assert portal.status == Portal.Status.NEW and "ERROR_PLACEMENT_NOT_FOUND" in portal.last_error


def test_a_portal_without_the_placement_scope_is_told_so_in_its_language(client, standin, deal_tab):
    b24 = standin.add_portal(scope="contact_center,imopenlines,user_brief,crm")
    response = client.post("/install/", b24.install_post(lang="de"))
    assert response.status_code == 403
    page = text(response)
    assert "Installation unvollständig" in page and "placement, contact_center" in page


def test_the_scope_of_a_placement_comes_from_its_declaration_or_its_code():
    assert registry.scope_of(registry.CONTACT_CENTER) == "contact_center"
    assert registry.scope_of(TAB) == "crm"
    assert registry.scope_of(registry.Placement(code="TASK_VIEW_TAB", template="x")) == "task"
    assert registry.scope_of(registry.Placement(code="ANYTHING", template="x", scope="landing")) == "landing"
    assert registry.scope_of(registry.Placement(code="LEFT_MENU", template="x")) == ""
