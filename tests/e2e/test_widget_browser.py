"""End to end in headless Chromium: the sandbox portal (127.0.0.1) installs, opens and uninstalls the app
(localhost, the live server) in a cross-origin iframe, exactly as a person clicking through it would.

Screenshots of the key steps land in test-artifacts/screenshots/<run id>/ (printed at the end of the run).
"""

import html
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture fails each test with the reason
    expect = None

from openlines.models import Channel
from portals.models import Portal
from sandbox.standin import frame_query_and_body
from tests.conftest import do_install
from tests.e2e.axe import assert_accessible
from tests.workers import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

VIEWPORT = {"width": 1280, "height": 860}
TIMEOUT_MS = 10_000  # for actions and assertions alike: generous on a loaded machine, short on a hang
if expect is not None:
    expect.set_options(timeout=TIMEOUT_MS)
BLOCKED_FRAME_URL = "chrome-error://chromewebdata/"  # what Chromium shows in a frame it refused


def new_page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.console_messages_seen = []
    page.on("console", lambda message: page.console_messages_seen.append(message.text))
    return page


def app_frame(page):
    return page.frame_locator("#app-frame")


def app_frame_content(page):
    """The app's frame as a Playwright Frame (what axe-core runs in)."""
    return page.locator("#app-frame").element_handle().content_frame()


def frame_loads(page) -> int:
    return int(page.get_attribute("#app-frame", "data-loads") or 0)


def wait_for_frame_load(page, before: int) -> None:
    page.wait_for_function(f"Number(document.getElementById('app-frame').dataset.loads) > {before}")


def choose(page, *, user: str, lang: str) -> None:
    page.select_option("#user", user)
    page.select_option("#lang", lang)


def open_widget(page, sandbox, *, user="1", lang="en", stale=False):
    """Click the app's square (or, after an uninstall, the stale link) and wait for the frame to load."""
    if page.is_visible("#slider"):
        page.click("#slider-close")  # as a person does: close the app, then click the square again
    choose(page, user=user, lang=lang)
    before = frame_loads(page)
    with page.expect_response(
        lambda r: r.url.startswith(f"{sandbox.app_url}/placement/") and r.request.method == "POST"
    ) as answer:
        page.click("#open-stale" if stale else "#square-app")
    wait_for_frame_load(page, before)
    return answer.value


def db_portal(sandbox) -> Portal:
    return Portal.objects.get(member_id=sandbox.portal.member_id)


