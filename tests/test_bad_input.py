"""Bad input at every entry point (docs/threat-model.md, "Bad input"): never a 5xx, nothing stored, nothing
sent to Bitrix24 or to a webhook.

One table per entry point: `/events/` (form and JSON), `/install/`, `/placement/`, `/openlines/connector/`,
`POST /channels/<id>/messages` (signed with the channel's real secret, so only the content is wrong) and
`GET /channels/<id>/`; each against NUL characters, lone surrogates, over-long strings, wrong types and wrong
methods. Every request carries the genuine credentials of an installed portal (real `APPLICATION_TOKEN`, a
real user's `AUTH_ID`, an administrator's widget token), so a refusal comes from the bad value and nothing
else. A form body cannot carry a lone surrogate (Django decodes invalid UTF-8 as U+FFFD): forms get NUL and
over-long values, JSON bodies all of them. Real HTTP to the stand-in, which records every request it gets.
"""

import json
import time
import uuid
from urllib.parse import quote

import pytest
from django.apps import apps
from django.test import Client

from inbox import registry as inbox_registry
from openlines.models import Channel
from openlines.outbound import INBOUND, sign
from tests.openlines.conftest import CONNECTOR, channel, open_settings, receiver  # noqa: F401  (fixtures)
from tests.placements.frames import widget_token_of

pytestmark = pytest.mark.django_db

NUL, SURROGATE, OVERLONG = "a\x00b", "a\ud800b", "x" * 100_000
TEXTS = {"nul": NUL, "surrogate": SURROGATE, "overlong": OVERLONG}
FORM_TEXTS = {"nul": NUL, "overlong": OVERLONG}  # see the module's docstring
WRONG_TYPES = {"list": ["x"], "object": {"x": "y"}, "float": 1.5, "bool": True}
WRONG_METHODS = ("GET", "PUT", "PATCH", "DELETE")
_APPS = ("vault", "inbox", "portals", "placements", "openlines", "auth", "sessions")


# --- what a request may not change -------------------------------------------------------------------------
def stored():
    """Every row of the project's models (and the admin's users and sessions), as tuples."""
    return {
        model._meta.label: list(model.objects.order_by("pk").values_list())
        for model in apps.get_models()
        if model._meta.app_label in _APPS
    }


def calls(b24, standin, hook=None):
    """Requests that reached the portal, the OAuth server (token, app.info) and the channel's webhook."""
    return (
        len(b24.requests),
        len(standin.oauth_requests),
        len(standin.server_requests),
        len(hook.tried) if hook else 0,
    )


@pytest.fixture
def guarded(standin, django_capture_on_commit_callbacks):
    """`guarded(b24, send, *args, hook=None, case=...)`: `send(client, *args)`, its after-commit work run too; check
    that it was refused (4xx, never a 5xx), stored nothing and reached neither Bitrix24 nor the webhook."""

    def check(b24, send, *args, hook=None, case="", **kwargs):
        rows, before = stored(), calls(b24, standin, hook)
        with django_capture_on_commit_callbacks(execute=True):
            response = send(Client(raise_request_exception=False), *args, **kwargs)
        assert 400 <= response.status_code < 500, (case, response.status_code, response.content[:300])
        assert calls(b24, standin, hook) == before, f"{case}: the bad request reached Bitrix24 or the webhook"
        assert stored() == rows, f"{case}: the bad request stored something"
        return response

    return check


def form(fields: dict) -> str:
    """A urlencoded body, whatever the values hold (a lone surrogate goes as its invalid UTF-8 bytes)."""
    return "&".join(f"{quote(k)}={quote(str(v).encode('utf-8', 'surrogatepass'))}" for k, v in fields.items())


def post_form(client, path, fields):
    return client.post(path, form(fields), content_type="application/x-www-form-urlencoded")


def generic(client, method, path, body=""):
    return client.generic(method, path, body)


