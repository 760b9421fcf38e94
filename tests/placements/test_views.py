"""What the widget shows, in which language, and the headers that keep it inside its portal's frame."""

import html
import re

import pytest
from django.test import Client
from django.urls import get_resolver

from inbox import views as inbox_views
from openlines import views as openlines_views
from placements import views as placement_views
from portals import views as portal_views
from tests.conftest import do_install
from tests.placements.frames import is_widget, open_widget, text, widget_token_of

pytestmark = pytest.mark.django_db


def element(response, element_id) -> str:
    """The text inside the element with that id (flat markup only)."""
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</', response.content.decode(), re.S)
    assert match, f"no #{element_id}"
    return match.group(1).strip()


def tag(response, element_id) -> str:
    match = re.search(rf'<[^>]*id="{element_id}"[^>]*>', response.content.decode())
    assert match, f"no #{element_id}"
    return match.group(0)


# --- content (rule 7) ------------------------------------------------------------------------------


def lines_listed(frame, response) -> list:
    """What the page's overview lists (its first request, with the page's own widget token)."""
    answer = frame.post("/openlines/connector/", {"widget_token": widget_token_of(response), "action": "list"})
    assert answer.status_code == 200, answer.content
    return [(line["id"], line["name"]) for line in answer.json()["lines"]]


def test_admin_sees_who_where_status_and_the_lines_to_connect(frame, installed):
    _, b24 = installed
    response = open_widget(frame, b24.placement_post(user_id="1"))
    assert is_widget(response)
    assert element(response, "portal-domain") == b24.domain
    assert element(response, "user-name") == "Anna Admin"
    assert element(response, "user-role") == "administrator"
    assert element(response, "app-status") == "free"
    assert 'id="payment-expired"' not in response.content.decode()
    assert 'data-admin="1"' in tag(response, "openlines-overview")
    assert 'id="admin-only"' not in response.content.decode()
    assert lines_listed(frame, response) == [("1", "Website chat"), ("2", "Telegram")]


def test_a_user_may_look_but_not_change(frame, installed):
    _, b24 = installed
    response = open_widget(frame, b24.placement_post(user_id="2"))
    assert is_widget(response)
    assert element(response, "user-name") == "Oleg User"
    assert element(response, "user-role") == "user"
    assert 'data-admin=""' in tag(response, "openlines-overview")
    assert "Only portal administrators may connect or disconnect a line." in text(response)
    assert lines_listed(frame, response) == [("1", "Website chat"), ("2", "Telegram")]


@pytest.mark.parametrize(
    "code,word", [("F", "free"), ("D", "demo"), ("T", "trial"), ("P", "paid"), ("L", "local"), ("S", "subscription")]
)
def test_the_status_word_comes_from_app_info_not_from_the_post(frame, installed, code, word):
    _, b24 = installed
    b24.app_status = code
    fields = b24.placement_post()
    fields["status"] = "D" if code != "D" else "P"  # "purely informational": never what is shown
    response = open_widget(frame, fields)
    assert element(response, "app-status") == word


def test_trial_days_left(frame, installed):
    _, b24 = installed
    b24.app_status, b24.days = "T", 5
    response = open_widget(frame, b24.placement_post())
    assert "5 days left" in text(response)
    b24.days = 1
    assert "1 day left" in text(open_widget(frame, b24.placement_post()))


def test_payment_expired_shows_a_warning(frame, installed):
    portal, b24 = installed
    b24.app_status, b24.payment_expired = "P", True
    response = open_widget(frame, b24.placement_post())
    assert is_widget(response)
    assert "The app's paid period has expired." in html.unescape(element(response, "payment-expired"))
    assert 'class="badge bad"' in tag(response, "app-status")
    # Shown, not stored: what is stored about the licence comes from the OAuth server only (sync_portals).
    portal.refresh_from_db()
    assert portal.payment_expired is None and portal.app_status == "F"


@pytest.mark.parametrize(
    "lang,html_lang,signed_in,status_word",
    [
        ("en", "en", "Signed in as", "free"),
        ("ru", "ru", "Вы вошли как", "бесплатное"),
        ("de", "de", "Angemeldet als", "kostenlos"),
        ("ua", "ru", "Вы вошли как", "бесплатное"),  # Ukrainian interface: the Russian catalog, by design
        ("la", "en", "Signed in as", "free"),  # no catalog: English
        ("br", "en", "Signed in as", "free"),
    ],
)
def test_the_widget_speaks_the_portals_language(frame, installed, lang, html_lang, signed_in, status_word):
    _, b24 = installed
    response = open_widget(frame, b24.placement_post(lang=lang))
    assert is_widget(response)
    assert f'<html lang="{html_lang}">' in response.content.decode()
    assert signed_in in text(response)
    assert element(response, "app-status") == status_word
    # The overview's answers come back in the same language.
    assert f'data-lang="{html_lang}"' in tag(response, "openlines-overview")


def test_names_from_bitrix24_are_escaped(client, frame, standin):
    users = [{"ID": "1", "NAME": "<script>alert(1)</script>", "LAST_NAME": "", "ADMIN": True}]
    b24 = standin.add_portal(users=users)
    b24.open_lines = [{"ID": "7", "LINE_NAME": '"><img src=x onerror=alert(2)>', "ACTIVE": "Y"}]
    do_install(client, b24)
    response = open_widget(frame, b24.placement_post())
    body = response.content.decode()
    assert "<script>alert(1)" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    # A line's name reaches the page as JSON data, and the page puts it in as text, never as markup.
    assert lines_listed(frame, response) == [("7", '"><img src=x onerror=alert(2)>')]
    assert "innerHTML" not in body and "td.textContent = text" in body