def test_install_open_connect_and_uninstall_in_the_sandbox(browser, sandbox, shoot, django_user_model):
    page = new_page(browser)
    page.goto(sandbox.url)
    expect(page.locator("#app-state")).to_have_attribute("data-state", "not-installed")
    expect(page.locator("#squares .square.builtin").first).to_be_visible()
    expect(page.locator("#square-app")).to_have_count(0)
    shoot(page, "01-contact-center-before-install")

    # --- install as an administrator: the install POST into the frame, installFinish, ONAPPINSTALL
    choose(page, user="1", lang="en")
    with page.expect_response(lambda r: r.url.startswith(f"{sandbox.app_url}/install/")) as install:
        page.click("#install")
    assert install.value.status == 200
    sent = parse_qs(urlsplit(install.value.request.url).query)
    assert set(sent) == {"DOMAIN", "PROTOCOL", "LANG", "APP_SID"} and sent["DOMAIN"] == [sandbox.portal.domain]
    assert install.value.headers["content-security-policy"] == f"frame-ancestors {sandbox.portal_origin}"
    expect(page.locator("#install-finish")).to_have_attribute("data-called", "yes")
    # bx24-install-finish.md: after installFinish the frame reloads into the app (PLACEMENT=DEFAULT).
    expect(page.locator("#app-frame")).to_have_attribute("data-kind", "app")
    expect(app_frame(page).locator("#portal-domain")).to_have_text(sandbox.portal.domain)
    expect(page.locator('#event-log li[data-event="ONAPPINSTALL"][data-status="200"]')).to_have_count(1)
    expect(page.locator('#bx24-log li[data-command="installFinish"]')).to_have_count(1)
    expect(page.locator("#app-state")).to_have_attribute("data-state", "installed")
    # The install page titled the slider while it ran; the reloaded frame is the app, and the header says so.
    expect(page.locator('#bx24-log li[data-command="setTitle"]').first).to_contain_text("Installing b24widget")
    expect(page.locator("#slider-title")).to_have_text("b24widget")
    shoot(page, "02-install-finished")
    assert_accessible(app_frame_content(page), "the install page")
    stored = db_portal(sandbox)
    assert stored.status == Portal.Status.ACTIVE
    assert stored.application_token == sandbox.portal.application_token
    assert sandbox.portal.install_finished

    # --- the square appears; the widget opens in the cross-origin frame with the portal's POST
    page.click("#slider-close")
    expect(page.locator("#square-app")).to_have_count(1)
    expect(page.locator("#square-app")).to_contain_text("b24widget")
    opened = open_widget(page, sandbox, user="1", lang="en")
    assert opened.status == 200
    query = parse_qs(urlsplit(opened.request.url).query)
    body = parse_qs(opened.request.post_data)
    assert set(query) == {"DOMAIN", "PROTOCOL", "LANG", "APP_SID"}
    assert {"AUTH_ID", "AUTH_EXPIRES", "REFRESH_ID", "member_id", "status", "PLACEMENT", "PLACEMENT_OPTIONS"} <= set(
        body
    )
    assert body["PLACEMENT"] == ["CONTACT_CENTER"] and body["member_id"] == [sandbox.portal.member_id]
    assert opened.headers["content-security-policy"] == f"frame-ancestors {sandbox.portal_origin}"
    widget = app_frame(page)
    expect(widget.locator("#portal-domain")).to_have_text(sandbox.portal.domain)
    expect(widget.locator("#user-name")).to_have_text("Anna Admin")
    expect(widget.locator("#user-role")).to_have_text("administrator")

    # BX24 inside the frame: the widget's fitWindow resized the iframe to the page's height.
    fits = page.locator('#bx24-log li[data-command="fitWindow"]')
    # The Open Lines overview (openlines/) lists the portal's two lines, then fits the frame again.
    expect(widget.locator("#open-lines-table tbody tr[data-line]")).to_have_count(2)
    # the install page's; the app page's after the reload and the widget's, each twice (page, then overview)
    expect(fits).to_have_count(5)
    frame = page.locator("#app-frame").element_handle().content_frame()
    content_height = frame.evaluate("document.documentElement.offsetHeight")
    assert abs(int(page.get_attribute("#app-frame", "data-height")) - content_height) <= 2
    assert page.locator("#app-frame").evaluate("f => f.getBoundingClientRect().height") == pytest.approx(
        int(page.get_attribute("#app-frame", "data-height")), abs=1
    )
    shoot(page, "03-widget-as-administrator")
    assert_accessible(app_frame_content(page), "the widget as administrator")

    # --- an administrator connects the channel to line 2 from the overview; it stays connected
    line2 = widget.locator('#open-lines-table tr[data-line="2"]')
    expect(line2).to_have_attribute("data-state", "off")
    line2.locator("button").click()
    expect(widget.locator("#overview-result")).to_have_attribute("data-state", "ok")
    expect(widget.locator("#overview-result")).to_have_text("Connected. Copy the secret now: it is shown only once.")
    expect(line2).to_have_attribute("data-state", "connected")
    expect(widget.locator("#overview-connected")).to_be_visible()
    secret = widget.locator("#overview-secret").inner_text()
    endpoint = widget.locator("#overview-endpoint").inner_text()
    expect(fits).to_have_count(7)  # the frame grew for the message, then for the table listed again
    expect(line2.locator(".badge.warn")).to_have_text("no webhook yet: replies wait")
    shoot(page, "04-line-connected")
    assert_accessible(app_frame_content(page), "the widget after connecting a line")
    # ... and gives the line a webhook address right there
    widget.locator("#overview-webhook-url").fill("https://hooks.example.com/b24")
    widget.locator("#overview-webhook-save").click()
    expect(widget.locator("#overview-result")).to_have_text("Saved.")
    expect(line2.locator(".badge.warn")).to_have_count(0)
    channel = Channel.objects.get(portal__member_id=sandbox.portal.member_id)
    assert (channel.line_id, channel.state, channel.connected_by) == ("2", "connected", "1")
    assert channel.webhook_url == "https://hooks.example.com/b24"
    assert channel.secret == secret and endpoint == f"{sandbox.app_url}/channels/{channel.public_id}/messages"
    open_widget(page, sandbox, user="1", lang="en")
    expect(widget.locator('#open-lines-table tr[data-line="2"]')).to_have_attribute("data-state", "connected")
    expect(widget.locator("#overview-connected")).to_be_hidden()  # the secret is shown once, never again
    assert secret not in widget.locator("body").inner_html()
    # Wide enough to show the Contact Center's squares beside the open widget (docs/screenshots/widget.png).
    page.set_viewport_size({"width": 1600, "height": 1000})
    shoot(page, "04b-widget-beside-the-contact-center")
    page.set_viewport_size(VIEWPORT)

    # The official frame library (@bitrix24/b24jssdk B24Frame) runs unchanged against the portal page:
    # resizeWindow, REST from the frame (CORS on the portal), placement, admin flag, refreshAuth.
    frame = page.locator("#app-frame").element_handle().content_frame()  # the reopened widget
    assert frame.evaluate("typeof window.BX24") == "undefined" and frame.evaluate("typeof B24Js.B24Frame") == "function"
    frame.evaluate("b24widgetFrame.ready().then(b24 => b24.parent.resizeWindow(640, 555))")
    expect(page.locator('#bx24-log li[data-command="resizeWindow"]')).to_have_count(1)
    expect(page.locator("#app-frame")).to_have_attribute("data-height", "555")
    assert page.locator("#app-frame").evaluate("f => f.getBoundingClientRect().width") == pytest.approx(640, abs=1)
    me = frame.evaluate(
        "b24widgetFrame.ready().then(b24 => b24.actions.v2.call.make({method: 'user.current', "
        "params: {}})).then(r => r.getData().result)"
    )
    assert me["ID"] == "1" and me["NAME"] == "Anna"
    assert frame.evaluate("b24widgetFrame.ready().then(b24 => b24.placement.placement)") == "CONTACT_CENTER"
    assert frame.evaluate("b24widgetFrame.ready().then(b24 => b24.placement.options.ID)") == "1"
    assert frame.evaluate("b24widgetFrame.ready().then(b24 => b24.auth.isAdmin)") is True
    fresh = frame.evaluate("b24widgetFrame.ready().then(b24 => b24.auth.refreshAuth()).then(a => a.access_token)")
    assert fresh and fresh != body["AUTH_ID"][0]

    # --- an ordinary user sees the lines but cannot connect one, even by posting the request himself
    open_widget(page, sandbox, user="2", lang="en")
    expect(widget.locator("#user-name")).to_have_text("Oleg User")
    expect(widget.locator("#user-role")).to_have_text("user")
    expect(widget.locator("#open-lines-table tbody tr[data-line]")).to_have_count(2)
    expect(widget.locator("#open-lines-table button")).to_have_count(0)
    expect(widget.locator("#admin-only")).to_be_visible()
    assert_accessible(app_frame_content(page), "the widget as an ordinary user")
    frame = page.locator("#app-frame").element_handle().content_frame()
    forced = frame.evaluate("""() => b24widgetFrame.accessToken().then(auth => {
        const box = document.getElementById("openlines-overview"), form = new FormData();
        for (const [k, v] of Object.entries({widget_token: box.dataset.token, AUTH_ID: auth, action: "connect",
                                             connector: "b24widget_http", line: "1", LANG: "en"})) form.set(k, v);
        return fetch(box.dataset.action, {method: "POST", body: form}).then(r => r.json()); })""")
    assert forced["error"] == "not_admin"
    shoot(page, "05-ordinary-user-cannot-connect")
    assert list(Channel.objects.values_list("line_id", "state")) == [("2", "connected")]

    # --- the widget speaks the portal's language
    for lang, heading, role in (
        ("de", "b24widget für das Contact Center", "Administrator"),
        ("ru", "b24widget для Контакт-центра", "администратор"),
    ):
        open_widget(page, sandbox, user="1", lang=lang)
        expect(widget.locator("html")).to_have_attribute("lang", lang)
        expect(widget.locator("h1")).to_have_text(heading)
        expect(widget.locator("#user-role")).to_have_text(role)
        shoot(page, f"06-widget-{lang}")

    # --- the Django admin lists the sandbox's portal like any other
    django_user_model.objects.create_superuser("staff", "staff@example.test", "staff-password")
    admin = new_page(browser)
    admin.goto(f"{sandbox.app_url}/admin/login/?next=/admin/portals/portal/")
    admin.fill("#id_username", "staff")
    admin.fill("#id_password", "staff-password")
    admin.click("input[type=submit]")
    expect(admin.locator("#result_list")).to_contain_text(sandbox.portal.domain)
    expect(admin.locator("#result_list")).to_contain_text(sandbox.portal.member_id)
    shoot(admin, "07-django-admin-portals")
    # On a 1366 px laptop screen every column shows beside the navigation and the filters.
    admin.set_viewport_size({"width": 1366, "height": 768})
    overflow = admin.evaluate("""() => {
        const results = document.querySelector('#changelist .results');
        return results.scrollWidth - results.clientWidth; }""")  # > 0: columns hidden behind a scrollbar
    shoot(admin, "07b-django-admin-portals-1366")
    assert overflow <= 0
    admin.context.close()

    # --- uninstall: ONAPPUNINSTALL with the right application_token; the square goes; the widget refuses
    page.click("#slider-close")
    page.click("#uninstall")
    expect(page.locator('#event-log li[data-event="ONAPPUNINSTALL"][data-status="200"]')).to_have_count(1)
    expect(page.locator("#app-state")).to_have_attribute("data-state", "uninstalled")
    expect(page.locator("#square-app")).to_have_count(0)
    # The event was stored and answered at once; the worker beside the app applies it.
    stored = wait_for(
        lambda: (row := db_portal(sandbox)).status == Portal.Status.UNINSTALLED and row,
        what="the worker to apply ONAPPUNINSTALL",
    )
    assert not stored.application_token
    assert wait_for(
        lambda: Channel.objects.get(line_id="2").state == Channel.State.REVOKED,
        what="the channel to be revoked with the uninstall",
    )
    assert Channel.objects.get(line_id="2").secret == ""  # the credentials go; the row (history) stays
    refused = open_widget(page, sandbox, user="1", lang="en", stale=True)
    assert refused.status == 403
    expect(widget.locator("h1")).to_have_text("App not installed")
    expect(widget.locator("#openlines-overview")).to_have_count(0)
    shoot(page, "08-uninstalled-widget-refused")
    assert_accessible(app_frame_content(page), "the refusal after uninstall")
    page.context.close()


