"""What the stand-in adds for the human sandbox: fixed ports, event delivery, a saved state, a web hook."""

import json
import os
import stat
from urllib.parse import parse_qs

import pytest

from sandbox.standin import StandIn
from tests.sandbox.conftest import CLIENT_ID, CLIENT_SECRET, call, refresh


def bind_event(http, portal, event, handler):
    token = portal.issue_tokens("1")["access_token"]
    assert call(http, portal, "event.bind", token, event=event, handler=handler).json()["result"] is True


# --- event delivery -------------------------------------------------------------------------------


def test_events_go_form_encoded_to_the_handlers_bound_with_event_bind(http, standin):
    portal = standin.add_portal()
    recorder = standin.add_recorder()
    portal.install_post()
    bind_event(http, portal, "ONAPPINSTALL", recorder.url + "events/?app=1")
    bind_event(http, portal, "ONAPPUNINSTALL", recorder.url + "other/")
    # settings/app-installation/installation-finish.md: no event before installFinish.
    assert portal.deliver_event("ONAPPINSTALL") == [] and recorder.requests == []
    portal.finish_install()

    delivered = portal.deliver_event("ONAPPINSTALL")

    assert [(d["event"], d["handler"], d["status"], d["member_id"]) for d in delivered] == [
        ("ONAPPINSTALL", recorder.url + "events/?app=1", 404, portal.member_id)
    ]
    assert standin.event_deliveries == delivered
    [request] = recorder.requests
    assert (request["http_method"], request["path"], request["query"]) == ("POST", "/events/", "app=1")
    assert request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    form = {k: v[0] for k, v in parse_qs(request["body"]).items()}
    assert form["event"] == "ONAPPINSTALL" and form["data[INSTALLED]"] == "Y"
    assert form["auth[application_token]"] == portal.application_token
    assert form["auth[member_id]"] == portal.member_id
    # on-app-install.md marks access_token and refresh_token required.
    assert form["auth[access_token]"] and form["auth[refresh_token]"]


def test_deliver_event_payload_options_and_explicit_handlers(standin):
    portal = standin.add_portal()
    recorder = standin.add_recorder()
    assert portal.deliver_event("ONAPPUNINSTALL") == []  # nothing bound: nothing sent
    portal.deliver_event("ONAPPUNINSTALL", handlers=[recorder.url], data={"CLEAN": "1"})
    form = {k: v[0] for k, v in parse_qs(recorder.requests[0]["body"]).items()}
    assert form["event"] == "ONAPPUNINSTALL" and form["data[CLEAN]"] == "1"
    assert "auth[access_token]" not in form


def test_deliver_event_reports_unreachable_handlers_and_does_not_follow_redirects(standin):
    portal = standin.add_portal()
    portal.install_post()
    portal.finish_install()
    recorder = standin.add_recorder()
    old = portal.domain
    portal.rename()  # the old address now answers 302
    closed = StandIn(CLIENT_ID, CLIENT_SECRET).start()
    gone = closed.address
    closed.stop()
    delivered = portal.deliver_event("ONAPPINSTALL", handlers=[f"http://{old}/events/", f"http://{gone}/x/"], timeout=2)
    assert delivered[0]["status"] == 302 and delivered[0]["error"] == ""
    assert delivered[1]["status"] is None and delivered[1]["error"]
    assert recorder.requests == []


# --- fixed ports and the saved state --------------------------------------------------------------


def test_state_file_keeps_portal_bindings_and_tokens_across_a_restart(http, tmp_path):
    path = tmp_path / "state.json"
    first = StandIn(CLIENT_ID, CLIENT_SECRET).start()
    try:
        first.state_file = path
        portal = first.add_portal()
        fields = portal.install_post(user_id="1", lang="de")
        bind_event(http, portal, "ONAPPINSTALL", "http://app.test/events/")
        portal.finish_install()
        grant = refresh(http, first, fields["REFRESH_ID"], post=True).json()  # the app's tokens, after its refresh
        member_id, address, application_token = portal.member_id, portal.domain, portal.application_token
    finally:
        first.stop()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it holds tokens

    second = StandIn(CLIENT_ID, CLIENT_SECRET).start()
    try:
        [restored] = second.restore_state(StandIn.read_state_file(path))
        assert (restored.member_id, restored.domain, restored.application_token) == (
            member_id,
            address,
            application_token,
        )
        assert restored.installed and restored.install_finished
        assert [b["handler"] for b in restored.bindings["events"]] == ["http://app.test/events/"]
        assert call(http, restored, "app.info", grant["access_token"]).json()["result"]["INSTALLED"] is True
        again = refresh(http, second, grant["refresh_token"], post=True)
        assert again.status_code == 200 and again.json()["member_id"] == member_id
        # A spent refresh token stays spent.
        assert refresh(http, second, fields["REFRESH_ID"], post=True).json()["error"] == "invalid_grant"
        # New bindings get new ids after the restored ones.
        bind_event(http, restored, "ONAPPUNINSTALL", "http://app.test/events/")
        ids = [b["id"] for b in restored.bindings["events"]]
        assert len(set(ids)) == 2
    finally:
        second.stop()