def post_json(client, path, data, **headers):
    return client.post(path, json.dumps(data), content_type="application/json", **headers)


def nested(flat: dict) -> dict:
    """`auth[member_id]`-style form fields as the JSON object Bitrix24 may POST instead."""
    out: dict = {}
    for key, value in flat.items():
        if "[" in key:
            outer, inner = key.rstrip("]").split("[", 1)
            node = out.setdefault(outer, {})
            parts = inner.split("][")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        else:
            out[key] = value
    return out


# --- /events/ ----------------------------------------------------------------------------------------------
EVENTS = sorted(inbox_registry.registered_codes())
EVENT_FIELDS = ["event", "ts", "event_handler_id", "auth.member_id", "auth.application_token", "auth.domain", "data"]


@pytest.mark.parametrize("kind", FORM_TEXTS)
def test_events_form(installed, guarded, kind):
    """Every registered event with a bad value in its data, and the envelope's fields one by one."""
    portal, b24 = installed
    bad = FORM_TEXTS[kind]
    for event in EVENTS:
        payload = b24.event_payload(event, data={"NOTE": bad})
        guarded(b24, post_form, "/events/", payload, case=event)
        payload = b24.event_payload(event, data={bad: "x"})
        guarded(b24, post_form, "/events/", payload, case=f"{event} key")
    for field in EVENT_FIELDS[:-1]:
        payload = b24.event_payload("ONAPPUNINSTALL")
        name = f"auth[{field[5:]}]" if field.startswith("auth.") else field
        payload[name] = bad
        guarded(b24, post_form, "/events/", payload, case=field)


@pytest.mark.parametrize("kind", [*TEXTS, *WRONG_TYPES])
def test_events_json(installed, guarded, kind):
    """The same as JSON, where a lone surrogate ("\\ud800") and other types can come too; deeper in data as well."""
    portal, b24 = installed
    bad = {**TEXTS, **WRONG_TYPES}[kind]
    if kind in TEXTS:
        for event in EVENTS:
            body = nested(b24.event_payload(event))
            body["data"] = {**(body.get("data") or {}), "NOTE": bad}
            guarded(b24, post_json, "/events/", body, case=event)
        for where, data in {
            "key": {bad: "x"},
            "nested": {
                "CONNECTOR": CONNECTOR,
                "LINE": "1",
                "MESSAGES": [{"im": {"chat_id": "1"}, "message": {"text": bad}}],
            },
            "in a list": {"MESSAGES": ["x", bad]},
        }.items():
            body = {**nested(b24.event_payload("ONIMCONNECTORMESSAGEADD")), "data": data}
            guarded(b24, post_json, "/events/", body, case=where)
    for field in EVENT_FIELDS:
        if field == "data" and kind == "object":
            continue  # an object is what data is
        body = nested(b24.event_payload("ONAPPUNINSTALL"))
        if field.startswith("auth."):
            body["auth"][field[5:]] = bad
        else:
            body[field] = bad
        guarded(b24, post_json, "/events/", body, case=field)


def test_events_with_a_wrong_method(installed, guarded):
    portal, b24 = installed
    for method in WRONG_METHODS:
        guarded(b24, generic, method, "/events/", form(b24.event_payload("ONAPPUNINSTALL")), case=method)


# --- /install/ and /placement/ -----------------------------------------------------------------------------
FRAME_FIELDS = [
    "DOMAIN",
    "PROTOCOL",
    "LANG",
    "APP_SID",
    "member_id",
    "AUTH_ID",
    "AUTH_EXPIRES",
    "REFRESH_ID",
    "APPLICATION_TOKEN",
    "PLACEMENT",
    "PLACEMENT_OPTIONS",
    "status",
]


@pytest.mark.parametrize("kind", FORM_TEXTS)
@pytest.mark.parametrize("path", ["/install/", "/placement/"])
def test_frame_posts(installed, guarded, path, kind):
    """The install POST and a widget open, each field in turn (the install's own POST, an administrator's)."""
    portal, b24 = installed
    for field in FRAME_FIELDS:
        fields = b24.install_post() if path == "/install/" else b24.placement_post()
        fields[field] = FORM_TEXTS[kind]
        guarded(b24, post_form, path, fields, case=field)


