"""The channel API served for real: the app on pytest-django's live server (a real HTTP socket, the whole
middleware stack), installed on a stand-in portal, with one Open Line connected to a webhook URL.

Used by the channel's contract tests (test_openapi.py, test_example_client.py). As in tests/openlines/, the
channel's delivery tasks run inline (OPENLINES_TASKS_INLINE in tests/settings.py): a message accepted by
the live server goes to the stand-in's Open Line before the 202 leaves; the inbox is processed by the test
(`operator_reply`), as a worker would, so no broker is involved.
"""

import hashlib
import hmac
import json
import time
from dataclasses import dataclass

import requests

from inbox import queue as inbox
from sandbox.standin import rest_imconnector as imc
from tests.conftest import do_install
from tests.openlines.conftest import act


@dataclass
class LiveChannel:
    app_url: str  # the live server, e.g. http://localhost:41234
    endpoint: str  # <app_url>/channels/<id>/messages, as the Connect answer shows it
    channel_url: str  # <app_url>/channels/<id>/
    secret: str
    row: object  # openlines.models.Channel
    b24: object  # the stand-in portal

    def post(
        self, payload=None, *, body: bytes | None = None, timestamp=None, secret=None, signature=None, headers=None
    ) -> requests.Response:
        """POST to the channel, signed by the book unless told otherwise (`signature`, `secret`, `timestamp`)."""
        body = json.dumps(payload).encode() if body is None else body
        timestamp = str(int(time.time()) if timestamp is None else timestamp)
        if signature is None:  # version 2, as the document describes it (not the app's own function)
            signed = f"v2.inbound.{timestamp}.".encode() + body
            signature = "sha256=" + hmac.new((secret or self.secret).encode(), signed, hashlib.sha256).hexdigest()
        sent = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "X-B24Widget-Timestamp": timestamp,
            "X-B24Widget-Signature": signature,
            "X-B24Widget-Signature-Version": "2",
            **(headers or {}),
        }
        return requests.post(self.endpoint, data=body, headers=sent, timeout=30)

    def open_line_chat(self) -> int:
        """The stand-in's Open Lines chat of the first conversation (after a message was accepted)."""
        return imc.conversations(self.b24)[0]["chat_id"]

    def operator_reply(self, text: str) -> int:
        """An operator answers in the Open Line: Bitrix24 posts the event to the live /events/, and the inbox
        is processed here, as a worker would (the webhook POST then goes out inline). The message id."""
        message_id, deliveries = imc.operator_reply(self.b24, self.open_line_chat(), text)
        assert deliveries and all(d["status"] == 200 for d in deliveries), deliveries
        inbox.process_pending()
        return message_id


def message(mid="m1", text="Hello", chat="chat-1", user="u-1", **extra) -> dict:
    return {
        "action": "add",
        "chat": {"id": chat, "name": "Website"},
        "user": {"id": user, "name": "Ann", "last_name": "Lee"},
        "message": {"id": mid, "text": text, "date": int(time.time())},
        **extra,
    }


def connect_live(live_server, settings, monkeypatch, standin, client, frame, webhook_url: str) -> LiveChannel:
    """Install a fresh stand-in portal on the live app and connect line 1 with `webhook_url`."""
    from openlines.models import Channel

    # The app's own address is the live server's: the connector events are bound to its /events/ and the
    # channel's endpoint is served there.
    settings.B24_APP_URL = live_server.url
    # The live /events/ stores each event; this test processes the inbox itself (operator_reply), so the
    # inbox's own task is not sent to a broker.
    monkeypatch.setattr(inbox, "enqueue", lambda *args, **kwargs: True)
    b24 = standin.add_portal()
    do_install(client, b24)
    answer = act(frame, b24, "connect", webhook_url=webhook_url, name="Contract tests")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    row = Channel.objects.get(public_id=body["channel"]["id"])
    endpoint = body["channel"]["endpoint"]
    assert endpoint == f"{live_server.url}/channels/{row.public_id}/messages"
    return LiveChannel(
        app_url=live_server.url,
        endpoint=endpoint,
        channel_url=endpoint[: -len("messages")],
        secret=body["secret"],
        row=row,
        b24=b24,
    )
