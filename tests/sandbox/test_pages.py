"""The sandbox's Contact Center page and its actions, over HTTP (the browser tests click through them)."""

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from sandbox.pages import SandboxPages

APP_URL = "http://localhost:9"  # never called by these tests: events go to what the "app" binds


@pytest.fixture
def pages(standin):
    return SandboxPages(standin, app_url=APP_URL).attach()


def act(http, portal, action, body=None, **headers):
    return http.post(
        f"http://{portal.domain}/sandbox/api/{action}",
        json=body or {},
        timeout=5,
        headers={"Origin": f"http://{portal.domain}", **headers},
    )


def state(http, portal, lang="en"):
    return http.get(f"http://{portal.domain}/sandbox/api/state", params={"lang": lang}, timeout=5).json()


def play_the_app(http, portal, recorder):
    """What the app's install page does with the installer's token: bind the square and its events."""
    token = portal.issue_tokens("1")["access_token"]
    rest = portal.client_endpoint
    assert (
        http.post(
            rest + "placement.bind.json",
            timeout=5,
            data={
                "auth": token,
                "PLACEMENT": "CONTACT_CENTER",
                "HANDLER": recorder.url + "placement/?v=2",
                "TITLE": "Widget",
                "LANG_ALL[de][TITLE]": "Widget DE",
                "LANG_ALL[de][DESCRIPTION]": "Beschreibung",
            },
        ).json()["result"]
        is True
    )
    for event in ("ONAPPINSTALL", "ONAPPUNINSTALL"):
        assert (
            http.post(
                rest + "event.bind.json",
                timeout=5,
                data={"auth": token, "event": event, "handler": recorder.url + "events/"},
            ).json()["result"]
            is True
        )


