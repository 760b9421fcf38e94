"""Offline events in the stand-in, each against its page in bitrix24/b24restdocs (api-reference/events/):
offline-events.md, event-bind.md / event-unbind.md / event-get.md (``event_type=offline``), event-offline-get.md,
event-offline-list.md, event-offline-clear.md, event-offline-error.md, on-offline-event.md (``minTimeout``), and
api-reference/common/system/feature-get.md (``rest_offline_extended``); plus the "app unreachable" switch."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import pytest

from sandbox.standin import StandIn, rest_offline
from sandbox.standin import rest_imconnector as imc
from tests.sandbox.conftest import CLIENT_ID, CLIENT_SECRET
from tests.sandbox.test_standin_imconnector import connect, inbound


class Clock:
    """The stand-in's clock, moved by hand (StandIn.clock): time passes without a wait."""

    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock(standin):
    standin.clock = Clock()
    return standin.clock


@pytest.fixture
def portal(standin):
    portal = standin.add_portal()
    portal.install_post()
    portal.finish_install()
    return portal


@pytest.fixture
def admin(portal):
    return portal.issue_tokens("1")["access_token"]


@pytest.fixture
def user(portal):
    return portal.issue_tokens("2")["access_token"]


class Hook:
    """An event handler on 127.0.0.1 that keeps each form body it is sent."""

    def __init__(self):
        hook, self.got = self, []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                hook.got.append(dict(parse_qsl(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events/"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.server.shutdown()
    h.server.server_close()


def call(http, portal, method, token, **params):
    answer = http.post(f"{portal.client_endpoint}{method}.json", json={"auth": token, **params}, timeout=5)
    return answer.status_code, answer.json()


def result(http, portal, method, token, **params):
    status, body = call(http, portal, method, token, **params)
    assert status == 200, body
    return body["result"]


def bind_offline(http, portal, token, *events):
    for event in events:
        assert result(http, portal, "event.bind", token, event=event, event_type="offline") is True


def a_chat(http, portal, token):
    """A customer wrote on line 1 of a connector: the Open Lines chat id."""
    connect(http, portal, token)
    body = result(
        http, portal, "imconnector.send.messages", token, CONNECTOR="myconnector", LINE="1", MESSAGES=[inbound()]
    )
    return int(body["DATA"]["RESULT"][0]["session"]["CHAT_ID"])


# --- binding ----------------------------------------------------------------------------------------------


def test_offline_binding_is_for_administrators_and_needs_no_handler(http, portal, admin, user):
    """event-bind.md: with event_type=offline no handler; a non-administrator gets 403 ACCESS_DENIED "Access denied!
    Offline events binding requires administrator access rights"; event-unbind.md the same for unbinding."""
    status, body = call(http, portal, "event.bind", user, event="ONCRMDEALUPDATE", event_type="offline")
    assert status == 403 and body["error"] == "ACCESS_DENIED"
    assert body["error_description"] == "Access denied! Offline events binding requires administrator access rights"
    assert result(http, portal, "event.bind", admin, event="ONCRMDEALUPDATE", event_type="offline") is True
    # The online binding of the same event is another binding (a handler is required for it).
    status, body = call(http, portal, "event.bind", admin, event="ONCRMDEALUPDATE")
    assert status == 400 and body["error"] == "ERROR_ARGUMENT"
    listed = result(http, portal, "event.get", admin)
    assert {"event": "ONCRMDEALUPDATE", "handler": "", "auth_type": "0", "offline": 1} in listed
    status, body = call(http, portal, "event.unbind", user, event="ONCRMDEALUPDATE", event_type="offline")
    assert status == 403 and "unbinding requires administrator" in body["error_description"]
    assert result(http, portal, "event.unbind", admin, event="ONCRMDEALUPDATE", event_type="offline") == {"count": 1}
    assert result(http, portal, "event.get", admin) == []


def test_uninstalling_drops_the_offline_bindings_and_the_queue(http, portal, admin):
    """event-bind.md: "When an application is deleted or updated, its [handlers] will be removed"."""
    bind_offline(http, portal, admin, "ONAPPUPDATE")
    portal.deliver_event("ONAPPUPDATE")
    assert len(rest_offline.records(portal)) == 1
    portal.uninstall()
    assert rest_offline.offline_bindings(portal) == [] and rest_offline.records(portal) == []


# --- the queue ---------------------------------------------------------------------------------------------


def test_the_queue_keeps_each_objects_latest_state_and_its_ids_not_every_change(http, portal, admin, clock):
    """offline-events.md: "If the same deal is modified 1000 times, only one record with the timestamp of the last
    change will remain ... This record contains the event name and the identifiers of the modified object"."""
    bind_offline(http, portal, admin, "ONIMCONNECTORMESSAGEADD", "ONIMCONNECTORMESSAGEUPDATE")
    chat = a_chat(http, portal, admin)
    first, _ = imc.operator_reply(portal, chat, "one")
    second, _ = imc.operator_reply(portal, chat, "two")
    imc.operator_edit(portal, chat, first, "one, fixed")
    clock.now += 5
    imc.operator_edit(portal, chat, first, "one, fixed again")

    listed = result(http, portal, "event.offline.list", admin)
    assert [(r["ID"], r["EVENT_NAME"]) for r in listed] == [
        ("1", "ONIMCONNECTORMESSAGEADD"),
        ("2", "ONIMCONNECTORMESSAGEADD"),
        ("3", "ONIMCONNECTORMESSAGEUPDATE"),
    ]
    add, _, update = listed
    assert add["EVENT_DATA"] == {
        "CONNECTOR": "myconnector",
        "LINE": "1",
        "MESSAGES": [{"im": {"chat_id": str(chat), "message_id": str(first)}, "chat": {"id": "c1"}}],
    }  # ids only: no text, no author
    assert update["EVENT_DATA"]["MESSAGES"][0]["im"]["message_id"] == str(first)
    assert update["TIMESTAMP_X"] > add["TIMESTAMP_X"]  # the last change's time
    assert {r["PROCESS_ID"] for r in listed} == {""} and {r["ERROR"] for r in listed} == {"0"}
    assert len({r["MESSAGE_ID"] for r in listed}) == 3 and str(second) in str(listed[1]["EVENT_DATA"])


def test_nothing_is_queued_before_install_finish_or_for_events_not_bound_offline(http, standin):
    """installation-finish.md: nothing is sent before installFinish; the stand-in queues nothing either."""
    portal = standin.add_portal()
    portal.install_post()
    token = portal.issue_tokens("1")["access_token"]
    bind_offline(http, portal, token, "ONAPPUPDATE")
    portal.deliver_event("ONAPPUPDATE")
    portal.finish_install()
    portal.deliver_event("ONAPPINSTALL")
    assert rest_offline.records(portal) == []


def test_get_with_clear_0_reserves_the_batch_under_a_process_id(http, portal, admin):
    """offline-events.md, event-offline-get.md: clear=0 marks the batch with process_id "and hides it from other
    requests"; the same process_id re-selects what it has not cleared; event-offline-clear.md: clear by process
    and id; event-offline-list.md shows PROCESS_ID."""
    bind_offline(http, portal, admin, "ONCRMLEADADD")
    for n in range(3):
        portal.deliver_event("ONCRMLEADADD", data={"FIELDS": {"ID": str(n)}})

    first = result(http, portal, "event.offline.get", admin, clear=0, limit=2)
    process = first["process_id"]
    assert len(process) == 32 and [e["EVENT_DATA"]["FIELDS"]["ID"] for e in first["events"]] == ["0", "1"]
    assert set(first["events"][0]) == {
        "ID",
        "TIMESTAMP_X",
        "EVENT_NAME",
        "EVENT_DATA",
        "EVENT_ADDITIONAL",
        "MESSAGE_ID",
    }
    other = result(http, portal, "event.offline.get", admin, clear=0)
    assert [e["EVENT_DATA"]["FIELDS"]["ID"] for e in other["events"]] == ["2"] and other["process_id"] != process
    listed = result(http, portal, "event.offline.list", admin)
    assert [r["PROCESS_ID"] for r in listed] == [process, process, other["process_id"]]

    again = result(http, portal, "event.offline.get", admin, clear=0, process_id=process)
    assert again["process_id"] == process and [e["ID"] for e in again["events"]] == [e["ID"] for e in first["events"]]
    assert result(http, portal, "event.offline.clear", admin, process_id=process, id=[first["events"][0]["ID"]])
    assert [r["ID"] for r in result(http, portal, "event.offline.list", admin)] == ["2", "3"]
    assert result(http, portal, "event.offline.clear", admin, process_id=process) is True  # the rest of it
    assert [r["ID"] for r in result(http, portal, "event.offline.list", admin)] == ["3"]
    # b24pysdk's tests clear a process nobody started and expect true.
    assert result(http, portal, "event.offline.clear", admin, process_id="nobody") is True


def test_get_without_clear_deletes_what_it_returns(http, portal, admin):
    """event-offline-get.md: clear "Default is 1"; offline-events.md: "returns the first records from the queue and
    immediately deletes them"; the answer's process_id is null then."""
    bind_offline(http, portal, admin, "ONCRMLEADADD")
    portal.deliver_event("ONCRMLEADADD", data={"FIELDS": {"ID": "7"}})
    got = result(http, portal, "event.offline.get", admin)
    assert got["process_id"] is None and [e["EVENT_NAME"] for e in got["events"]] == ["ONCRMLEADADD"]
    assert result(http, portal, "event.offline.list", admin) == []


def test_a_change_to_a_reserved_object_is_a_new_record(http, portal, admin):
    """The stand-in's choice (docs/bitrix24.md, unverified): a reserved record is not updated in place, so a change
    made while the app processes the batch is not cleared with it."""
    bind_offline(http, portal, admin, "ONCRMLEADUPDATE")
    portal.deliver_event("ONCRMLEADUPDATE", data={"FIELDS": {"ID": "9"}})
    process = result(http, portal, "event.offline.get", admin, clear=0)["process_id"]
    portal.deliver_event("ONCRMLEADUPDATE", data={"FIELDS": {"ID": "9"}})
    assert result(http, portal, "event.offline.clear", admin, process_id=process)
    [left] = result(http, portal, "event.offline.list", admin)
    assert left["PROCESS_ID"] == "" and left["EVENT_DATA"] == {"FIELDS": {"ID": "9"}}


def test_filter_and_order(http, portal, admin):
    """event-offline-get.md: "the operation type is placed before the field name in the filter"; order by the
    same fields; event-offline-list.md: default order ID ascending."""
    bind_offline(http, portal, admin, "ONCRMLEADADD", "ONCRMDEALADD")
    for n, event in enumerate(("ONCRMLEADADD", "ONCRMDEALADD", "ONCRMLEADADD")):
        portal.deliver_event(event, data={"FIELDS": {"ID": str(n)}})
    listed = result(
        http, portal, "event.offline.list", admin, filter={"=EVENT_NAME": "ONCRMLEADADD"}, order={"ID": "DESC"}
    )
    assert [r["ID"] for r in listed] == ["3", "1"]
    got = result(http, portal, "event.offline.get", admin, clear=0, filter={">=ID": 2}, order={"ID": "ASC"})
    assert [e["ID"] for e in got["events"]] == ["2", "3"]


def test_errors_are_kept_aside_and_returned_only_with_error_1(http, portal, admin):
    """event-offline-error.md: records marked erroneous by process_id and MESSAGE_ID; event-offline-get.md: error
    "whether to return erroneous records. Default is 0"; event-offline-list.md shows ERROR."""
    bind_offline(http, portal, admin, "ONCRMLEADADD")
    portal.deliver_event("ONCRMLEADADD", data={"FIELDS": {"ID": "1"}})
    portal.deliver_event("ONCRMLEADADD", data={"FIELDS": {"ID": "2"}})
    got = result(http, portal, "event.offline.get", admin, clear=0)
    bad = got["events"][1]["MESSAGE_ID"]
    assert result(http, portal, "event.offline.error", admin, process_id=got["process_id"], message_id=[bad]) is True
    assert result(http, portal, "event.offline.clear", admin, process_id=got["process_id"], id=[got["events"][0]["ID"]])
    assert [r["ERROR"] for r in result(http, portal, "event.offline.list", admin)] == ["1"]
    assert result(http, portal, "event.offline.get", admin, clear=0, process_id=got["process_id"])["events"] == []
    again = result(http, portal, "event.offline.get", admin, clear=0, error=1)
    assert [e["MESSAGE_ID"] for e in again["events"]] == [bad]
    status, body = call(http, portal, "event.offline.clear", admin)
    assert status == 400 and body["error"] == "ERROR_ARGUMENT"


def test_a_reserved_batch_is_deleted_after_30_days(http, portal, admin, clock):
    """offline-events.md: "The reserved batch is stored for up to 30 days and is then automatically deleted"."""
    bind_offline(http, portal, admin, "ONCRMLEADADD")
    portal.deliver_event("ONCRMLEADADD", data={"FIELDS": {"ID": "1"}})
    result(http, portal, "event.offline.get", admin, clear=0)
    clock.now += 29 * 86400
    assert len(result(http, portal, "event.offline.list", admin)) == 1
    clock.now += 2 * 86400
    assert result(http, portal, "event.offline.list", admin) == []


def test_the_queue_methods_are_for_administrators(http, portal, user):
    """event-offline-get.md, -list.md, -clear.md, -error.md: 403 ACCESS_DENIED "Access denied!" for others."""
    for method, params in (
        ("event.offline.get", {}),
        ("event.offline.list", {}),
        ("event.offline.clear", {"process_id": "x"}),
        ("event.offline.error", {"process_id": "x"}),
    ):
        status, body = call(http, portal, method, user, **params)
        assert (status, body["error"], body["error_description"]) == (403, "ACCESS_DENIED", "Access denied!")


def test_the_queue_is_kept_in_the_sandbox_state_file(http, tmp_path):
    """The human sandbox keeps its portal across restarts (StandIn.state_snapshot): the queue too."""
    with StandIn(CLIENT_ID, CLIENT_SECRET) as first:
        portal = first.add_portal()
        portal.install_post()
        portal.finish_install()
        token = portal.issue_tokens("1")["access_token"]
        bind_offline(http, portal, token, "ONCRMLEADADD")
        portal.deliver_event("ONCRMLEADADD", data={"FIELDS": {"ID": "1"}})
        saved = first.state_snapshot()
    with StandIn(CLIENT_ID, CLIENT_SECRET) as second:
        [restored] = second.restore_state(saved, ports={portal.member_id: 0})
        assert [r["EVENT_NAME"] for r in rest_offline.records(restored)] == ["ONCRMLEADADD"]
        assert [b["event"] for b in rest_offline.offline_bindings(restored)] == ["ONCRMLEADADD"]


# --- ONOFFLINEEVENT ------------------------------------------------------------------------------------------


def test_onofflineevent_announces_new_records_at_most_once_per_min_timeout(http, portal, admin, clock, hook):
    """on-offline-event.md: sent online, data empty, auth with tokens; minTimeout (event-bind.md options): "upon
    the first trigger, one notification is sent, and the next will not be sent until the specified number of
    seconds has passed"."""
    bind_offline(http, portal, admin, "ONCRMLEADADD", "ONCRMLEADUPDATE")
    assert result(
        http, portal, "event.bind", admin, event="ONOFFLINEEVENT", handler=hook.url, options={"minTimeout": 60}
    )
    portal.deliver_event("ONCRMLEADADD", data={"FIELDS": {"ID": "1"}})
    portal.deliver_event("ONCRMLEADADD", data={"FIELDS": {"ID": "2"}})  # within the minute: no second one
    clock.now += 61
    portal.deliver_event("ONCRMLEADADD", data={"FIELDS": {"ID": "1"}})  # the same object again: no new record
    portal.deliver_event("ONCRMLEADUPDATE", data={"FIELDS": {"ID": "1"}})
    assert [h["event"] for h in hook.got] == ["ONOFFLINEEVENT", "ONOFFLINEEVENT"]
    note = hook.got[0]
    assert not any(k.startswith("data") for k in note)  # "Arrives empty"
    assert note["auth[member_id]"] == portal.member_id and note["auth[application_token]"] == portal.application_token
    assert note["auth[access_token]"] and note["auth[refresh_token]"]  # the page marks both required


def test_min_timeout_0_sends_one_notification_per_call(http, portal, admin, clock, hook):
    """on-offline-event.md: "0 — within a single call to Bitrix24, only one notification is sent"."""
    bind_offline(http, portal, admin, "ONCRMLEADADD")
    result(http, portal, "event.bind", admin, event="ONOFFLINEEVENT", handler=hook.url, options={"minTimeout": 0})
    for n in range(3):
        portal.deliver_event("ONCRMLEADADD", data={"FIELDS": {"ID": str(n)}})
    assert len(hook.got) == 3


# --- feature.get and the plan -------------------------------------------------------------------------------


def test_feature_get_says_whether_the_plan_has_offline_events(http, portal, admin):
    """feature-get.md: {"value": "Y"|"N"}; CODE_EMPTY (400) without CODE. The stand-in's plan switch
    (Portal.set_feature) turns offline binding and the queue methods away (not documented: how)."""
    assert result(http, portal, "feature.get", admin, CODE="rest_offline_extended") == {"value": "Y"}
    status, body = call(http, portal, "feature.get", admin)
    assert (status, body["error"], body["error_description"]) == (400, "CODE_EMPTY", "CODE can't be empty")
    portal.set_feature("rest_offline_extended", False)
    assert result(http, portal, "feature.get", admin, CODE="rest_offline_extended") == {"value": "N"}
    status, body = call(http, portal, "event.bind", admin, event="ONCRMLEADADD", event_type="offline")
    assert status == 403 and body["error"] == "ACCESS_DENIED"
    assert call(http, portal, "event.offline.get", admin, clear=0)[0] == 403
    assert result(http, portal, "feature.get", admin, CODE="something_else") == {"value": "N"}


# --- the app unreachable --------------------------------------------------------------------------------------


def test_while_the_app_is_unreachable_online_deliveries_fail_and_offline_records_accumulate(http, portal, admin, hook):
    """events/index.md: "If your server does not respond or returns an error ... will not resend the event";
    offline-events.md: the queue keeps the change for the app to fetch."""
    bind_offline(http, portal, admin, "ONIMCONNECTORMESSAGEADD")
    result(http, portal, "event.bind", admin, event="ONIMCONNECTORMESSAGEADD", handler=hook.url)
    result(http, portal, "event.bind", admin, event="ONOFFLINEEVENT", handler=hook.url, options={"minTimeout": 0})
    chat = a_chat(http, portal, admin)
    portal.app_unreachable()
    _id, deliveries = imc.operator_reply(portal, chat, "while you were away")
    assert [(d["event"], d["status"], d["error"]) for d in deliveries] == [
        ("ONIMCONNECTORMESSAGEADD", None, "unreachable: the app is unreachable"),
        ("ONOFFLINEEVENT", None, "unreachable: the app is unreachable"),
    ]
    imc.operator_reply(portal, chat, "and again")
    assert hook.got == [] and len(rest_offline.records(portal)) == 2
    portal.app_unreachable(False)
    _id, deliveries = imc.operator_reply(portal, chat, "back")
    assert [d["status"] for d in deliveries] == [200, 200]
    assert [h["event"] for h in hook.got] == ["ONIMCONNECTORMESSAGEADD", "ONOFFLINEEVENT"]
    assert len(rest_offline.records(portal)) == 3