def test_state_keeps_the_open_lines_connectors_lines_and_conversations(http, tmp_path):
    """A sandbox restart keeps what the portal's Open Lines hold: the registered connector, the active
    line, each chat with its messages (and delivery marks); new ids follow the restored ones."""
    from sandbox.standin import rest_imconnector as imc

    with StandIn(CLIENT_ID, CLIENT_SECRET) as first:
        portal = first.add_portal()
        token = portal.issue_tokens("1")["access_token"]

        def rest(method, **params):
            return http.post(
                f"{portal.client_endpoint}{method}.json",
                json={"auth": token, **params},
                timeout=5,
            ).json()

        assert (
            rest(
                "imconnector.register",
                ID="myconnector",
                NAME="Mine",
                ICON={"DATA_IMAGE": "data:x"},
                PLACEMENT_HANDLER="https://app.test/placement/",
            )["result"]["result"]
            is True
        )
        assert rest("imconnector.activate", CONNECTOR="myconnector", LINE="1", ACTIVE="1")["result"] is True
        assert (
            rest(
                "imconnector.connector.data.set",
                CONNECTOR="myconnector",
                LINE="1",
                DATA={"ID": "ch1", "URL": "https://app.test/channels/ch1/", "NAME": "Site"},
            )["result"]
            is True
        )
        sent = rest(
            "imconnector.send.messages",
            CONNECTOR="myconnector",
            LINE="1",
            MESSAGES=[
                {"user": {"id": "u1", "name": "Ann"}, "message": {"id": "m1", "text": "Hi"}, "chat": {"id": "c1"}}
            ],
        )
        chat_id = int(sent["result"]["DATA"]["RESULT"][0]["session"]["CHAT_ID"])
        reply, _ = imc.operator_reply(portal, chat_id, "Hello")
        state = json.loads(json.dumps(first.state_snapshot()))  # what the state file holds
        before = imc.conversations(portal)
    with StandIn(CLIENT_ID, CLIENT_SECRET) as second:
        [restored] = second.restore_state(state, ports={portal.member_id: 0})
        assert imc.conversations(restored) == before
        token = restored.issue_tokens("1")["access_token"]

        def rest(method, **params):
            return http.post(
                f"{restored.client_endpoint}{method}.json",
                json={"auth": token, **params},
                timeout=5,
            ).json()

        assert rest("imconnector.status", CONNECTOR="myconnector", LINE="1")["result"]["STATUS"] is True
        history = rest("imopenlines.session.history.get", CHAT_ID=chat_id)["result"]
        assert [m["text"] for m in history["message"].values()] == ["Hi", "Hello"]
        newer, _ = imc.operator_reply(restored, chat_id, "Still here")
        assert newer > reply


def test_restore_on_another_port_is_a_rename_the_oauth_server_reports(http, tmp_path):
    with StandIn(CLIENT_ID, CLIENT_SECRET) as first:
        portal = first.add_portal()
        tokens = portal.issue_tokens()
        state = first.state_snapshot()
    with StandIn(CLIENT_ID, CLIENT_SECRET) as second:
        [restored] = second.restore_state(state, ports={portal.member_id: 0})
        body = refresh(http, second, tokens["refresh_token"], post=True).json()
        assert body["client_endpoint"] == restored.client_endpoint == f"http://{restored.domain}/rest/"


def test_restore_refuses_what_is_not_a_state(standin):
    with pytest.raises(ValueError):
        standin.restore_state({"version": 999, "portals": []})
    assert StandIn.read_state_file("/nonexistent/state.json") is None


def test_fixed_ports(http):
    with StandIn(CLIENT_ID, CLIENT_SECRET) as probe:
        taken = probe.add_portal()
        port = int(taken.domain.rsplit(":", 1)[1])
        with pytest.raises(OSError):
            probe.add_portal(port=port)  # in use
        assert probe.portals == [taken]
    with StandIn(CLIENT_ID, CLIENT_SECRET, port=port) as standin:  # free again
        assert standin.address == f"127.0.0.1:{port}"


# --- the web hook -----------------------------------------------------------------------------------


class _Web:
    def handle_server(self, request):
        if request.path == "/page":
            return 200, [("Content-Type", "text/plain")], b"server page"
        return None

    def handle_portal(self, portal, request):
        if request.path == "/":
            return 200, [("Content-Type", "text/plain")], f"portal {portal.member_id}".encode()
        return None


@pytest.mark.slow  # over 1.5 s
def test_web_hook_serves_pages_beside_the_apis(http, standin):
    portal = standin.add_portal()
    assert http.get(f"http://{portal.domain}/", timeout=5).status_code == 404
    standin.web = _Web()
    assert http.get(f"http://{portal.domain}/", timeout=5).text == f"portal {portal.member_id}"
    assert http.get(f"http://{standin.address}/page", timeout=5).text == "server page"
    assert http.get(f"http://{portal.domain}/other", timeout=5).status_code == 404
    token = portal.issue_tokens()["access_token"]
    assert call(http, portal, "server.time", token).status_code == 200  # the APIs are untouched
    assert refresh(http, standin, portal.issue_tokens()["refresh_token"], post=True).status_code == 200