@pytest.mark.parametrize("kind", TEXTS)
def test_placement_options(installed, guarded, kind):
    """PLACEMENT_OPTIONS is JSON: its escapes (\\u0000, \\ud800) reach us as text, refused before verification."""
    portal, b24 = installed
    bad = TEXTS[kind]
    for placement in ("CONTACT_CENTER", "DEFAULT", "SETTING_CONNECTOR"):
        base = {"CONNECTOR": CONNECTOR, "LINE": "1"} if placement == "SETTING_CONNECTOR" else {}
        for where, options in {
            "value": {**base, "URI": bad},
            "key": {**base, bad: "x"},
            "nested": {**base, "STATE": {"A": [bad]}},
        }.items():
            fields = b24.placement_post(placement=placement, options=options)
            guarded(b24, post_form, "/placement/", fields, case=f"{placement} {where}")


def test_frame_posts_with_a_wrong_method(installed, guarded):
    portal, b24 = installed
    for path in ("/install/", "/placement/"):
        for method in ("PUT", "PATCH", "DELETE"):
            guarded(b24, generic, method, path, form(b24.placement_post()), case=f"{method} {path}")


# --- /openlines/connector/ ---------------------------------------------------------------------------------
# LANG only picks the language of the answer: an unknown one is English, not a refusal.
ACTION_FIELDS = ["action", "connector", "line", "name", "webhook_url", "widget_token", "AUTH_ID"]


@pytest.mark.parametrize("kind", FORM_TEXTS)
def test_connector_actions(frame, installed, guarded, kind):
    """Each action of an administrator's page (genuine widget token and AUTH_ID), each field in turn."""
    portal, b24 = installed
    response, auth_id = open_settings(frame, b24)
    assert response.status_code == 200
    for action in ("list", "connect", "save", "rotate", "disconnect"):
        for field in ACTION_FIELDS:
            fields = {
                "widget_token": widget_token_of(response),
                "AUTH_ID": auth_id,
                "action": action,
                "connector": CONNECTOR,
                "line": "1",
                "LANG": "en",
                "name": "Site chat",
                "webhook_url": "https://hooks.example.com/b24",
                field: FORM_TEXTS[kind],
            }
            guarded(b24, post_form, "/openlines/connector/", fields, case=f"{action} {field}")


def test_connector_actions_with_a_wrong_method(installed, guarded):
    portal, b24 = installed
    for method in WRONG_METHODS:
        guarded(b24, generic, method, "/openlines/connector/", "action=list", case=method)


# --- POST /channels/<id>/messages (signed) and GET /channels/<id>/ -----------------------------------------
MESSAGE_FIELDS = [
    "action",
    "chat",
    "chat.id",
    "chat.name",
    "chat.url",
    "user",
    "user.id",
    "user.name",
    "user.last_name",
    "user.email",
    "user.phone",
    "user.picture",
    "message",
    "message.id",
    "message.date",
    "message.text",
    "message.files",
    "message.files.0",
    "message.files.0.url",
    "message.files.0.name",
]


def _message():
    return {
        "action": "add",
        "chat": {"id": "chat-1", "name": "Website", "url": "https://shop.example.com/chat/1"},
        "user": {
            "id": "u-1",
            "name": "Ann",
            "last_name": "Lee",
            "email": "ann@example.com",
            "phone": "+1 555 0100",
            "picture": {"url": "https://shop.example.com/ann.png"},
        },
        "message": {
            "id": "m1",
            "date": int(time.time()),
            "text": "Hello",
            "files": [{"url": "https://shop.example.com/f.pdf", "name": "f.pdf"}],
        },
    }


