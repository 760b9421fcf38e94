"""The frame protocol end to end: Bitrix24's own B24Frame (vendored @bitrix24/b24jssdk) in the widget's frame,
the sandbox portal page as its parent. Each case names the page of the docs or the library it pins."""

import pytest

from tests.e2e.test_widget_browser import (
    app_frame_content,
    choose,
    frame_loads,
    new_page,
    open_widget,
    wait_for_frame_load,
)

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the browser conftest reports it
    expect = None

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _installed_widget(browser, sandbox, *, user="1", lang="en"):
    page = new_page(browser)
    page.goto(sandbox.url)
    choose(page, user="1", lang="en")
    page.click("#install")
    expect(page.locator("#app-state")).to_have_attribute("data-state", "installed")
    open_widget(page, sandbox, user=user, lang=lang)
    return page, app_frame_content(page)


def _b24(frame, expression):
    return frame.evaluate(f"b24widgetFrame.ready().then(b24 => {expression})")


def test_init_data_reaches_the_library_as_a_portal_sends_it(browser, sandbox):
    """b24jssdk AppFrame/AuthManager/PlacementManager read getInitData; window.name is DOMAIN|PROTOCOL|APP_SID."""
    page, frame = _installed_widget(browser, sandbox, user="2", lang="de")
    domain, protocol, app_sid = frame.evaluate("window.name").split("|")
    assert (domain, protocol) == (sandbox.portal.domain, "0") and len(app_sid) == 32
    assert _b24(frame, "b24.getTargetOrigin()") == f"http://{sandbox.portal.domain}"
    assert _b24(frame, "b24.getLang()") == "de"
    assert _b24(frame, "b24.auth.isAdmin") is False
    assert _b24(frame, "b24.auth.getAuthData().member_id") == sandbox.portal.member_id
    assert _b24(frame, "b24.isInstallMode") is False  # not the install frame: installFinish is refused
    page.context.close()


def test_set_title_and_reload_window(browser, sandbox):
    """sdk/bx24-js-sdk/additional-functions/bx24-set-title.md, bx24-reload-window.md."""
    page, frame = _installed_widget(browser, sandbox)
    _b24(frame, "b24.parent.setTitle('Widget settings')")
    expect(page.locator("#slider-title")).to_have_text("Widget settings")
    before = frame_loads(page)
    frame.evaluate("b24widgetFrame.ready().then(b24 => { b24.parent.reloadWindow(); })")
    wait_for_frame_load(page, before)
    expect(page.locator('#bx24-log li[data-command="reloadWindow"]')).to_have_count(1)
    page.context.close()


def test_a_message_from_another_origin_is_ignored(browser, sandbox):
    """b24jssdk MessageManager: only the portal's origin is answered; the portal answers only its app's frame."""
    page, frame = _installed_widget(browser, sandbox)
    # setTitle only: the widget's own fitWindow calls (after its Open Lines load) may still arrive meanwhile.
    titles = page.locator('#bx24-log li[data-command="setTitle"]')
    before = titles.count()
    app_sid = frame.evaluate("window.name").split("|")[2]
    # Posted by the portal page to itself (not the app's frame), with the right APP_SID: ignored.
    page.evaluate(f"window.postMessage('setTitle:{{\"title\":\"forged\"}}:1:{app_sid}', '*')")
    # A genuine command sent after it is answered; messages are handled in order, so the forged one came first.
    _b24(frame, "b24.parent.setTitle('genuine')")
    expect(page.locator("#slider-title")).to_have_text("genuine")
    assert titles.count() == before + 1
    page.context.close()
