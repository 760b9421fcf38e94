"""examples/channel_client.py, the integrator's reference client, against the live channel: it signs and
sends, retries a 429 after Retry-After, and its webhook receiver verifies what the app really sends and
refuses what it did not sign. It must stay an outsider: standard library and requests only."""

import ast
import gc
import hashlib
import hmac
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIResponse, RequestsOpenAPIWebhookRequest

from sandbox.standin import rest_imconnector as imc
from tests.contracts.live_channel import connect_live

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "channel_client.py"


def _load():
    spec = importlib.util.spec_from_file_location("channel_client", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cc = _load()


class Inbox:
    """The outside system's store behind the example's webhook app: each verified event, and its own id."""

    def __init__(self):
        self.events, self.lock = [], threading.Lock()

    def __call__(self, event):
        with self.lock:
            self.events.append(event)
            return f"ext-{len(self.events)}"


@pytest.fixture
def example_webhook():
    """The example's receiver (cc.serve, wsgiref) on a free port; its secret is set once the line is
    connected (`hook.secret`), as an integrator pastes the secret shown on Connect."""
    store = Inbox()

    class Hook:
        secret = ""
        inbox = store

    def app(environ, start_response):
        return cc.webhook_app(Hook.secret, store)(environ, start_response)

    server = cc.make_server("127.0.0.1", 0, app)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    Hook.url = f"http://127.0.0.1:{server.server_port}/b24-webhook"
    yield Hook
    server.shutdown()
    server.server_close()


@pytest.fixture
def clients():
    """Closes each ChannelClient given to it after the test: a kept-alive connection to the live server keeps
    a server thread, and its database connection, open past the test (PostgreSQL then cannot drop the test
    database). A response still referenced (by the traceback of a ChannelError the test caught) keeps its
    socket open even after the session's close, so the garbage is collected too."""
    made = []

    def keep(client):
        made.append(client)
        return client

    yield keep
    for client in made:
        client.close()
    made.clear()
    gc.collect()


@pytest.fixture
def live(live_server, settings, monkeypatch, standin, client, frame, example_webhook):
    channel = connect_live(live_server, settings, monkeypatch, standin, client, frame, example_webhook.url)
    example_webhook.secret = channel.secret
    return channel


def test_the_client_is_standard_library_and_requests_only():
    tree = ast.parse(SCRIPT.read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    outside = {name for name in imported if name not in sys.stdlib_module_names}
    assert outside == {"requests"}, outside


def test_sign_and_verify_follow_the_documented_scheme():
    body, secret, now = b'{"a":1}', "s3cret", 1767225600
    expected = "sha256=" + hmac.new(b"s3cret", b"v2.webhook.1767225600." + body, hashlib.sha256).hexdigest()
    assert cc.sign(secret, str(now), body, cc.WEBHOOK) == expected
    assert cc.sign(secret, str(now), body, cc.INBOUND) != expected  # bound to its direction
    assert cc.verify(secret, str(now), expected, body, now=now + 299) is None
    assert cc.verify(secret, str(now), expected, body, now=now + 301) == "stale_timestamp"
    assert cc.verify(secret, str(now), expected.upper(), body, now=now) == "bad_signature"
    assert cc.verify(secret, str(now), expected, body + b" ", now=now) == "bad_signature"
    assert cc.verify(secret, "²", expected, body, now=now) == "stale_timestamp"


def test_send_receive_and_read_through_the_live_app(live, example_webhook, clients):
    from openlines.models import OutboundMessage

    client = clients(cc.ChannelClient(live.endpoint, live.secret))
    answer = client.add(
        "chat-9",
        {"id": "v-1", "name": "Ann"},
        "m-1",
        "Where is my parcel?",
        files=[{"url": "https://shop.example.com/p.png", "name": "p.png"}],
    )
    assert answer["result"] == "accepted" and client.waits == []
    assert [m["text"] for m in imc.conversations(live.b24)[0]["messages"]] == ["Where is my parcel?"]
    with pytest.raises(cc.ChannelError) as refused:
        client.add("chat-9", {"id": "v-1"}, "m-1", "Where is my parcel?")  # the same id, first attempt
    assert (refused.value.status, refused.value.error) == (409, "duplicate_message")

    message_id = live.operator_reply("It left the warehouse today.")
    [event] = example_webhook.inbox.events  # verified by the example's receiver before it was stored
    assert event["event"] == "message.add" and event["chat"]["id"] == "chat-9"
    assert event["message"]["text"] == "It left the warehouse today." and event["message"]["id"] == str(message_id)
    # The receiver's own id went back in its answer and is what Bitrix24's delivery status names.
    row = OutboundMessage.objects.get()
    assert (row.state, row.external_message_id) == ("sent", "ext-1")
    assert client.read("chat-9", "v-1", event["message"]["id"])["result"] == "accepted"
    assert client.update("chat-9", "v-1", "m-1", "Where is my parcel #12?")["result"] == "accepted"
    assert client.delete("chat-9", "v-1", "m-1")["result"] == "accepted"


def test_a_429_is_retried_after_retry_after(live, settings, clients):
    settings.OPENLINES_INBOUND_BURST = 1
    settings.OPENLINES_INBOUND_PER_MINUTE = 60  # one a second: the second message waits about a second
    client = clients(cc.ChannelClient(live.endpoint, live.secret))
    assert client.add("chat-1", {"id": "u"}, "m-1", "one")["result"] == "accepted"
    started = time.monotonic()
    assert client.add("chat-1", {"id": "u"}, "m-2", "two")["result"] == "accepted"
    assert client.waits == [1.0] and time.monotonic() - started >= 1.0
    texts = [m["text"] for m in imc.conversations(live.b24)[0]["messages"]]
    assert texts == ["one", "two"]


def test_a_refusal_that_retrying_cannot_fix_raises_at_once(live, clients):
    client = clients(cc.ChannelClient(live.endpoint, "not-the-secret", sleep=lambda s: pytest.fail("no retry")))
    with pytest.raises(cc.ChannelError) as refused:
        client.add("chat-1", {"id": "u"}, "m-1", "hi")
    assert (refused.value.status, refused.value.error) == (401, "bad_signature")


def test_the_receiver_refuses_what_the_channel_did_not_sign(example_webhook):
    example_webhook.secret = "the-channels-secret"
    api = OpenAPI.from_file_path(str(ROOT / "docs" / "openapi" / "channel-api.yaml"))
    body = json.dumps(
        {
            "event": "message.add",
            "chat": {"id": "c"},
            "im": {"chat_id": "5", "message_id": "7"},
            "message": {"id": "7", "text": "hi", "user_id": "1", "author": {"id": "1", "name": "Op"}},
        },
        separators=(",", ":"),
    ).encode()

    def post(timestamp, secret):
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "b24widget-openlines",
            "X-B24Widget-Timestamp": str(timestamp),
            "X-B24Widget-Signature": cc.sign(secret, str(timestamp), body, cc.WEBHOOK),
            "X-B24Widget-Signature-Version": "2",
        }
        sent = requests.Request("POST", example_webhook.url, headers=headers, data=body).prepare()
        with requests.Session() as session:
            answer = session.send(sent, timeout=10)
        # The example's answers are ones the document describes for the webhook.
        api.validate_response(RequestsOpenAPIWebhookRequest(sent, "channelMessage"), RequestsOpenAPIResponse(answer))
        return answer

    assert post(int(time.time()), "a-forger").status_code == 401
    assert post(int(time.time()) - 3600, "the-channels-secret").status_code == 401
    assert example_webhook.inbox.events == []
    genuine = post(int(time.time()), "the-channels-secret")
    assert genuine.status_code == 200 and genuine.json() == {"message": {"id": "ext-1"}}
    assert len(example_webhook.inbox.events) == 1


def test_the_command_line_sends_a_message_without_the_app_importable(live, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
    env["CHANNEL_SECRET"] = live.secret
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "send",
            "--endpoint",
            live.endpoint,
            "--chat",
            "cli",
            "--user",
            "u-cli",
            "--name",
            "Cli",
            "--text",
            "from the command line",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == "accepted"
    assert imc.conversations(live.b24)[0]["messages"][0]["text"] == "from the command line"
