"""Helpers of the channel tests: SETTING_CONNECTOR opened as Bitrix24 opens it, a connected channel, signed
inbound requests, and a local webhook receiver (a real HTTP server) that can be switched down and up."""

import json
import threading
import time

import pytest

from openlines import registry
from openlines.outbound import INBOUND, sign, sign_v1
from tests.helpers import QuietHandler, start_server, stop_server
from tests.placements.frames import widget_token_of

CONNECTOR = registry.HTTP.id


def setting_connector_post(b24, *, line="1", user_id="1", **state):
    options = {
        "CONNECTOR": CONNECTOR,
        "LINE": line,
        "STATUS": False,
        "ACTIVE_STATUS": False,
        "CONNECTION_STATUS": False,
        "REGISTER_STATUS": False,
        "ERROR_STATUS": False,
        "URI": f"/contact_center/connector/?ID={CONNECTOR}",
        **state,
    }
    return b24.placement_post(user_id=user_id, placement="SETTING_CONNECTOR", options=options)


def open_settings(frame, b24, **kwargs):
    fields = setting_connector_post(b24, **kwargs)
    response = frame.post("/placement/", fields)
    return response, fields["AUTH_ID"]


def act(frame, b24, action, *, line="1", user_id="1", auth_id=None, **fields):
    """Open the settings page as that user, then post the action with the page's token and AUTH_ID."""
    response, page_auth = open_settings(frame, b24, line=line, user_id=user_id)
    assert response.status_code == 200, response.content[:300]
    data = {
        "widget_token": widget_token_of(response),
        "AUTH_ID": page_auth if auth_id is None else auth_id,
        "action": action,
        "connector": CONNECTOR,
        "line": line,
        "LANG": "en",
        **fields,
    }
    return frame.post("/openlines/connector/", data)


class Receiver:
    """The outside system's webhook endpoint: records each POST it takes (`got`) and each it was sent
    (`tried`); `down` answers 503. `answer(body)` may script the answer to a POST: None (the usual 200
    with a small JSON body) or (status, body bytes[, headers[, seconds between bytes]]), a trickle when
    the last is given; `delay` waits that long before answering; `during(body)` runs while a POST waits."""

    def __init__(self):
        self.got, self.tried, self.down, self.lock = [], [], False, threading.Lock()
        self.answer, self.delay, self.during = None, 0.0, None
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802
                body = self.body()
                data = json.loads(body)
                with receiver.lock:
                    receiver.tried.append(data)
                if receiver.during:
                    receiver.during(data)
                if receiver.delay:
                    time.sleep(receiver.delay)
                if receiver.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                status, payload, headers, pause = 200, b'{"ok":true}', {}, None
                scripted = receiver.answer(data) if receiver.answer else None
                if scripted:
                    status, payload, headers, pause = (*scripted, {}, None)[:4]
                if 200 <= status < 300:
                    with receiver.lock:
                        receiver.got.append({"headers": dict(self.headers), "body": body, "json": data})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    if pause is None:
                        self.wfile.write(payload)
                        return
                    for i in range(len(payload)):
                        self.wfile.write(payload[i : i + 1])
                        self.wfile.flush()
                        time.sleep(pause)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the app stopped reading, as it may

        self.server = start_server(Handler)
        self.url = f"{self.server.url}/hook"

    def texts(self):
        """The texts of the messages taken, in the order they came."""
        return [h["json"]["message"]["text"] for h in self.got]

    def close(self):
        stop_server(self.server)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def channel(frame, installed, receiver):
    """(channel row, its secret, stand-in portal) connected on line 1 with the receiver as webhook."""
    from openlines.models import Channel

    portal, b24 = installed
    answer = act(frame, b24, "connect", webhook_url=receiver.url, name="Site chat")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    return Channel.objects.get(public_id=body["channel"]["id"]), body["secret"], b24


def signed(client, channel, secret, payload, *, timestamp=None, signature=None, version=2):
    """POST `payload` to the channel signed as the outside system does (version 2; `version=1`: the old way)."""
    body = json.dumps(payload).encode()
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    made = sign(secret, timestamp, body, INBOUND) if version == 2 else sign_v1(secret, timestamp, body)
    headers = {
        "HTTP_X_B24WIDGET_TIMESTAMP": timestamp,
        "HTTP_X_B24WIDGET_SIGNATURE": signature or made,
    }
    if version == 2:
        headers["HTTP_X_B24WIDGET_SIGNATURE_VERSION"] = "2"
    return client.post(f"/channels/{channel.public_id}/messages", body, content_type="application/json", **headers)