def _set(data, path, value):
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def send_signed(client, row, secret, data, **extra):
    body = json.dumps(data).encode()
    timestamp = str(int(time.time()))
    headers = {
        "HTTP_X_B24WIDGET_TIMESTAMP": timestamp,
        "HTTP_X_B24WIDGET_SIGNATURE": sign(secret, timestamp, body, INBOUND),
        "HTTP_X_B24WIDGET_SIGNATURE_VERSION": "2",
        **extra,
    }
    return client.post(f"/channels/{row.public_id}/messages", body, content_type="application/json", **headers)


def test_the_unchanged_message_is_accepted(channel, client):  # noqa: F811
    """The tables' base case: without the bad value the same request is accepted."""
    row, secret, b24 = channel
    assert send_signed(client, row, secret, _message()).status_code == 202


_OBJECTS = {"chat", "user", "message", "user.picture", "message.files.0"}


@pytest.mark.parametrize("kind", [*TEXTS, *WRONG_TYPES])
def test_signed_messages(channel, receiver, guarded, kind):  # noqa: F811
    """The holder of the channel's secret: each field of a message in turn."""
    row, secret, b24 = channel
    for field in MESSAGE_FIELDS:
        if kind == "object" and field in _OBJECTS:
            continue  # an object is what it is
        data = _message()
        _set(data, field, {**TEXTS, **WRONG_TYPES}[kind])
        guarded(b24, send_signed, row, secret, data, hook=receiver, case=field)


def test_signed_messages_with_bad_headers(channel, receiver, guarded):  # noqa: F811
    row, secret, b24 = channel
    for header in ("HTTP_X_B24WIDGET_TIMESTAMP", "HTTP_X_B24WIDGET_SIGNATURE"):
        for value in (NUL, "1" * 5000, "\u00e9", "\u00b2", ""):
            guarded(
                b24,
                send_signed,
                row,
                secret,
                _message(),
                hook=receiver,
                **{header: value},
                case=f"{header} {value[:8]!r}",
            )


def test_channel_addresses_with_a_wrong_method_or_id(channel, receiver, guarded):  # noqa: F811
    row, secret, b24 = channel
    messages, view = f"/channels/{row.public_id}/messages", f"/channels/{row.public_id}/"
    for method in WRONG_METHODS:
        guarded(b24, generic, method, messages, json.dumps(_message()), hook=receiver, case=method)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        guarded(b24, generic, method, view, hook=receiver, case=method)
    for path in (
        "/channels/%00/",
        "/channels/%ED%A0%80/",
        f"/channels/{'x' * 5000}/",
        f"/channels/{uuid.uuid4()}/",
        "/channels/%00/messages",
        f"/channels/{row.public_id}%00/messages",
    ):
        guarded(b24, generic, "GET", path, hook=receiver, case=f"GET {path[:50]}")
        guarded(b24, post_json, path, {}, hook=receiver, case=f"POST {path[:50]}")


def test_a_connect_for_a_line_that_does_not_exist_leaves_no_row(frame, installed):
    """Only Bitrix24 knows its lines: the connect asks (an administrator's, so it may), and its refusal stores
    nothing, neither a channel row nor a secret; a line it has connects afterwards as usual."""
    portal, b24 = installed
    response, auth_id = open_settings(frame, b24, line="77")
    fields = {"widget_token": widget_token_of(response), "AUTH_ID": auth_id, "connector": CONNECTOR, "LANG": "en"}
    rows = stored()
    refused = post_form(Client(), "/openlines/connector/", {**fields, "action": "connect", "line": "77"})
    assert (refused.status_code, refused.json()["error"]) == (502, "bitrix24_refused")
    assert "NOT_ACTIVE_LINE" in refused.json()["error_description"]
    assert stored() == rows and not Channel.objects.exists()
    connected = post_form(Client(), "/openlines/connector/", {**fields, "action": "connect", "line": "1"})
    assert connected.status_code == 200 and Channel.objects.get().line_id == "1"
