"""The integrator's contract, docs/openapi/channel-api.yaml, against the channel as it runs.

The document must be valid OpenAPI 3.1 (openapi-spec-validator), and every answer the live channel gives
here (openapi-core validates status, headers and body against the document: an undocumented status, a
missing `Retry-After` or an error code the document does not list for that status fails), every request we
send by the book, and a webhook POST the app really sent must conform to it.
"""

import re
import time
import uuid
from pathlib import Path

import pytest
import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse, RequestsOpenAPIWebhookRequest
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

from openlines.outbound import WEBHOOK, sign
from tests.contracts.live_channel import connect_live, message
from tests.openlines.conftest import Receiver, act

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "openapi" / "channel-api.yaml"


@pytest.fixture(scope="module")
def api() -> OpenAPI:
    return OpenAPI.from_file_path(str(DOCUMENT))


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def live(live_server, settings, monkeypatch, standin, client, frame, receiver):
    return connect_live(live_server, settings, monkeypatch, standin, client, frame, receiver.url)


def conforms(api, response: requests.Response, *, request_too: bool = False) -> requests.Response:
    """Validate the real answer (and, when it was sent by the book, the request) against the document."""
    if request_too:
        api.validate_request(RequestsOpenAPIRequest(response.request))
    api.validate_response(RequestsOpenAPIRequest(response.request), RequestsOpenAPIResponse(response))
    return response


# --- the document ----------------------------------------------------------------------------------------
def test_the_document_is_valid_openapi_3_1():
    spec, _ = read_from_filename(str(DOCUMENT))
    assert spec["openapi"].startswith("3.1.")
    validate(spec)  # raises on any violation of the OpenAPI 3.1 schema, a dangling $ref included
    assert set(spec["paths"]) == {"/channels/{channel_id}/messages", "/channels/{channel_id}/"}
    assert set(spec["webhooks"]) == {"channelMessage"}


def test_every_error_code_of_the_channel_views_is_in_the_document():
    """The codes the code can answer (each `Refused("...")` of openlines/inbound.py and each error of the
    channel's views) are all listed; a new one added to the code without the document fails here."""
    spec_text = DOCUMENT.read_text()
    inbound = (ROOT / "openlines" / "inbound.py").read_text()
    views = (ROOT / "openlines" / "views.py").read_text()
    channel_views = views[views.index("def _method_not_allowed") :]
    # (\s*: ruff format puts a long call's first argument on a line of its own)
    codes = set(re.findall(r'Refused\(\s*"([a-z_]+)"', inbound)) | set(
        re.findall(r'_error\(\s*"([a-z_]+)"', channel_views)
    )
    codes |= {"server_error", "unavailable"}  # b24widget/errors.py, for every address
    assert codes >= {
        "unknown_channel",
        "channel_disconnected",
        "body_too_large",
        "stale_timestamp",
        "bad_signature",
        "rate_limited",
        "bad_request",
        "duplicate_message",
        "unknown_message",
        "method_not_allowed",
    }
    missing = {code for code in codes if not re.search(rf"\b{code}\b", spec_text)}
    assert not missing, f"error codes the views answer but the document does not list: {missing}"


# --- real answers of the live channel ----------------------------------------------------------------------
def test_an_accepted_message_and_its_request_conform(api, live):
    answer = conforms(api, live.post(message("m1", "Hello from the contract")), request_too=True)
    assert answer.status_code == 202 and answer.json()["result"] == "accepted"
    # Every documented field: chat name and url, the customer's details and picture, files, an integer id.
    full = {
        "action": "add",
        "chat": {"id": 42, "name": "Shop", "url": "https://shop.example.com/c/42"},
        "user": {
            "id": "u-2",
            "name": "Zoë",
            "last_name": "O'Neil",
            "email": "z@example.com",
            "phone": "+1 555",
            "picture": {"url": "https://shop.example.com/z.png"},
        },
        "message": {
            "id": "m2",
            "date": int(time.time()),
            "text": "",
            "files": [{"url": "https://shop.example.com/f.pdf", "name": "f.pdf"}],
        },
    }
    assert conforms(api, live.post(full), request_too=True).status_code == 202