def test_contact_center_page_script_and_assets(http, standin, pages, portal):
    page = http.get(SandboxPages.portal_url(portal), timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    config = json.loads(
        page.text.split('<script id="sandbox-config" type="application/json">')[1].split("</script>")[0]
    )
    assert config["memberId"] == portal.member_id and config["appOrigin"] == APP_URL
    assert [u["admin"] for u in config["users"]] == [True, False]
    assert config["languages"] == ["en", "ru", "de"]
    for asset, kind in (("contact-center.js", "text/javascript"), ("sandbox.css", "text/css")):
        answer = http.get(f"http://{portal.domain}/sandbox/{asset}", timeout=5)
        assert answer.status_code == 200 and answer.headers["Content-Type"].startswith(kind)
    # No stand-in BX24 script any more: the app's pages load the official frame library themselves.
    assert http.get(f"http://{standin.address}/api/v1/", timeout=5).status_code == 404
    other_name = http.get(f"http://localhost:{portal.domain.rsplit(':', 1)[1]}/", timeout=5, allow_redirects=False)
    assert (other_name.status_code, other_name.headers["Location"]) == (302, SandboxPages.portal_url(portal))
    # The portal's APIs are still there; other paths are not found.
    assert http.get(f"http://{portal.domain}/nothing", timeout=5).status_code == 404
    assert http.get(f"http://{standin.address}/nothing", timeout=5).status_code == 404


def test_install_then_finish_then_the_square_in_the_chosen_language(http, standin, pages, portal):
    recorder = standin.add_recorder()
    assert state(http, portal)["appState"] == "not-installed"

    answer = act(http, portal, "install", {"user_id": "1", "lang": "de"})
    assert answer.status_code == 200
    install = answer.json()
    action = urlsplit(install["action"])
    assert f"{action.scheme}://{action.netloc}{action.path}" == APP_URL + "/install/"
    query = {k: v[0] for k, v in parse_qs(action.query).items()}
    assert query == {"DOMAIN": portal.domain, "PROTOCOL": "0", "LANG": "de", "APP_SID": query["APP_SID"]}
    assert {"AUTH_ID", "REFRESH_ID", "member_id", "PLACEMENT"} <= set(install["fields"])
    assert not {"DOMAIN", "LANG"} & set(install["fields"])
    assert install["fields"]["PLACEMENT"] == "DEFAULT"
    # What B24Frame reads: window.name DOMAIN|PROTOCOL|APP_SID, then getInitData's upper-case fields.
    assert install["frameName"] == f"{portal.domain}|0|{query['APP_SID']}"
    init = install["init"]
    assert init["AUTH_ID"] == install["fields"]["AUTH_ID"] and init["MEMBER_ID"] == portal.member_id
    assert init["IS_ADMIN"] is True and init["LANG"] == "de" and init["INSTALL"] is True
    assert init["PLACEMENT"] == "DEFAULT" and init["PROTOCOL"] == 0
    assert portal.language_id == "de"
    assert state(http, portal)["appState"] == "installing"

    assert install["fields"]["APPLICATION_TOKEN"] == portal.application_token  # simple-way.md

    play_the_app(http, portal, recorder)
    # installation-finish.md: no event (and no square) before installFinish.
    assert act(http, portal, "install-event").json()["deliveries"] == []
    assert state(http, portal)["squares"] == []

    finished = act(http, portal, "install-finished").json()
    assert finished["installFinished"] is True
    assert [(d["event"], d["handler"]) for d in finished["deliveries"]] == [("ONAPPINSTALL", recorder.url + "events/")]
    # bx24-install-finish.md: the page reloads and the app launches: its own page, PLACEMENT=DEFAULT.
    reload = finished["reload"]
    assert urlsplit(reload["action"]).path == "/placement/" and reload["fields"]["PLACEMENT"] == "DEFAULT"
    assert finished["title"] == "Widget"  # the slider's header names the app now, no longer "Installing the app"
    form = {k: v[0] for k, v in parse_qs(recorder.requests[-1]["body"]).items()}
    assert form["auth[application_token]"] == install["fields"]["APPLICATION_TOKEN"]
    seen = state(http, portal, lang="de")
    assert seen["appState"] == "installed" and seen["installFinished"] is True
    assert seen["squares"] == [{"id": 1, "title": "Widget DE", "description": "Beschreibung"}]
    assert state(http, portal, lang="ru")["squares"][0]["title"] == "Widget"  # no ru title: the default
    assert seen["boundEvents"] == ["ONAPPINSTALL", "ONAPPUNINSTALL"]
    assert [d["event"] for d in seen["deliveries"]] == ["ONAPPINSTALL"]


def test_open_posts_to_the_bound_handler_as_the_chosen_user(http, standin, pages, portal):
    recorder = standin.add_recorder()
    assert act(http, portal, "open", {"user_id": "1"}).status_code == 409  # no square yet
    act(http, portal, "install", {"user_id": "1", "lang": "en"})
    play_the_app(http, portal, recorder)
    act(http, portal, "install-finished")

    opened = act(http, portal, "open", {"user_id": "2", "lang": "ru"}).json()
    action = urlsplit(opened["action"])
    query = parse_qs(action.query)
    assert f"http://{action.netloc}{action.path}" == recorder.url + "placement/"
    assert query["v"] == ["2"]  # the handler's own query string is kept
    assert query["LANG"] == ["ru"] and query["DOMAIN"] == [portal.domain]
    assert opened["fields"]["PLACEMENT"] == "CONTACT_CENTER"
    assert json.loads(opened["fields"]["PLACEMENT_OPTIONS"])["ID"] == "1"
    assert opened["init"]["IS_ADMIN"] is False and opened["user"] == "2" and opened["init"]["INSTALL"] is False
    assert opened["init"]["PLACEMENT_OPTIONS"] == {"ID": "1", "URI": "/contact_center/"}
    token = opened["fields"]["AUTH_ID"]
    me = http.post(portal.client_endpoint + "user.current.json", data={"auth": token}, timeout=5).json()
    assert me["result"]["ID"] == "2"


def test_uninstall_sends_onappuninstall_with_the_application_token(http, standin, pages, portal):
    recorder = standin.add_recorder()
    act(http, portal, "install", {"user_id": "1", "lang": "en"})
    play_the_app(http, portal, recorder)
    act(http, portal, "install-finished")
    application_token = portal.application_token

    delivered = act(http, portal, "uninstall", {"clean": True}).json()["deliveries"]

    assert [(d["event"], d["handler"]) for d in delivered] == [("ONAPPUNINSTALL", recorder.url + "events/")]
    form = {k: v[0] for k, v in parse_qs(recorder.requests[-1]["body"]).items()}
    assert form["event"] == "ONAPPUNINSTALL" and form["data[CLEAN]"] == "1"
    assert form["auth[application_token]"] == application_token
    seen = state(http, portal)
    assert seen["appState"] == "uninstalled" and seen["squares"] == []
    assert act(http, portal, "uninstall").status_code == 409
    assert act(http, portal, "open", {"user_id": "1"}).status_code == 409
    # A square left over in an old tab still posts to the handler the app had bound.
    stale = act(http, portal, "open", {"user_id": "1", "stale": True}).json()
    assert stale["action"].startswith(recorder.url + "placement/?v=2&")


def test_only_the_page_itself_may_act(http, pages, portal):
    assert act(http, portal, "install", {"user_id": "1"}, Origin="http://evil.test").status_code == 403
    form = http.post(f"http://{portal.domain}/sandbox/api/install", data={"user_id": "1"}, timeout=5)
    assert form.status_code == 415  # a cross-site form cannot send JSON without a preflight
    assert http.get(f"http://{portal.domain}/sandbox/api/install", timeout=5).status_code == 405
    assert act(http, portal, "install", {"user_id": "99"}).json()["error"] == "no_such_user"
    assert act(http, portal, "install", {"lang": "fr"}).json()["error"] == "no_such_language"
    assert act(http, portal, "install", {"user_id": "1"}, Host="attacker.test").status_code == 403
    assert act(http, portal, "no-such-action").status_code == 404
    assert not portal.installed


# --- the Open Lines pages (sandbox/openlines_pages.py) ---------------------------------------------------
def test_openlines_pages_and_script_are_served(http, pages, portal):
    for path, marker in (("/sandbox/openlines/", 'data-page="desk"'), ("/sandbox/customer/", 'data-page="customer"')):
        answer = http.get(f"http://{portal.domain}{path}", timeout=5)
        assert answer.status_code == 200 and marker in answer.text and portal.domain in answer.text
    assert (
        http.get(f"http://{portal.domain}/sandbox/openlines.js", timeout=5)
        .headers["Content-Type"]
        .startswith("text/javascript")
    )
    empty = http.get(f"http://{portal.domain}/sandbox/api/openlines-state", timeout=5).json()
    assert empty == {"chats": [], "webhooks": [], "webhookUrl": f"http://{portal.domain}/sandbox/webhook/"}


def test_the_webhook_receiver_records_what_it_is_sent(http, pages, portal):
    answer = http.post(
        f"http://{portal.domain}/sandbox/webhook/",
        json={"event": "message.add"},
        timeout=5,
        headers={"X-B24Widget-Signature": "sha256=00"},
    )
    assert answer.status_code == 200
    assert (
        http.post(
            f"http://{portal.domain}/sandbox/webhook/",
            data=b"{not json",
            timeout=5,
            headers={"Content-Type": "application/json"},
        ).status_code
        == 400
    )
    hooks = http.get(f"http://{portal.domain}/sandbox/api/openlines-state", timeout=5).json()["webhooks"]
    assert [(h["payload"], h["signed"]) for h in hooks] == [({"event": "message.add"}, True)]


def test_the_customer_page_posts_only_to_the_apps_channel_endpoint(http, pages, portal):
    answer = act(
        http,
        portal,
        "customer-send",
        {"endpoint": "http://169.254.169.254/channels/x/messages", "secret": "s", "text": "hi"},
    )
    assert answer.status_code == 400 and answer.json()["error"] == "bad_endpoint"
    # The app at APP_URL does not listen: a clear 502, not a hang or a 500.
    down = act(
        http, portal, "customer-send", {"endpoint": f"{APP_URL}/channels/x/messages", "secret": "s", "text": "hi"}
    )
    assert down.status_code == 502 and down.json()["error"] == "app_unreachable"


def test_operator_reply_and_connector_tile_refusals(http, pages, portal):
    assert act(http, portal, "operator-reply", {"chat_id": "999", "text": "hi"}).json()["error"] == "no_such_chat"
    assert act(http, portal, "operator-reply", {"chat_id": "1", "text": ""}).json()["error"] == "bad_text"
    refused = act(http, portal, "open-connector", {"connector": "nothing", "line": "1"})
    assert refused.status_code == 409 and refused.json()["error"] == "no_connector"
    assert state(http, portal)["connectorTiles"] == []


def _installed(http, portal, recorder):
    act(http, portal, "install", {"user_id": "1"})
    play_the_app(http, portal, recorder)
    act(http, portal, "install-finished")
    return portal.issue_tokens("1")["access_token"]


def test_any_placement_the_app_binds_is_listed_and_opens_without_a_change_here(http, standin, pages, portal):
    """The page lists what the portal has bound (placement.bind), not a list of its own: a placement an app adds
    (placements.registry.register) opens here as soon as its install step binds it."""
    recorder = standin.add_recorder()
    token = _installed(http, portal, recorder)
    assert state(http, portal)["placements"] == []  # the square is the Contact Center's, not listed again
    bound = http.post(
        portal.client_endpoint + "placement.bind.json",
        timeout=5,
        data={
            "auth": token,
            "PLACEMENT": "CRM_DEAL_DETAIL_TAB",
            "HANDLER": recorder.url + "placement/",
            "TITLE": "Deal tab",
            "LANG_ALL[ru][TITLE]": "Вкладка сделки",
        },
    ).json()
    assert bound["result"] is True
    [listed] = state(http, portal, lang="ru")["placements"]
    assert (listed["placement"], listed["title"], listed["handler"]) == (
        "CRM_DEAL_DETAIL_TAB",
        "Вкладка сделки",
        recorder.url + "placement/",
    )
    opened = act(http, portal, "open", {"user_id": "2", "placement_id": listed["id"], "options": {"ID": "42"}})
    assert opened.status_code == 200
    frame = opened.json()
    assert urlsplit(frame["action"]).path == "/placement/"
    assert frame["fields"]["PLACEMENT"] == "CRM_DEAL_DETAIL_TAB"
    assert json.loads(frame["fields"]["PLACEMENT_OPTIONS"]) == {"ID": "42"}
    assert frame["init"]["PLACEMENT"] == "CRM_DEAL_DETAIL_TAB" and frame["init"]["IS_ADMIN"] is False
    refused = act(http, portal, "open", {"placement_id": listed["id"], "options": ["not", "an", "object"]})
    assert refused.status_code == 400 and refused.json()["error"] == "bad_options"
    assert act(http, portal, "open", {"placement_id": "999"}).json()["error"] == "no_placement"


def test_connector_tiles_carry_the_icon_the_app_registered(http, standin, pages, portal):
    recorder = standin.add_recorder()
    token = _installed(http, portal, recorder)

    def rest(method, **params):
        return http.post(f"{portal.client_endpoint}{method}.json", json={"auth": token, **params}, timeout=5).json()

    on, off = "data:image/svg+xml,%3Csvg%2F%3E", "data:image/svg+xml,%3Csvg%20%2F%3E"
    registered = rest(
        "imconnector.register",
        ID="mine",
        NAME="Mine",
        ICON={"DATA_IMAGE": on, "COLOR": "#2fc6f6", "SIZE": "90%"},
        ICON_DISABLED={"DATA_IMAGE": off, "COLOR": "javascript:1"},
        PLACEMENT_HANDLER=recorder.url + "placement/",
    )
    assert registered["result"]["result"] is True
    assert rest("imconnector.activate", CONNECTOR="mine", LINE="1", ACTIVE="1")["result"] is True
    tiles = {tile["line"]: tile["icon"] for tile in state(http, portal)["connectorTiles"]}
    # The active line shows ICON, the others ICON_DISABLED; only image data URIs and colours pass.
    assert tiles["1"] == {"image": on, "color": "#2fc6f6", "size": "90%"}
    assert tiles["2"] == {"image": off, "color": "", "size": ""}
    rest(
        "imconnector.register",
        ID="mine",
        NAME="Mine",
        ICON={"DATA_IMAGE": "javascript:alert(1)"},
        PLACEMENT_HANDLER=recorder.url + "placement/",
    )
    assert state(http, portal)["connectorTiles"][0]["icon"]["image"] == ""


def test_the_desk_state_names_authors_and_times(http, standin, pages, portal):
    from sandbox.standin import rest_imconnector as imc

    recorder = standin.add_recorder()
    token = _installed(http, portal, recorder)

    def rest(method, **params):
        return http.post(f"{portal.client_endpoint}{method}.json", json={"auth": token, **params}, timeout=5).json()

    rest(
        "imconnector.register",
        ID="mine",
        NAME="Mine",
        ICON={"DATA_IMAGE": "data:image/svg+xml,x"},
        PLACEMENT_HANDLER=recorder.url + "placement/",
    )
    rest("imconnector.activate", CONNECTOR="mine", LINE="1", ACTIVE="1")
    sent = rest(
        "imconnector.send.messages",
        CONNECTOR="mine",
        LINE="1",
        MESSAGES=[{"user": {"id": "u1", "name": "Ann"}, "message": {"id": "m1", "text": "Hi"}, "chat": {"id": "c1"}}],
    )
    chat_id = int(sent["result"]["DATA"]["RESULT"][0]["session"]["CHAT_ID"])
    imc.operator_reply(portal, chat_id, "Hello", handlers=[])
    imc.system_message(portal, chat_id, "A new lead has been created")
    [chat] = http.get(f"http://{portal.domain}/sandbox/api/openlines-state", timeout=5).json()["chats"]
    assert chat["line_name"] == "Website chat"
    assert [(m["author"], m["outside"], m["system"]) for m in chat["messages"]] == [
        ("Ann", True, False),
        ("Anna Admin", False, False),
        ("", False, True),
    ]
    assert all(isinstance(m["at"], float) for m in chat["messages"])