def test_a_portal_without_the_open_lines_scope_still_opens(client, frame, standin):
    b24 = standin.add_portal(scope="placement,contact_center,user_brief")
    do_install(client, b24)
    response = open_widget(frame, b24.placement_post())
    assert is_widget(response)
    answer = frame.post("/openlines/connector/", {"widget_token": widget_token_of(response), "action": "list"})
    assert answer.status_code == 403
    assert answer.json()["error_description"] == "The Open Lines of this portal could not be loaded."


# --- headers (rule 6) ------------------------------------------------------------------------------


def test_the_widget_may_be_framed_by_its_portal_only_and_is_never_cached(frame, installed):
    _, b24 = installed
    response = open_widget(frame, b24.placement_post())
    assert is_widget(response)
    assert response["Content-Security-Policy"] == f"frame-ancestors http://{b24.domain}"
    assert "X-Frame-Options" not in response
    assert "no-store" in response["Cache-Control"]


def test_a_refusal_for_a_known_portal_is_framed_by_that_portal_only(frame, installed):
    _, b24 = installed
    fields = dict(b24.placement_post(), AUTH_ID="f" * 64)
    response = open_widget(frame, fields)
    assert response.status_code == 403
    assert response["Content-Security-Policy"] == f"frame-ancestors http://{b24.domain}"
    assert "X-Frame-Options" not in response and "no-store" in response["Cache-Control"]


def test_a_malformed_open_may_not_be_framed_at_all(frame, installed):
    _, b24 = installed
    response = open_widget(frame, dict(b24.placement_post(), PROTOCOL="7"))
    assert response.status_code == 400
    assert response["Content-Security-Policy"] == "frame-ancestors 'none'"
    assert response["X-Frame-Options"] == "DENY" and "no-store" in response["Cache-Control"]


@pytest.mark.parametrize("path", ["/admin/login/", "/healthz", "/placement/"])
def test_other_pages_keep_x_frame_options_deny(frame, path):
    response = frame.get(path)
    assert response.status_code == 200
    assert response["X-Frame-Options"] == "DENY"
    assert "frame-ancestors http" not in response.get("Content-Security-Policy", "")


def test_only_the_bitrix24_entry_points_are_csrf_exempt():
    def walk(resolver):
        for pattern in resolver.url_patterns:
            if hasattr(pattern, "url_patterns"):
                yield from walk(pattern)
            else:
                yield pattern.callback

    exempt = {view for view in walk(get_resolver()) if getattr(view, "csrf_exempt", False)}
    # ... and the channel's: the connector pages' actions (the frame's signed widget token) and the
    # channel API (an HMAC signature, for outside systems).
    assert exempt == {
        portal_views.install_view,
        inbox_views.events_view,
        placement_views.placement_view,
        openlines_views.connector_action_view,
        openlines_views.channel_messages_view,
        openlines_views.channel_view,
        openlines_views.unknown_channel_view,
    }


def test_a_post_without_a_csrf_token_is_refused_elsewhere(db, django_user_model):
    django_user_model.objects.create_superuser("root", "root@example.test", "pw-for-tests-only")
    browser = Client(enforce_csrf_checks=True)
    response = browser.post("/admin/login/", {"username": "root", "password": "pw-for-tests-only"})
    assert response.status_code == 403 and b"CSRF" in response.content
    assert "_auth_user_id" not in browser.session


@pytest.mark.parametrize("path", ["/placement/", "/openlines/connector/", "/install/", "/events/"])
def test_the_entry_points_take_a_cross_site_post(frame, db, path):
    response = frame.post(path, {"LANG": "en"})
    assert response.status_code in (400, 403)
    assert b"CSRF" not in response.content  # refused, if at all, by the view, not by the CSRF check


@pytest.mark.parametrize(
    "days,shown",
    [("12", "12"), (12, "12"), (0, "0"), ("²", None), (-3, None), ("3 days", None), (None, None), (True, None)],
)
def test_odd_app_info_days_never_break_the_page(frame, installed, days, shown):
    _, b24 = installed
    b24.app_status, b24.days = "T", days
    response = open_widget(frame, b24.placement_post())
    assert is_widget(response)
    assert re.findall(r"([^\s>]+) days? left", text(response)) == ([shown] if shown else [])


def test_the_apps_own_page_opens_with_placement_default(client, installed):
    """The app's "handler path" (opened from the portal's menu) posts PLACEMENT=DEFAULT to /placement/."""
    _portal, b24 = installed
    response = client.post("/placement/", b24.placement_post(placement="DEFAULT"))
    assert response.status_code == 200
    assert 'id="openlines-overview"' in response.content.decode()
    # DEFAULT is not something placement.bind accepts: the install binds CONTACT_CENTER only.
    assert [p["PLACEMENT"] for p in b24.bindings["placements"]] == ["CONTACT_CENTER"]


def test_a_reopened_widget_reuses_its_page_with_a_fresh_token(frame, installed, admin_client):
    from django.test.signals import template_rendered

    from placements import widget_token as tokens

    _portal, b24 = installed
    fields = b24.placement_post()
    rendered = []

    def count(sender, template, **kwargs):
        rendered.append(template.name)

    template_rendered.connect(count)
    try:
        first = open_widget(frame, fields)
        second = open_widget(frame, fields)
    finally:
        template_rendered.disconnect(count)
    assert is_widget(first) and is_widget(second)
    assert rendered.count("placements/contact_center.html") == 1
    for response in (first, second):
        assert tokens.read(widget_token_of(response)).user_id == "1"
    assert "@@b24widget-token@@" not in text(second)
    # What the page shows is part of its key: a change to it (here the portal's app status) shows at once.
    b24.app_status, b24.days = "T", 9
    third = text(open_widget(frame, b24.placement_post()))
    assert "9 days left" in third