def test_the_documented_examples_are_accepted_by_the_channel(api, live):
    spec, _ = read_from_filename(str(DOCUMENT))
    examples = spec["paths"]["/channels/{channel_id}/messages"]["post"]["requestBody"]["content"]["application/json"][
        "examples"
    ]
    for name in ("add", "update", "delete"):
        answer = conforms(api, live.post(examples[name]["value"]), request_too=True)
        assert answer.status_code == 202, (name, answer.content)


def test_refusals_before_the_signature_conform(api, live, settings):
    answer = conforms(api, live.post(message(), signature="sha256=" + "0" * 64))
    assert (answer.status_code, answer.json()["error"]) == (401, "bad_signature")
    answer = conforms(api, live.post(message(), secret="not-the-secret"))
    assert (answer.status_code, answer.json()["error"]) == (401, "bad_signature")
    answer = conforms(api, live.post(message(), timestamp=int(time.time()) - settings.OPENLINES_SIGNATURE_WINDOW - 60))
    assert (answer.status_code, answer.json()["error"]) == (401, "stale_timestamp")
    answer = conforms(api, live.post(message(), headers={"X-B24Widget-Timestamp": ""}))
    assert (answer.status_code, answer.json()["error"]) == (401, "stale_timestamp")
    elsewhere = requests.post(
        f"{live.app_url}/channels/{uuid.uuid4()}/messages",
        data=b"{}",
        headers={"Accept": "application/json"},
        timeout=30,
    )
    assert (conforms(api, elsewhere).status_code, elsewhere.json()["error"]) == (404, "unknown_channel")
    settings.OPENLINES_INBOUND_MAX_BYTES = 1024
    answer = conforms(api, live.post(message(text="x" * 2000)))
    assert (answer.status_code, answer.json()["error"]) == (413, "body_too_large")


def test_bad_bodies_conform(api, live):
    for body in (
        b"{not json",
        b"[1, 2]",
        b'{"chat": {"id": "c"}, "user": {"id": "u"}, "message": {"id": ""}}',
        b'{"action": "shout", "chat": {}, "user": {}, "message": {}}',
    ):
        answer = conforms(api, live.post(body=body))
        assert (answer.status_code, answer.json()["error"]) == (400, "bad_request"), body


def test_duplicates_unknown_messages_and_a_disconnected_channel_conform(api, live, frame):
    assert conforms(api, live.post(message("m1"))).status_code == 202
    answer = conforms(api, live.post(message("m1")))
    assert (answer.status_code, answer.json()["error"]) == (409, "duplicate_message")
    read = {"action": "read", "chat": {"id": "chat-1"}, "user": {"id": "u-1"}, "message": {"id": "999999"}}
    answer = conforms(api, live.post(read), request_too=True)
    assert (answer.status_code, answer.json()["error"]) == (404, "unknown_message")
    assert act(frame, live.b24, "disconnect").status_code == 200
    answer = conforms(api, live.post(message("m2")))
    assert (answer.status_code, answer.json()["error"]) == (409, "channel_disconnected")


def test_the_rate_limit_answers_429_with_retry_after(api, live, settings):
    settings.OPENLINES_INBOUND_BURST = 1
    settings.OPENLINES_INBOUND_PER_MINUTE = 1
    assert conforms(api, live.post(message("m1"))).status_code == 202
    answer = conforms(api, live.post(message("m2")))  # Retry-After is required there by the document
    assert (answer.status_code, answer.json()["error"]) == (429, "rate_limited")
    assert 1 <= int(answer.headers["Retry-After"]) <= 60


def test_a_database_outage_is_a_503_as_documented(api, live, monkeypatch):
    from django.db import OperationalError

    from openlines import inbound

    def down(public_id):
        raise OperationalError("the database does not answer")

    monkeypatch.setattr(inbound, "find_channel", down)
    answer = conforms(api, live.post(message()))
    assert (answer.status_code, answer.json()["error"], answer.headers["Retry-After"]) == (503, "unavailable", "10")
    html = conforms(api, live.post(message(), headers={"Accept": "text/html"}))
    assert html.status_code == 503 and html.headers["Content-Type"].startswith("text/html")