class _ForeignSite(ThreadingHTTPServer):
    """Another local web site (127.0.0.1, its own port: another origin than the portal and the app)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _ForeignPage)
        self.pages = {}
        self.origin = f"http://127.0.0.1:{self.server_address[1]}"


class _ForeignPage(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        body = self.server.pages.get(self.path, "").encode("utf-8")
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass


@pytest.fixture(scope="module")
def foreign_site():
    site = _ForeignSite()
    thread = threading.Thread(target=site.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield site
    site.shutdown()
    site.server_close()


class _ServingAlso:
    """The sandbox's pages plus one more page on the portal's own origin (the stand-in's `web` hook)."""

    def __init__(self, pages, path, text):
        self.pages, self.path, self.text = pages, path, text

    def handle_server(self, request):
        return self.pages.handle_server(request)

    def handle_portal(self, portal, request):
        if request.path == self.path:
            return 200, [("Content-Type", "text/html; charset=utf-8")], self.text.encode("utf-8")
        return self.pages.handle_portal(portal, request)


def framing_page(action: str, fields: dict) -> str:
    """A page that POSTs a widget open into an iframe (as a portal does) and frames the GET page too."""
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in fields.items()
    )
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>framer</title></head>
<body style="font:14px Arial;margin:16px"><h1 style="font-size:18px">A page framing the widget</h1>
<p>Left: a widget open POSTed into an iframe, as a portal does. Right: the widget URL opened with GET.</p>
<iframe name="posted" id="posted" style="width:600px;height:300px;border:1px solid #999"></iframe>
<iframe id="plain" src="{html.escape(action.split("?")[0])}"
  style="width:600px;height:300px;border:1px solid #999"></iframe>
