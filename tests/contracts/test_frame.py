"""Frame contract: what a portal posts into the app's frame, who may install, and the reload after installFinish.

Doc paths: api-reference/widgets/_includes/widget_data.md (fields, query vs body), settings/oauth/simple-way.md
(install POST, APPLICATION_TOKEN), settings/app-installation/installation-finish.md (administrators only,
"not fully installed"), sdk/bx24-js-sdk/system-functions/bx24-install-finish.md (reload into the app).
"""

import pytest
import requests
from b24pysdk.credentials import OAuthPlacementData

from sandbox.pages import SandboxPages
from sandbox.standin import NOT_FULLY_INSTALLED, NotAdministrator, StandIn, frame_query_and_body


def test_install_post_fields_and_split(tls_standin):
    """simple-way.md: DOMAIN, PROTOCOL, LANG, APP_SID in the query; AUTH_ID ... PLACEMENT=DEFAULT in the body."""
    portal = tls_standin.add_portal()
    fields = portal.install_post(user_id="1", lang="de")
    query, body = frame_query_and_body(fields)
    assert set(query) == {"DOMAIN", "PROTOCOL", "LANG", "APP_SID"}
    assert {
        "AUTH_ID",
        "AUTH_EXPIRES",
        "REFRESH_ID",
        "SERVER_ENDPOINT",
        "APPLICATION_TOKEN",
        "APPLICATION_SCOPE",
        "member_id",
        "status",
        "PLACEMENT",
    } <= set(body)
    data = OAuthPlacementData.from_dict(fields)
    assert data.placement == "DEFAULT" and data.lang == "de" and data.member_id == portal.member_id
    # The install POST's APPLICATION_TOKEN is the value ONAPPINSTALL then carries.
    assert portal.event_payload("ONAPPINSTALL")["auth[application_token]"] == fields["APPLICATION_TOKEN"]


def test_app_sid_is_new_each_render(tls_standin):
    """widget_data.md: "Bitrix24 generates a new one each time the widget is rendered"."""
    portal = tls_standin.add_portal()
    assert portal.placement_post()["APP_SID"] != portal.placement_post()["APP_SID"]


def test_only_an_administrator_installs(tls_standin):
    """installation-finish.md: regular users see "The application is not fully installed yet..."."""
    portal = tls_standin.add_portal()
    with pytest.raises(NotAdministrator) as info:
        portal.install_post(user_id="2")
    assert str(info.value) == NOT_FULLY_INSTALLED and not portal.installed


@pytest.fixture
def sandbox_portal():
    with StandIn("app.sandbox.contract", "secret") as standin:
        SandboxPages(standin, app_url="http://localhost:9").attach()
        yield standin.add_portal()


def _act(portal, action, body):
    with requests.Session() as http:
        http.trust_env = False
        return http.post(
            f"http://{portal.domain}/sandbox/api/{action}",
            json=body,
            timeout=5,
            headers={"Origin": f"http://{portal.domain}"},
        )


def test_the_portal_page_refuses_a_non_administrators_install(sandbox_portal):
    """installation-finish.md: the installer is shown to administrators only."""
    answer = _act(sandbox_portal, "install", {"user_id": "2"})
    assert (answer.status_code, answer.json()["error_description"]) == (403, NOT_FULLY_INSTALLED)


def test_install_finish_reloads_into_the_app(sandbox_portal):
    """bx24-install-finish.md: "the page will reload and the application will launch" (PLACEMENT=DEFAULT)."""
    assert _act(sandbox_portal, "install", {"user_id": "1", "lang": "en"}).status_code == 200
    finished = _act(sandbox_portal, "install-finished", {"user_id": "1", "lang": "en"}).json()
    assert finished["installFinished"] is True and sandbox_portal.install_finished
    reload = finished["reload"]
    assert reload["action"].startswith("http://localhost:9/placement/?")
    assert reload["fields"]["PLACEMENT"] == "DEFAULT" and reload["init"]["PLACEMENT"] == "DEFAULT"


VENDORED = "/static/b24widget/vendor/b24jssdk-2.2.0/"


def test_the_official_frame_library_is_served_by_the_app_with_long_caching(client, settings):
    """The pages load @bitrix24/b24jssdk's UMD build from the app itself (WhiteNoise), never a third-party host."""
    assert settings.DEBUG is False
    script = client.get(VENDORED + "b24jssdk.umd.min.js")
    assert script.status_code == 200 and script["Content-Type"].startswith("text/javascript")
    assert "immutable" in script["Cache-Control"] and "max-age=315360000" in script["Cache-Control"]
    head = b"".join(script.streaming_content)[:400]
    assert b"@package @bitrix24/b24jssdk" in head and b"@version 2.2.0" in head and b"@license MIT" in head
    licence = client.get(VENDORED + "LICENSE")
    assert licence.status_code == 200 and b"MIT License" in b"".join(licence.streaming_content)
    # Our own frame code is not immutable: its URL does not change with its content.
    assert "immutable" not in client.get("/static/b24widget/frame.js")["Cache-Control"]
