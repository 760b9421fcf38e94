"""End to end in headless Chromium: a conversation through the Open Lines connector, every step clicked.

Install in the sandbox's Contact Center -> the connector's tile opens SETTING_CONNECTOR -> connect with the
sandbox's webhook receiver -> the customer page signs and sends -> the operator desk shows it and replies
(OnImConnectorMessageAdd) -> the customer page shows the webhook -> the desk shows "delivered"
(imconnector.send.status.delivery) and, once the customer page reports it read, "read"
(imconnector.send.status.reading); disconnect -> the customer's next message is refused with its error code.
"""

import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture fails each test with the reason
    expect = None

from openlines.models import Channel, InboundMessage
from tests.e2e.axe import assert_accessible
from tests.e2e.test_widget_browser import app_frame, app_frame_content, choose, new_page

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SLOW_MS = 30_000  # the steps that wait for the Celery worker (install step, delivery, webhook)


def _install(page, sandbox):
    page.goto(sandbox.url)
    choose(page, user="1", lang="en")
    page.click("#install")
    expect(page.locator("#app-state")).to_have_attribute("data-state", "installed")
    page.click("#slider-close")


def _open_tile(page, tile):
    # imconnector.register runs in the install step: the tile appears once it has (reload to see it).
    for _ in range(60):
        if page.locator(tile).count():
            break
        page.wait_for_timeout(500)
        page.reload()
    page.click(tile)
    expect(app_frame(page).locator("#connector-form")).to_be_visible()


def test_a_conversation_through_the_connector_in_the_browser(browser, sandbox, shoot):
    page = new_page(browser)
    _install(page, sandbox)
    tile = "#squares .square.connector >> nth=0"
    _open_tile(page, tile)
    # The README's step 3: the top bar's links take a click while the slider is open (nothing covers them).
    page.click("#link-customer", trial=True, timeout=5_000)
    page.click("#link-desk", trial=True, timeout=5_000)
    line = page.locator("#squares .square.connector").first.get_attribute("id").rsplit("-", 1)[-1]
    settings_page = app_frame(page)
    expect(settings_page.locator("#channel-state")).to_have_text("not connected")
    # The line as the portal names it (imopenlines.config.list.get), not "Open Line 1".
    names = {str(entry["ID"]): entry["LINE_NAME"] for entry in sandbox.portal.open_lines}
    expect(settings_page.locator("#line-name")).to_have_text(names[line])
    assert_accessible(app_frame_content(page), "the SETTING_CONNECTOR page")
    webhook = sandbox.pages.webhook_url(sandbox.portal)
    settings_page.locator("#channel-name").fill("Website chat (sandbox)")
    settings_page.locator("#webhook-url").fill(webhook)
    settings_page.locator("#connect").click()
    expect(settings_page.locator("#secret-box")).to_be_visible()
    secret = settings_page.locator("#secret").inner_text()
    endpoint = settings_page.locator("#connector-form").get_attribute("data-endpoint")
    # The page switches to the connected channel's controls (a second Connect would only make a new secret).
    expect(settings_page.locator("#connect")).to_be_hidden()
    expect(settings_page.locator("#disconnect")).to_be_visible()
    expect(settings_page.locator("#inbound-url")).to_have_text(endpoint)
    expect(settings_page.locator("#channel-state")).to_have_text("connected")
    assert secret and endpoint.startswith(f"{sandbox.app_url}/channels/")
    shoot(page, "01-connected")
    channel = Channel.objects.get(line_id=line)
    assert channel.is_connected and channel.webhook_url == webhook

    # --- the customer writes
    customer = page.context.new_page()
    customer.goto(f"{sandbox.portal_origin}/sandbox/customer/")
    expect(customer.locator("#webhook-url")).to_have_text(webhook)
    customer.fill("#endpoint", endpoint)
    customer.fill("#secret", secret)
    customer.fill("#message-text", "Hello, is anyone there?")
    customer.click("#send")
    expect(customer.locator("#send-result")).to_have_attribute("data-status", "202")

    # --- the operator sees it and replies
    desk = page.context.new_page()
    desk.goto(f"{sandbox.portal_origin}/sandbox/openlines/")
    incoming = desk.locator('.chat .messages li[data-side="customer"]')
    expect(incoming.locator(".text")).to_have_text("Hello, is anyone there?", timeout=SLOW_MS)
    expect(incoming.locator(".author")).to_have_text("Casey")
    desk.locator(".chat .reply-text").first.fill("Yes, how can I help?")
    desk.locator(".chat .reply-send").first.click()
    expect(desk.locator("#desk-result")).to_have_text("OnImConnectorMessageAdd sent: HTTP 200")

    # --- the customer sees the reply (the app's signed webhook), the operator sees "delivered"
    expect(customer.locator('#conversation li[data-side="operator"][data-signed="yes"] .text')).to_have_text(
        "Yes, how can I help?", timeout=SLOW_MS
    )
    reply = desk.locator('.chat .messages li[data-side="operator"]')
    expect(reply).to_have_attribute("data-status", "delivered", timeout=SLOW_MS)
    # --- the customer reads it: the channel's "read" report -> imconnector.send.status.reading
    customer.bring_to_front()
    customer.click("#conversation .mark-read")
    expect(customer.locator("#send-result")).to_have_attribute("data-status", "202")
    desk.bring_to_front()
    expect(reply).to_have_attribute("data-status", "read", timeout=SLOW_MS)
    shoot(desk, "02-desk-delivered-and-read")
    assert_accessible(desk, "the sandbox's Open Lines desk")
    assert_accessible(customer, "the sandbox's customer page")
    shoot(customer, "03-customer-reply")

    # --- disconnect in SETTING_CONNECTOR; the customer's next message is refused with a clear error
    page.bring_to_front()
    page.click("#slider-close")
    _open_tile(page, f"#connector-{channel.connector_id}-{line}")  # reopened: the connected channel's settings
    expect(settings_page.locator("#channel-state")).to_have_text("connected")
    settings_page.locator("#disconnect").click()
    # Nothing happens before the administrator confirms.
    expect(settings_page.locator("#confirm-box")).to_be_visible()
    expect(settings_page.locator("#confirm-yes")).to_be_focused()
    assert Channel.objects.get(pk=channel.pk).is_connected
    assert_accessible(app_frame_content(page), "the SETTING_CONNECTOR page asking to confirm")
    shoot(page, "05-confirm-disconnect")
    settings_page.locator("#confirm-yes").click()
    expect(settings_page.locator("#action-result")).to_have_attribute("data-state", "ok")
    expect(settings_page.locator("#connect")).to_be_visible()
    channel.refresh_from_db()
    assert not channel.is_connected
    customer.bring_to_front()
    customer.fill("#message-text", "Still there?")
    customer.click("#send")
    expect(customer.locator("#send-result")).to_have_attribute("data-status", "409")
    expect(customer.locator("#send-result")).to_have_attribute("data-error", "channel_disconnected")
    # The refused message was never stored: the first message and the read report only.
    assert sorted(InboundMessage.objects.filter(channel=channel).values_list("action", flat=True)) == ["add", "read"]
    shoot(customer, "04-refused-after-disconnect")