def test_the_channels_own_address_conforms(api, live):
    answer = conforms(api, requests.get(live.channel_url, timeout=30), request_too=True)
    assert answer.status_code == 200
    assert answer.json() == {
        "channel": str(live.row.public_id),
        "connector": live.row.connector_id,
        "state": "connected",
        "messages": live.endpoint,
    }
    assert live.secret not in answer.text
    assert conforms(api, requests.head(live.channel_url, timeout=30)).status_code == 200
    unknown = requests.get(f"{live.app_url}/channels/{uuid.uuid4()}/", timeout=30)
    assert (conforms(api, unknown).status_code, unknown.json()["error"]) == (404, "unknown_channel")


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_wrong_methods_on_the_messages_address_answer_405(api, live, method):
    answer = conforms(api, requests.request(method, live.endpoint, timeout=30))
    assert (answer.status_code, answer.headers["Allow"], answer.json()["error"]) == (405, "POST", "method_not_allowed")
    head = conforms(api, requests.head(live.endpoint, timeout=30))
    assert (head.status_code, head.headers["Allow"]) == (405, "POST")


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_wrong_methods_on_the_channels_address_answer_as_documented(api, live, method):
    """Every other method is the channel API's JSON 405 (the address changes nothing, so no CSRF page either)."""
    answer = conforms(api, requests.request(method, live.channel_url, timeout=30))
    assert answer.status_code == 405
    assert answer.headers["Allow"] == "GET" and answer.json()["error"] == "method_not_allowed"


def test_other_addresses_under_channels_are_json_404(live):
    """Not paths of the document (its description says so): any other address is 404 unknown_channel."""
    for method, path in (
        ("POST", "/channels/not-a-uuid/messages"),
        ("GET", f"/channels/{live.row.public_id}"),
        ("POST", f"/channels/{live.row.public_id}/messages/"),
        ("DELETE", "/channels/"),
    ):
        answer = requests.request(method, live.app_url + path, timeout=30)
        assert (answer.status_code, answer.json()["error"]) == (404, "unknown_channel"), (method, path)


# --- the webhook we send --------------------------------------------------------------------------------------
def test_a_real_webhook_post_conforms_and_its_signature_verifies(api, live, receiver):
    from openlines.models import OutboundMessage

    assert live.post(message("m1", "I need help")).status_code == 202
    message_id = live.operator_reply("Hello, how can I help?")
    [hook] = receiver.got
    headers, body = hook["headers"], hook["body"]
    # The webhook as it arrived, checked against the document's `webhooks.channelMessage`.
    sent = requests.Request("POST", receiver.url, headers=headers, data=body).prepare()
    api.validate_request(RequestsOpenAPIWebhookRequest(sent, "channelMessage"))
    assert hook["json"]["event"] == "message.add" and hook["json"]["message"]["id"] == str(message_id)
    # The signature scheme the document describes, computed independently of the app's code.
    import hashlib
    import hmac

    timestamp = headers["X-B24Widget-Timestamp"]
    signed = f"v2.webhook.{timestamp}.".encode() + body
    expected = "sha256=" + hmac.new(live.secret.encode(), signed, hashlib.sha256).hexdigest()
    assert headers["X-B24Widget-Signature"] == expected == sign(live.secret, timestamp, body, WEBHOOK)
    assert headers["X-B24Widget-Signature-Version"] == "2"
    assert abs(int(timestamp) - time.time()) < 60
    # The receiver's 200 counts as delivered, as the document says of 2XX.
    assert OutboundMessage.objects.get().state == "sent"
    # A read report naming the webhook's message.id is accepted.
    read = {"action": "read", "chat": {"id": "chat-1"}, "user": {"id": "u-1"}, "message": {"id": str(message_id)}}
    assert conforms(api, live.post(read), request_too=True).status_code == 202


def test_the_webhook_answers_the_document_promises_are_what_the_app_does(api):
    """The document's response ranges for the webhook match the app's verdict on each status."""
    from openlines import outbound

    spec, _ = read_from_filename(str(DOCUMENT))
    documented = spec["webhooks"]["channelMessage"]["post"]["responses"]
    for status in (200, 201, 204, 299, 301, 302, 400, 401, 403, 404, 408, 409, 410, 413, 422, 429, 500, 502, 503, 504):
        key = str(status) if str(status) in documented else f"{str(status)[0]}XX"
        text = documented[key]["description"].lower()
        verdict = outbound.verdict(status)
        said = "delivered" if "delivered" in text else "refuse" if "refuses" in text else "retried"
        assert {"delivered": outbound.DELIVERED, "refuse": outbound.REFUSED, "retried": outbound.RETRY}[
            said
        ] == verdict, (status, key, verdict)