<form id="open" method="post" action="{html.escape(action)}" target="posted">{inputs}</form>
<script>document.getElementById("open").submit();</script></body></html>"""


def wait_for_child_frames(page, count, settled=(BLOCKED_FRAME_URL,), timeout_ms=5000):
    """The page's child frames, once there are `count` of them and each has left about:blank."""
    children = []
    for _ in range(timeout_ms // 50):
        children = [frame for frame in page.frames if frame.parent_frame is page.main_frame]
        if len(children) == count and all(child.url not in ("", "about:blank") for child in children):
            break
        page.wait_for_timeout(50)
    return children


def widget_open(sandbox):
    """(action URL, body) of a fresh widget open, split as a portal sends it."""
    query, body = frame_query_and_body(sandbox.portal.placement_post(user_id="1"))
    return f"{sandbox.app_url}/placement/?{urlencode(query)}", body


def test_widget_page_refuses_framing_by_other_origins(browser, sandbox, client, shoot, foreign_site):
    do_install(client, sandbox.portal)
    sandbox.portal.finish_install()
    page = new_page(browser)

    # Opened directly in a tab (GET): it only explains itself, and nobody may frame it.
    direct = page.goto(f"{sandbox.app_url}/placement/")
    assert direct.status == 200
    headers = direct.all_headers()
    assert headers["content-security-policy"] == "frame-ancestors 'none'"
    assert headers["x-frame-options"] == "DENY"

    # A real widget open, in a top-level tab: it renders, and only the portal's origin may frame it.
    action, body = widget_open(sandbox)
    foreign_site.pages["/top"] = framing_page(action, body).replace('target="posted"', 'target="_self"')
    with page.expect_response(lambda r: r.url == action) as top:
        page.goto(f"{foreign_site.origin}/top")
    headers = top.value.all_headers()
    assert top.value.status == 200
    assert headers["content-security-policy"] == f"frame-ancestors {sandbox.portal_origin}"
    assert "x-frame-options" not in headers
    expect(page.locator("#portal-domain")).to_have_text(sandbox.portal.domain)

    # Another origin frames it (the POSTed widget and the GET page): Chromium blocks both frames.
    action, body = widget_open(sandbox)
    foreign_site.pages["/framer"] = framing_page(action, body)
    with page.expect_response(lambda r: r.url == action) as framed:
        page.goto(f"{foreign_site.origin}/framer")
    assert framed.value.status == 200  # the app answered; the browser enforced its frame-ancestors
    assert framed.value.all_headers()["content-security-policy"] == f"frame-ancestors {sandbox.portal_origin}"
    children = wait_for_child_frames(page, 2)
    assert [child.url for child in children] == [BLOCKED_FRAME_URL, BLOCKED_FRAME_URL]
    refusals = [text for text in page.console_messages_seen if "frame-ancestors" in text]
    assert any(sandbox.portal_origin in text for text in refusals), page.console_messages_seen
    assert any("'none'" in text for text in refusals), page.console_messages_seen
    shoot(page, "09-foreign-origin-frame-blocked")

    # The very same page served from the portal's origin gets the widget.
    action, body = widget_open(sandbox)
    pages = sandbox.standin.web
    sandbox.standin.web = _ServingAlso(pages, "/framer", framing_page(action, body))
    try:
        page.goto(f"{sandbox.portal_origin}/framer")
        expect(page.frame_locator("#posted").locator("#portal-domain")).to_have_text(sandbox.portal.domain)
    finally:
        sandbox.standin.web = pages
    assert wait_for_child_frames(page, 2)[1].url == BLOCKED_FRAME_URL  # the GET page: 'none' for all
    shoot(page, "10-portal-origin-frame-allowed")
    page.context.close()


def _post_top_level(page, foreign_site, path, fields, sandbox):
    """POST `fields` as a portal splits them, in a top-level tab; return the app's response."""
    query, body = frame_query_and_body(fields)
    action = f"{sandbox.app_url}{path}?{urlencode(query)}"
    foreign_site.pages[f"/post{len(foreign_site.pages)}"] = framing_page(action, body).replace(
        'target="posted"', 'target="_self"'
    )
    with page.expect_response(lambda r: r.url == action) as answer:
        page.goto(f"{foreign_site.origin}/post{len(foreign_site.pages) - 1}")
    page.wait_for_load_state()
    return answer.value


def test_every_refusal_and_explanation_page_is_accessible(browser, sandbox, client, shoot, foreign_site):
    page = new_page(browser)
    # Opened directly (GET): the landing page and the two pages that explain they open from Bitrix24.
    for path, heading in (
        ("/", "b24widget: a Bitrix24 Contact Center app"),
        ("/placement/", "Open from Bitrix24"),
        ("/install/", "Install from Bitrix24"),
    ):
        assert page.goto(f"{sandbox.app_url}{path}").status == 200
        expect(page.locator("h1")).to_have_text(heading)
        assert_accessible(page, f"GET {path}")
        shoot(page, f"00-get-{path.strip('/') or 'landing'}")

    portal = sandbox.portal
    answer = _post_top_level(page, foreign_site, "/placement/", portal.placement_post(), sandbox)
    assert answer.status == 403
    expect(page.locator("h1")).to_have_text("App not installed")
    assert_accessible(page, "the refusal for a portal that never installed the app")
    do_install(client, portal)
    portal.finish_install()
    fields = portal.placement_post()
    refusals = [
        ("no AUTH_ID", "/placement/", dict(fields, AUTH_ID=""), 403, "Not signed in"),
        ("a token Bitrix24 denies", "/placement/", dict(fields, AUTH_ID="x" * 32), 403, "Access denied"),
        ("a malformed POST", "/placement/", dict(fields, member_id="not a member id"), 400, "Bad request"),
        (
            "an unknown placement",
            "/placement/",
            dict(fields, PLACEMENT="CRM_DEAL_DETAIL_TAB"),
            400,
            "Unknown placement",
        ),
        (
            "an install Bitrix24 does not confirm",
            "/install/",
            dict(portal.install_post(), REFRESH_ID="y" * 32),
            403,
            "Installation not confirmed",
        ),
    ]
    for what, path, posted, status, heading in refusals:
        answer = _post_top_level(page, foreign_site, path, posted, sandbox)
        assert answer.status == status, what
        expect(page.locator("h1")).to_have_text(heading)
        expect(page.locator("#next-step")).to_be_visible()
        assert_accessible(page, f"the refusal for {what}")
    Portal.objects.filter(member_id=portal.member_id).update(status=Portal.Status.BLOCKED)
    # An administrator's open would heal it: an ordinary user sees the refusal.
    answer = _post_top_level(page, foreign_site, "/placement/", portal.placement_post(user_id="2"), sandbox)
    assert answer.status == 403
    expect(page.locator("h1")).to_have_text("An administrator is needed")
    expect(page.locator("#next-step")).to_be_visible()
    assert_accessible(page, "the refusal for a blocked portal")
    shoot(page, "11-refusal-blocked")
    page.context.close()


def test_a_refusal_in_the_frame_fits_it_and_closes_the_app(browser, sandbox, shoot):
    page = new_page(browser)
    page.goto(sandbox.url)
    choose(page, user="1", lang="de")
    page.click("#install")
    expect(page.locator("#app-state")).to_have_attribute("data-state", "installed")
    page.click("#slider-close")
    page.click("#uninstall")
    expect(page.locator("#app-state")).to_have_attribute("data-state", "uninstalled")
    wait_for(lambda: db_portal(sandbox).status == Portal.Status.UNINSTALLED, what="the worker to apply ONAPPUNINSTALL")
    before = page.locator('#bx24-log li[data-command="fitWindow"]').count()
    assert open_widget(page, sandbox, user="1", lang="de", stale=True).status == 403
    widget = app_frame(page)
    expect(widget.locator("html")).to_have_attribute("lang", "de")
    expect(widget.locator("h1")).to_have_text("App nicht installiert")
    expect(page.locator('#bx24-log li[data-command="fitWindow"]')).to_have_count(before + 1)
    frame = app_frame_content(page)
    assert (
        abs(
            int(page.get_attribute("#app-frame", "data-height"))
            - frame.evaluate("document.documentElement.offsetHeight")
        )
        <= 2
    )
    assert_accessible(frame, "the refusal in the frame (de)")
    shoot(page, "12-refusal-in-the-frame-de")
    widget.locator("#close-app").click()
    expect(page.locator('#bx24-log li[data-command="closeApplication"]')).to_have_count(1)
    page.context.close()


def test_a_placement_an_app_registers_opens_in_the_sandbox_unchanged(browser, sandbox, shoot):
    """One `placements.registry.register` call and nothing else: the install binds it (placement.bind), the
    sandbox lists it from the portal's bindings, and clicking it POSTs the placement into the frame."""
    from placements import registry

    code = "CRM_DEAL_DETAIL_TAB"
    titles = {"en": "b24widget tab", "ru": "b24widget tab", "de": "b24widget tab"}
    registry.register(
        registry.Placement(
            code=code,
            template="placements/contact_center.html",
            titles=titles,
            descriptions={"en": "A deal's tab", "ru": "Вкладка", "de": "Reiter"},
        )
    )
    try:
        page = new_page(browser)
        page.goto(sandbox.url)
        choose(page, user="1", lang="en")
        page.click("#install")
        expect(page.locator("#app-state")).to_have_attribute("data-state", "installed")
        page.click("#slider-close")
        row = page.locator(f'#placements tr[data-placement="{code}"]')
        expect(row).to_contain_text("b24widget tab")
        row.locator("input").fill('{"ID": "7"}')
        with page.expect_response(lambda r: r.url.startswith(f"{sandbox.app_url}/placement/")) as answer:
            row.locator("button").click()
        assert answer.value.status == 200
        sent = parse_qs(answer.value.request.post_data)
        assert sent["PLACEMENT"] == [code] and sent["PLACEMENT_OPTIONS"] == ['{"ID": "7"}']
        expect(app_frame(page).locator("#portal-domain")).to_have_text(sandbox.portal.domain)
        expect(page.locator("#slider-title")).to_have_text(f"b24widget tab ({code})")
        shoot(page, "placement-registered-by-an-app")
    finally:
        registry._registry.pop(code, None)
