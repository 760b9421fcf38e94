"""The Django admin's lists on a 1,280 px screen: every column shows beside the navigation and the filters
(issue 25: the inbox list hid its state column behind a scrollbar)."""

import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture fails each test with the reason
    expect = None

from inbox.models import InboxItem
from tests.e2e.test_widget_browser import new_page
from tests.helpers import make_portal

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_inbox_list_shows_every_column_at_1280_px(browser, live_server, django_user_model, shoot):
    portal = make_portal(member_id="a" * 32, domain="a-rather-long-portal-name.bitrix24.com")
    for n, state in enumerate(InboxItem.State.values):
        InboxItem.objects.create(
            portal=portal,
            member_id=portal.member_id,
            event="ONIMCONNECTORMESSAGEUPDATE",
            source="offline",
            idempotency_key=f"{n:064x}",
            state=state,
            attempts=3,
            last_error="rest error: QUERY_LIMIT_EXCEEDED: too many requests, try again later " * 3,
        )
    django_user_model.objects.create_superuser("staff", "staff@example.test", "staff-password")
    admin = new_page(browser)
    admin.set_viewport_size({"width": 1280, "height": 800})
    admin.goto(f"{live_server.url}/admin/login/?next=/admin/inbox/inboxitem/")
    admin.fill("#id_username", "staff")
    admin.fill("#id_password", "staff-password")
    admin.click("input[type=submit]")
    expect(admin.locator("#result_list")).to_contain_text(portal.domain)
    overflow = admin.evaluate("""() => {
        const results = document.querySelector('#changelist .results');
        return results.scrollWidth - results.clientWidth; }""")  # > 0: columns hidden behind a scrollbar
    shoot(admin, "django-admin-inbox-1280")
    state = admin.locator("#result_list thead th.column-state")
    box = state.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 1280
    assert overflow <= 4  # a few pixels of subpixel rounding; it was 377 with the old columns
    admin.context.close()