def message(mid="m1", text="Hello", chat="chat-1", user="u-1", **extra):
    return {
        "chat": {"id": chat, "name": "Website"},
        "user": {"id": user, "name": "Ann", "last_name": "Lee"},
        "message": {"id": mid, "text": text, "date": int(time.time())},
        **extra,
    }


def kept_for_the_sweep(client, channel, settings, capture, message_id: str) -> None:
    """A customer message sent while the broker takes no task (refusing or frozen): answered 202 (the broker's
    failure is not the customer's) and stored with no task waiting for it (the channel's mark given back); once
    the broker is back the sweep sends it, once."""
    from openlines import tasks
    from openlines.models import Channel, Delivery, InboundMessage
    from sandbox.standin import rest_imconnector as imc

    row, secret, b24 = channel
    settings.OPENLINES_TASKS_INLINE = False  # the request sends its task through the broker
    with capture(execute=True):
        answer = signed(client, row, secret, message(message_id, "Anyone there?", chat=f"chat-{message_id}"))
    assert answer.status_code == 202, answer.content
    stored = InboundMessage.objects.get(channel=row, external_message_id=message_id)
    assert stored.state != Delivery.SENT
    assert Channel.objects.get(pk=row.pk).inbound_queued_at is None  # no task waits for it: the sweep's to send

    settings.OPENLINES_TASKS_INLINE = True  # the broker back (tasks run here, as one worker would)
    tasks.sweep()
    stored.refresh_from_db()
    assert stored.state == Delivery.SENT
    texts = [m["text"] for c in imc.conversations(b24) for m in c["messages"]]
    assert texts.count("Anyone there?") == 1


class EventSink:
    """Where the stand-in posts connector events in these tests: it keeps each form body, as the inbox
    would store it (inbox.parsing parses the PHP-style keys the same way)."""

    def __init__(self):
        from urllib.parse import parse_qsl

        sink = self
        self.got = []

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802
                sink.got.append(parse_qsl(self.body().decode(), keep_blank_values=True))
                self.send_response(200)
                self.end_headers()

        self.server = start_server(Handler)
        self.url = f"{self.server.url}/events/"

    def relay(self, client):
        """Hand what Bitrix24 sent to our /events/, as it would, and let a worker process the inbox;
        returns each stored event's outcome (or its state and error when it did not end `done`)."""
        from urllib.parse import urlencode

        from django.db import connection

        from inbox.models import InboxItem
        from tests.conftest import deliver

        out = []
        for pairs in self.got:
            before = len(connection.run_on_commit)
            response, item = deliver(client, urlencode(pairs), content_type="application/x-www-form-urlencoded")
            # No broker in these tests: deliver() processed the inbox here, so the inbox's own send after
            # commit is dropped (a publish would leave this process's Celery producer pool on the test
            # broker); the channel's tasks the handler queued stay and run inline (OPENLINES_TASKS_INLINE).
            connection.run_on_commit[before:] = [
                entry for entry in connection.run_on_commit[before:] if entry[1].__module__ != "inbox.queue"
            ]
            assert response.status_code == 200, response.content
            out.append(item.outcome if item.state == InboxItem.State.DONE else f"{item.state}: {item.last_error}")
        self.got = []
        return out

    def close(self):
        stop_server(self.server)


class Item:
    """The handler's view of an inbox row (inbox/queue.py InboxItem: portal, event, data)."""

    def __init__(self, *, portal, event, data):
        self.portal, self.event, self.data = portal, event, data


@pytest.fixture
def sink():
    s = EventSink()
    yield s
    s.close()


def visible_ids(page: str) -> set:
    """The ids of the page's elements that show: none inside an element marked `hidden` (as a browser does)."""
    from html.parser import HTMLParser

    void = {"input", "br", "img", "meta", "link", "hr"}

    class Walk(HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack, self.ids = [], set()

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            hidden = "hidden" in attrs or any(self.stack)
            if attrs.get("id") and not hidden:
                self.ids.add(attrs["id"])
            if tag not in void:
                self.stack.append(hidden)

        def handle_endtag(self, tag):
            if tag not in void and self.stack:
                self.stack.pop()

    walk = Walk()
    walk.feed(page)
    return walk.ids
