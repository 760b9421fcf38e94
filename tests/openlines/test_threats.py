"""docs/threat-model.md, the Open Lines rows: what a stranger, an ordinary user and an administrator can make
the channel API (`POST /channels/<id>/messages`), the SETTING_CONNECTOR page and the outbound webhook do.

Real HTTP against the stand-in, as in test_inbound.py. Each test names the row it proves. The tests marked
xfail(strict=True) are defects the threat model lists under "Known limits": each passes (and so fails the
run, as a strict xfail) once the defect is fixed; then drop the mark.
"""

import json
import re
import socket
import time
import uuid

import pytest
from django.test import Client

from openlines.models import Channel, Delivery, InboundMessage, OutboundMessage
from openlines.outbound import INBOUND, sign
from sandbox.standin import rest_imconnector as imc
from tests.conftest import do_install
from tests.helpers import QuietHandler, local_server
from tests.openlines.conftest import CONNECTOR, act, message, open_settings, setting_connector_post, signed, visible_ids

pytestmark = pytest.mark.django_db


def counters(b24, standin):
    """REST requests that reached the portal, requests that reached the OAuth server (token, app.info)."""
    return len(b24.requests), len(standin.oauth_requests), len(standin.server_requests)


def nothing_reached_bitrix24(b24, standin, before):
    return counters(b24, standin) == before


def error_of(response):
    return response.status_code, response.json()["error"]


# --- the channel API: POST /channels/<id>/messages ---------------------------------------------------------------
def _refused_request(client, case, row, secret):
    body = json.dumps(message("m1")).encode()
    now = str(int(time.time()))
    if case == "unknown_channel":
        return client.post(f"/channels/{uuid.uuid4()}/messages", body, content_type="application/json")
    if case == "body_too_large":  # the declared length alone is refused: the body is never read
        return client.post(
            f"/channels/{row.public_id}/messages",
            body,
            content_type="application/json",
            CONTENT_LENGTH="999999999",
            HTTP_X_B24WIDGET_TIMESTAMP=now,
        )
    if case == "stale_timestamp":
        return signed(client, row, secret, message("m1"), timestamp=int(time.time()) - 3600)
    return signed(client, row, "not-the-secret", message("m1"))  # bad_signature


@pytest.mark.parametrize(
    "case, status",
    [("unknown_channel", 404), ("body_too_large", 413), ("stale_timestamp", 401), ("bad_signature", 401)],
)
def test_a_refused_request_costs_one_query_and_sends_nothing(
    client, channel, standin, case, status, django_assert_num_queries, django_capture_on_commit_callbacks
):
    """Stranger row: one indexed SELECT per refused request; no row, no task, no call to Bitrix24."""
    row, secret, b24 = channel
    before = counters(b24, standin)
    with django_capture_on_commit_callbacks(execute=True) as queued, django_assert_num_queries(1):
        response = _refused_request(client, case, row, secret)
    assert error_of(response) == (status, case)
    assert queued == [] and not InboundMessage.objects.exists()
    assert Channel.objects.get(pk=row.pk).last_activity_at is None
    assert nothing_reached_bitrix24(b24, standin, before)


@pytest.mark.slow  # over 1.5 s: 200 forged requests
def test_a_flood_of_forged_requests_writes_nothing_and_calls_nothing(client, channel, standin):
    """Stranger row: every forged request is answered 401 at once; no throttle, and none is needed for our
    database or for Bitrix24, since a refusal writes nothing and calls nothing."""
    row, secret, b24 = channel
    before = counters(b24, standin)
    statuses = {signed(client, row, f"guess-{n}", message(f"m{n}")).status_code for n in range(200)}
    assert statuses == {401}
    assert not InboundMessage.objects.exists() and nothing_reached_bitrix24(b24, standin, before)


def test_a_captured_request_replayed_verbatim_is_refused(client, channel, settings, django_capture_on_commit_callbacks):
    """Stranger row (replay): the same bytes and headers again are a duplicate inside the window, and stale
    after it; Bitrix24 got the message once."""
    row, secret, b24 = channel
    body = json.dumps(message("m1", "Pay invoice 7")).encode()
    timestamp = str(int(time.time()) - 120)
    headers = {
        "HTTP_X_B24WIDGET_TIMESTAMP": timestamp,
        "HTTP_X_B24WIDGET_SIGNATURE": sign(secret, timestamp, body, INBOUND),
        "HTTP_X_B24WIDGET_SIGNATURE_VERSION": "2",
    }

    def send():
        return client.post(f"/channels/{row.public_id}/messages", body, content_type="application/json", **headers)

    with django_capture_on_commit_callbacks(execute=True):
        assert send().status_code == 202
        assert error_of(send()) == (409, "duplicate_message")
    settings.OPENLINES_SIGNATURE_WINDOW = 60  # the window has passed for this request
    assert error_of(send()) == (401, "stale_timestamp")
    assert InboundMessage.objects.count() == 1 and b24.calls("imconnector.send.messages") == 1
    assert [m["text"] for m in imc.conversations(b24)[0]["messages"]] == ["Pay invoice 7"]


def test_a_captured_update_without_a_date_replayed_later_is_refused(
    client, channel, django_capture_on_commit_callbacks
):
    """Stranger row (replay): an edit that named no `message.date` used to be dated "now" before its
    idempotency key was made, so the same captured bytes replayed a second later were a new edit. The key is
    what the request carried: the replay is a duplicate; Bitrix24 got the edit once."""
    row, secret, b24 = channel
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m1", "Pay invoice 7")).status_code == 202
    edit = {"action": "update", "chat": {"id": "chat-1"}, "user": {"id": "u-1"}, "message": {"id": "m1", "text": "7!"}}
    body = json.dumps(edit).encode()
    timestamp = str(int(time.time()))
    headers = {
        "HTTP_X_B24WIDGET_TIMESTAMP": timestamp,
        "HTTP_X_B24WIDGET_SIGNATURE": sign(secret, timestamp, body, INBOUND),
        "HTTP_X_B24WIDGET_SIGNATURE_VERSION": "2",
    }

    def send():
        return client.post(f"/channels/{row.public_id}/messages", body, content_type="application/json", **headers)

    with django_capture_on_commit_callbacks(execute=True):
        assert send().status_code == 202
        while str(int(time.time())) == timestamp:  # a replay in a later second (the date would differ)
            time.sleep(0.05)
        assert error_of(send()) == (409, "duplicate_message")
    assert InboundMessage.objects.filter(action="update").count() == 1
    assert b24.calls("imconnector.update.messages") == 1


def test_a_captured_webhook_is_no_request_to_the_channel(
    client, conversation, receiver, sink, settings, django_capture_on_commit_callbacks
):
    """Stranger row (direction): our webhook POST, captured on its way to the outside system and sent to the
    channel with all its headers, is refused for its signature (401, before its body is even read as a
    message), with its version header and without it (as version 1, inside the migration window)."""
    row, secret, b24 = conversation
    _reply(client, b24, sink, django_capture_on_commit_callbacks)
    [hook] = receiver.got
    headers = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in hook["headers"].items() if k.startswith("X-B24")}
    assert headers["HTTP_X_B24WIDGET_SIGNATURE_VERSION"] == "2"
    as_v1 = {k: v for k, v in headers.items() if k != "HTTP_X_B24WIDGET_SIGNATURE_VERSION"}
    for sent in (headers, as_v1):
        response = client.post(
            f"/channels/{row.public_id}/messages", hook["body"], content_type="application/json", **sent
        )
        assert error_of(response) == (401, "bad_signature")
    assert InboundMessage.objects.count() == 1  # the customer's own message only


def test_version_1_signatures_are_accepted_only_within_the_migration_window(
    client, channel, settings, django_capture_on_commit_callbacks
):
    """Administrator row (the secret's holder): a request signed the old way is accepted up to and including
    OPENLINES_SIGNATURE_V1_UNTIL, and refused after it or when it is unset; an unknown version is refused."""
    import datetime

    row, secret, b24 = channel
    today = datetime.datetime.now(datetime.UTC).date()
    settings.OPENLINES_SIGNATURE_V1_UNTIL = today
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m1"), version=1).status_code == 202
    for until in (today - datetime.timedelta(days=1), None):
        settings.OPENLINES_SIGNATURE_V1_UNTIL = until
        refused = signed(client, row, secret, message("m2"), version=1)
        assert error_of(refused) == (401, "bad_signature") and "version 1" in refused.json()["error_description"]
    body = json.dumps(message("m3")).encode()
    timestamp = str(int(time.time()))
    for version in ("3", "２", "2 "):
        response = client.post(
            f"/channels/{row.public_id}/messages",
            body,
            content_type="application/json",
            HTTP_X_B24WIDGET_TIMESTAMP=timestamp,
            HTTP_X_B24WIDGET_SIGNATURE=sign(secret, timestamp, body, INBOUND),
            HTTP_X_B24WIDGET_SIGNATURE_VERSION=version,
        )
        assert error_of(response) == (401, "bad_signature")
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m3")).status_code == 202  # version 2 goes on


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe\xfa not utf-8",
        b"[" * 100_000 + b"]" * 100_000,
        b'"a string"',
        b"null",
    ],
    ids=["not_json", "not_utf8", "deep", "string", "null"],
)
def test_a_malformed_body_with_a_good_signature_is_400_and_sends_nothing(
    client, channel, standin, body, django_capture_on_commit_callbacks
):
    """Administrator row (the secret's holder): a body that is not a JSON object is a 400, never a 500."""
    row, secret, b24 = channel
    timestamp = str(int(time.time()))
    before = counters(b24, standin)
    with django_capture_on_commit_callbacks(execute=True):
        response = Client(raise_request_exception=False).post(
            f"/channels/{row.public_id}/messages",
            body,
            content_type="application/json",
            HTTP_X_B24WIDGET_TIMESTAMP=timestamp,
            HTTP_X_B24WIDGET_SIGNATURE=sign(secret, timestamp, body, INBOUND),
            HTTP_X_B24WIDGET_SIGNATURE_VERSION="2",
        )
    assert error_of(response) == (400, "bad_request")
    assert not InboundMessage.objects.exists() and nothing_reached_bitrix24(b24, standin, before)


@pytest.fixture
def second_channel(client, frame, standin, receiver):
    """Another portal's channel on the same line number: (row, secret, stand-in portal)."""
    other = standin.add_portal()
    do_install(client, other)
    answer = act(frame, other, "connect", webhook_url=receiver.url)
    assert answer.status_code == 200, answer.content
    return Channel.objects.get(public_id=answer.json()["channel"]["id"]), answer.json()["secret"], other


def test_a_secret_opens_only_its_own_channel(
    client, frame, channel, second_channel, standin, sink, django_capture_on_commit_callbacks
):
    """Administrator row: a channel's secret is refused on any other channel (another portal's included), a
    rotated secret is refused at once, and a read report cannot name another channel's operator message."""
    row, secret, b24 = channel
    other_row, other_secret, other = second_channel
    assert error_of(signed(client, other_row, secret, message("m1"))) == (401, "bad_signature")
    assert error_of(signed(client, row, other_secret, message("m1"))) == (401, "bad_signature")
    # An operator message of the first channel; the second channel's holder names it in a read report.
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m1")).status_code == 202
    message_id, _ = imc.operator_reply(b24, imc.conversations(b24)[0]["chat_id"], "hello", handlers=[sink.url])
    with django_capture_on_commit_callbacks(execute=True):
        sink.relay(client)
    report = {"action": "read", "chat": {"id": "chat-1"}, "user": {"id": "u-1"}, "message": {"id": str(message_id)}}
    assert error_of(signed(client, other_row, other_secret, report)) == (404, "unknown_message")
    assert other.calls("imconnector.send.status.reading") == b24.calls("imconnector.send.status.reading") == 0
    # Rotation: the old secret stops working at once, the new one works.
    rotated = act(frame, b24, "rotate").json()["secret"]
    assert error_of(signed(client, row, secret, message("m2"))) == (401, "bad_signature")
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, rotated, message("m2")).status_code == 202
    assert not InboundMessage.objects.filter(channel=other_row).exists()


def test_a_timestamp_of_non_ascii_digits_is_a_401_not_a_500(channel):
    """Ordinary user row (knows the endpoint): no header makes the channel API answer 5xx."""
    row, secret, b24 = channel
    response = Client(raise_request_exception=False).post(
        f"/channels/{row.public_id}/messages",
        b"{}",
        content_type="application/json",
        HTTP_X_B24WIDGET_TIMESTAMP="\u00b2",
        HTTP_X_B24WIDGET_SIGNATURE="sha256=00",
    )
    assert response.status_code == 401


# --- SETTING_CONNECTOR, opened through POST /placement/ ----------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [{"CONNECTOR": "telegrambot"}, {"LINE": "1 OR 1=1"}, {"LINE": ""}, {"LINE": "12345678901"}],
    ids=["connector", "line_sql", "no_line", "long_line"],
)
def test_a_malformed_settings_open_is_400_before_any_verification(frame, installed, standin, options):
    """Stranger row: an unknown connector or a LINE that is not 1-10 digits costs no OAuth request."""
    portal, b24 = installed
    fields = setting_connector_post(b24, **options)
    fields["AUTH_ID"] = "forged"
    before = counters(b24, standin)
    response = frame.post("/placement/", fields)
    assert response.status_code == 400
    assert response["Content-Security-Policy"] == f"frame-ancestors http://{b24.domain}"
    assert nothing_reached_bitrix24(b24, standin, before)


def test_a_flood_of_forged_settings_opens_is_refused_within_the_verification_budget(
    frame, installed, standin, settings
):
    """Stranger row: the same per-portal budget as every placement (B24_VERIFY_BURST, then
    B24_VERIFY_PER_MINUTE); past it a 429 at once, no OAuth request."""
    settings.B24_VERIFY_BURST, settings.B24_VERIFY_PER_MINUTE = 5, 1
    portal, b24 = installed
    before = len(standin.server_requests)
    statuses = []
    for n in range(60):
        fields = setting_connector_post(b24, user_id="2")
        fields["AUTH_ID"] = f"{n:032x}"
        statuses.append(frame.post("/placement/", fields).status_code)
    assert statuses.count(403) == 5 and statuses.count(429) == 55
    assert len(standin.server_requests) - before == 5
    assert not Channel.objects.exists()


def test_an_ordinary_user_sees_the_channel_but_not_its_secret_and_changes_nothing(frame, channel):
    """Ordinary user row: the page shows the channel's name and inbound endpoint (read-only, no buttons);
    never the secret nor the webhook address; opening it writes nothing and calls no imconnector method."""
    row, secret, b24 = channel
    calls = {m: b24.calls(m) for m in ("imconnector.activate", "imconnector.connector.data.set", "imconnector.status")}
    state = Channel.objects.values_list("state", "secret", "webhook_url", "name").get(pk=row.pk)
    response, _auth = open_settings(frame, b24, user_id="2", ACTIVE_STATUS=True, CONNECTION_STATUS=True)
    page = response.content.decode()
    assert response.status_code == 200 and 'id="admin-only"' in page
    assert f"/channels/{row.public_id}/messages" in page and 'value="Site chat"' in page
    assert secret not in page and row.webhook_url not in page
    for button in ('id="connect"', 'id="save"', 'id="rotate"', 'id="disconnect"'):
        assert button not in page
    for field in ("channel-name", "webhook-url"):
        [tag] = re.findall(rf'<input [^>]*id="{field}"[^>]*>', page)
        assert " disabled" in tag, tag
    assert Channel.objects.values_list("state", "secret", "webhook_url", "name").get(pk=row.pk) == state
    assert {m: b24.calls(m) for m in calls} == calls


def test_the_posted_connector_state_does_not_make_a_line_look_connected(frame, installed):
    """Ordinary user row: PLACEMENT_OPTIONS flags come from the POST; the page's state comes from our rows
    (only ERROR_STATUS shows, as a badge)."""
    portal, b24 = installed
    response, _auth = open_settings(
        frame, b24, STATUS=True, ACTIVE_STATUS=True, CONNECTION_STATUS=True, REGISTER_STATUS=True, ERROR_STATUS=True
    )
    page = response.content.decode()
    assert 'id="channel-state">not connected<' in page and "connect" in visible_ids(page)
    assert "inbound-url" not in visible_ids(page) and 'id="error-status"' in page


def test_an_administrator_sees_only_their_own_portals_channel(frame, channel, second_channel, standin):
    """Administrator row: the channel shown is the one of the verified portal, never another portal's on the
    same connector and line number."""
    row, secret, b24 = channel
    other_row, other_secret, other = second_channel
    third = standin.add_portal()
    do_install(frame, third)
    response, _auth = open_settings(frame, third)
    page = response.content.decode()
    assert 'id="channel-state">not connected<' in page and "connect" in visible_ids(page)
    assert str(row.public_id) not in page and str(other_row.public_id) not in page
    mine, _auth = open_settings(frame, other)
    assert str(other_row.public_id) in mine.content.decode() and str(row.public_id) not in mine.content.decode()


# --- the outbound webhook (openlines/outbound.py) ----------------------------------------------------------------
def _reply(client, b24, sink, django_capture_on_commit_callbacks, text="Here is your answer"):
    """A customer writes, an operator answers: the reply's OutboundMessage after the delivery attempt."""
    with django_capture_on_commit_callbacks(execute=True):
        imc.operator_reply(b24, imc.conversations(b24)[0]["chat_id"], text, handlers=[sink.url])
        sink.relay(client)
    return OutboundMessage.objects.get()


@pytest.fixture
def conversation(client, channel, django_capture_on_commit_callbacks):
    row, secret, b24 = channel
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m1", "Hi")).status_code == 202
    return row, secret, b24


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("https://example.com:25/hook?token=x", True),
        ("https://203.0.113.7/hook", False),  # TEST-NET-3: documentation, not global
        ("https://8.8.8.8/hook", True),
        ("http://example.com/hook", False),
        ("ftp://example.com/hook", False),
        ("https://localhost/hook", False),
        ("https://[::1]/hook", False),
        ("https://[::ffff:127.0.0.1]/hook", False),
        ("https://[64:ff9b::7f00:1]/hook", False),  # NAT64 of 127.0.0.1: the IPv4 address inside decides
        ("https://[64:ff9b::808:808]/hook", True),  # NAT64 of 8.8.8.8
        ("https://[64:ff9b:1::1]/hook", False),  # NAT64 local use: refused outright
        ("https://[2002:c0a8:101::]/hook", False),  # 6to4 of 192.168.1.1
        ("https://[2002:808:808::]/hook", True),  # 6to4 of 8.8.8.8
        ("https://[::7f00:1]/hook", False),  # IPv4-compatible 127.0.0.1
        ("https://[2001:0::1]/hook", False),  # Teredo
        ("https://169.254.169.254/latest/meta-data/", False),
        ("https://0.0.0.0/hook", False),
        ("https://100.64.0.1/hook", False),
        ("https://192.168.1.1/hook", False),
        ("https://metadata.google.internal/hook", False),
        ("https://printer.local/hook", False),
        ("https://intranet/hook", False),
        ("https://user:pass@example.com/hook", False),
        ("https://example.com/hook#part", False),
        ("https://example.com:99999/hook", False),
    ],
)
def test_in_production_a_webhook_url_must_be_public_https(frame, installed, settings, url, allowed):
    """Administrator row: the save-time check (no DNS): https, a host, no credentials, no fragment, a valid
    port, and an address or name that is not loopback, private, link-local, shared or reserved."""
    settings.OPENLINES_ALLOW_PRIVATE_WEBHOOKS = False
    portal, b24 = installed
    answer = act(frame, b24, "connect", webhook_url=url)
    if allowed:
        assert answer.status_code == 200 and Channel.objects.get().webhook_url == url
    else:
        assert error_of(answer) == (400, "bad_webhook_url") and not Channel.objects.exists()


@pytest.mark.parametrize("private", [False, True], ids=["production", "private_allowed"])
@pytest.mark.parametrize(
    "url, stored",
    [
        (f"https://{'a' * 63}.example.com/hook", f"https://{'a' * 63}.example.com/hook"),
        ("https://bücher.example/hook?x=1", "https://xn--bcher-kva.example/hook?x=1"),  # IDNA 2008, UTS 46
        ("https://Straße.example:8443/hook", "https://xn--strae-oqa.example:8443/hook"),  # not "strasse" (2003)
        (f"https://{'a' * 64}.example.com/hook", None),  # a label of 64
        (f"https://{'.'.join(['a' * 63] * 4)}.com/hook", None),  # 260 in all
        ("https://ex_ample.com/hook", None),
        ("https://☃.example/hook", None),  # a symbol IDNA 2008 does not admit
        ("https://-hooks.example.com/hook", None),
        ("https://hooks..example.com/hook", None),
        ("https://xn--zz.example.com/hook", None),  # not a valid A-label
        ("https://127.1/hook", None),  # the resolver reads it as 127.0.0.1; a last label of digits is no name
        ("https://0x7f.1/hook", None),
        ("https://[::1/hook", None),
    ],
    ids=[
        "label_63",
        "idn",
        "idn_eszett",
        "label_64",
        "name_260",
        "underscore",
        "symbol",
        "leading_hyphen",
        "empty_label",
        "bad_a_label",
        "numeric_last_label",
        "hex_and_digits",
        "unclosed_bracket",
    ],
)
def test_a_webhook_host_must_be_a_dns_name(frame, installed, settings, url, stored, private):
    """Administrator row: a name is a DNS name (labels of 1 to 63, 253 in all, IDNA 2008) at the save, whatever
    else is allowed, and it is stored in its ASCII form (what is resolved and sent)."""
    settings.OPENLINES_ALLOW_PRIVATE_WEBHOOKS = private
    portal, b24 = installed
    answer = act(frame, b24, "connect", webhook_url=url)
    if stored:
        assert answer.status_code == 200 and Channel.objects.get().webhook_url == stored
    else:
        assert error_of(answer) == (400, "bad_webhook_url") and not Channel.objects.exists()


def test_a_stored_webhook_url_is_checked_again_before_each_send(
    client, conversation, receiver, sink, settings, django_capture_on_commit_callbacks
):
    """Administrator row: a URL stored while private webhooks were allowed (or written by hand) is refused at
    send time once they are not; nothing is POSTed."""
    row, secret, b24 = conversation
    settings.OPENLINES_ALLOW_PRIVATE_WEBHOOKS = False
    reply = _reply(client, b24, sink, django_capture_on_commit_callbacks)
    assert (reply.state, reply.last_error) == (Delivery.FAILED, "https only")
    assert receiver.got == []


def test_a_name_that_resolves_to_loopback_is_refused_at_send(
    client, frame, installed, receiver, sink, settings, monkeypatch, django_capture_on_commit_callbacks
):
    """Administrator row: the save-time check does no DNS, so a public-looking name is stored; before each send
    the host is resolved (by a stubbed getaddrinfo here, to 127.0.0.1, where the receiver listens) and the POST
    refused. ("127.1", which the resolver reads as 127.0.0.1, is no DNS name: refused at the save already.)"""
    settings.OPENLINES_ALLOW_PRIVATE_WEBHOOKS = False
    portal, b24 = installed
    port = int(receiver.url.split(":")[2].split("/")[0])
    real = socket.getaddrinfo

    def resolve(host, port, *args, **kwargs):
        if host == "hook.example.com":
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    reply = _connected_and_replied(
        client, frame, b24, sink, django_capture_on_commit_callbacks, f"https://hook.example.com:{port}/hook"
    )
    assert (reply.state, reply.last_error) == (Delivery.FAILED, "the host resolves to a non-public address")
    assert receiver.tried == []


def _connected_and_replied(client, frame, b24, sink, capture, webhook_url):
    """Connect line 1 with `webhook_url` (the save does no DNS), a customer writes, the operator replies:
    the reply's outbound row after the send was tried."""
    answer = act(frame, b24, "connect", webhook_url=webhook_url)
    assert answer.status_code == 200
    row, secret = Channel.objects.get(), answer.json()["secret"]
    with capture(execute=True):
        assert signed(client, row, secret, message("m1", "Hi")).status_code == 202
    return _reply(client, b24, sink, capture)


def test_a_name_that_resolves_to_nat64_loopback_is_refused_at_send(
    client, frame, installed, sink, settings, monkeypatch, django_capture_on_commit_callbacks
):
    """Administrator row: a public name that resolves (a stubbed getaddrinfo here) to 64:ff9b::7f00:1, NAT64 of
    127.0.0.1 and global to Python 3.11's `is_global`, is refused before each send as 127.0.0.1 is."""
    settings.OPENLINES_ALLOW_PRIVATE_WEBHOOKS = False
    portal, b24 = installed
    real = socket.getaddrinfo

    def resolve(host, port, *args, **kwargs):
        if host == "hook.example.com":
            return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("64:ff9b::7f00:1", port, 0, 0))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    reply = _connected_and_replied(
        client, frame, b24, sink, django_capture_on_commit_callbacks, "https://hook.example.com/hook"
    )
    assert (reply.state, reply.last_error) == (Delivery.FAILED, "the host resolves to a non-public address")


class _Redirecting(QuietHandler):
    target = ""

    def do_POST(self):  # noqa: N802
        self.body()
        self.send_response(307)
        self.send_header("Location", self.target)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_redirect_from_the_webhook_is_not_followed(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    """Administrator row: a webhook that answers 307 to an inside address does not get us there; the
    message is retried later like any failure."""
    row, secret, b24 = conversation
    with local_server(type("Redirect", (_Redirecting,), {"target": receiver.url})) as server:
        Channel.objects.filter(pk=row.pk).update(webhook_url=f"{server.url}/hook")
        reply = _reply(client, b24, sink, django_capture_on_commit_callbacks)
    assert (reply.state, reply.last_error) == (Delivery.FAILED, "HTTP 307")
    assert receiver.got == []


def test_a_webhook_answering_a_non_ascii_length_is_an_ordinary_failure(
    client, conversation, sink, django_capture_on_commit_callbacks
):
    """Administrator row: nothing the webhook answers escapes the retry schedule."""
    row, secret, b24 = conversation

    class Odd(QuietHandler):
        def do_POST(self):  # noqa: N802
            self.body()
            self.send_response(200)
            self.send_header("Content-Length", "\u00b2")
            self.end_headers()

    with local_server(Odd) as server:
        Channel.objects.filter(pk=row.pk).update(webhook_url=f"{server.url}/hook")
        reply = _reply(client, b24, sink, django_capture_on_commit_callbacks)
    assert reply.attempts == 1 and reply.state in (Delivery.SENT, Delivery.FAILED)


def _forged_connector_event(b24, event, data):
    """What an ordinary user can build: the portal's APPLICATION_TOKEN (in every placement POST they get)
    and their own access token; the event's form fields as Bitrix24 would send them."""
    users_open = b24.placement_post(user_id="2")
    payload = b24.event_payload(event, data=data, with_tokens=False, application_token=users_open["APPLICATION_TOKEN"])
    payload["auth[access_token]"] = users_open["AUTH_ID"]
    return list(payload.items())


def _genuine_reply(client, b24, sink, capture, text, chat_index=0):
    """An operator's real reply, relayed as Bitrix24 sends it; (im chat id, im message id)."""
    chat_id = imc.conversations(b24)[chat_index]["chat_id"]
    message_id, _ = imc.operator_reply(b24, chat_id, text, handlers=[sink.url])
    with capture(execute=True):
        [outcome] = sink.relay(client)
    assert outcome == "1 message(s) queued for the webhook"
    return chat_id, message_id


def _forged(b24, event, chat_id, message_id, chat="chat-1", text="Pay to IBAN X"):
    return _forged_connector_event(
        b24,
        event,
        {
            "CONNECTOR": CONNECTOR,
            "LINE": "1",
            "MESSAGES": [
                {
                    "im": {"chat_id": str(chat_id), "message_id": str(message_id)},
                    "message": {"user_id": "1", "text": text},
                    "chat": {"id": chat},
                }
            ],
        },
    )


def test_an_ordinary_user_cannot_make_us_post_a_forged_operator_message(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    """Ordinary user row: a message the operator never wrote is not signed and POSTed to the outside system.
    The portal is asked (imopenlines.session.history.get) and shows no such message in the chat; and a chat id
    that is not one of this channel's conversations is refused before the portal is asked."""
    row, secret, b24 = conversation
    chat_id = imc.conversations(b24)[0]["chat_id"]
    history_calls = b24.calls("imopenlines.session.history.get")
    sink.got = [
        _forged(b24, "ONIMCONNECTORMESSAGEADD", chat_id, 777777),
        _forged(b24, "ONIMCONNECTORMESSAGEADD", 1, 777777),
    ]
    with django_capture_on_commit_callbacks(execute=True):
        in_chat, unknown_chat = sink.relay(client)
    assert in_chat.startswith("rejected: not confirmed by the portal") and "not in the conversation" in in_chat
    assert "not a conversation of this channel" in unknown_chat
    assert b24.calls("imopenlines.session.history.get") == history_calls + 1
    assert receiver.got == [] and not OutboundMessage.objects.exists()


def test_a_forged_event_about_a_genuine_message_relays_only_what_the_operator_wrote(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    """Ordinary user row: with a genuine message id, a forged add or edit cannot change its text (the text
    comes from the portal), cannot send it to another customer's chat, and a forged delete of a message still
    in the chat is refused."""
    row, secret, b24 = conversation
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m2", "Hello too", chat="chat-2", user="u-2")).status_code == 202
    chat_id, message_id = _genuine_reply(
        client, b24, sink, django_capture_on_commit_callbacks, "Your order ships today"
    )
    other_chat = imc.conversations(b24)[1]["chat_id"]
    sink.got = [
        _forged(b24, "ONIMCONNECTORMESSAGEUPDATE", chat_id, message_id),  # the text is the portal's
        _forged(b24, "ONIMCONNECTORMESSAGEADD", chat_id, message_id, chat="chat-2"),  # to another customer
        _forged(b24, "ONIMCONNECTORMESSAGEADD", other_chat, message_id, chat="chat-2"),  # claimed in their chat
        _forged(b24, "ONIMCONNECTORMESSAGEDELETE", chat_id, message_id),  # still in the chat
    ]
    with django_capture_on_commit_callbacks(execute=True):
        update, misdirected, other, delete = sink.relay(client)
    assert update == "0 message(s) queued for the webhook"  # the portal's text: the add relayed already
    assert "not a conversation of this channel" in misdirected
    assert "not in the conversation" in other
    assert "still in the conversation" in delete
    assert [(h["json"]["event"], h["json"]["chat"]["id"], h["json"]["message"]["text"]) for h in receiver.got] == [
        ("message.add", "chat-1", "Your order ships today")
    ]


def test_the_customers_own_message_is_not_relayed_as_an_operators(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    """Ordinary user row: the customer's message (written by the connector's user) is in the chat's history,
    but it is not an operator's reply."""
    row, secret, b24 = conversation
    [chat] = imc.conversations(b24)
    customers = chat["messages"][0]["im_message_id"]
    sink.got = [_forged(b24, "ONIMCONNECTORMESSAGEADD", chat["chat_id"], customers)]
    with django_capture_on_commit_callbacks(execute=True):
        [outcome] = sink.relay(client)
    assert "written by the customer" in outcome and receiver.got == []


def test_a_system_message_of_the_chat_is_not_relayed_as_an_operators(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    """Ordinary user row: Bitrix24's own messages in the chat (senderid 0, e.g. the CRM's "A new lead has been
    created" with the customer's data) are in the history but no operator wrote them; the connector asks for
    no system messages, so Bitrix24 never sends them to us."""
    row, secret, b24 = conversation
    chat_id = imc.conversations(b24)[0]["chat_id"]
    system = imc.system_message(b24, chat_id, "[b]A new lead has been created[/b] Phone: +11234567890")
    sink.got = [_forged(b24, "ONIMCONNECTORMESSAGEADD", chat_id, system)]
    with django_capture_on_commit_callbacks(execute=True):
        [outcome] = sink.relay(client)
    assert "a system message, not an operator's" in outcome and receiver.got == []


def test_a_forged_delete_of_a_message_without_a_recorded_session_is_refused(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    """Ordinary user row: a deletion is believed only when the message is gone from the session it was seen
    in; for a message relayed before sessions were recorded (im_session_id empty), the chat's last session
    proves nothing, so the delete is refused."""
    row, secret, b24 = conversation
    chat_id, message_id = _genuine_reply(
        client, b24, sink, django_capture_on_commit_callbacks, "Your order ships today"
    )
    OutboundMessage.objects.update(im_session_id="")
    imc.finish_dialog(b24, chat_id)
    with django_capture_on_commit_callbacks(execute=True):  # the customer writes again: a new session
        assert signed(client, row, secret, message("m9", "One more thing")).status_code == 202
    sink.got = [_forged(b24, "ONIMCONNECTORMESSAGEDELETE", chat_id, message_id)]
    with django_capture_on_commit_callbacks(execute=True):
        [outcome] = sink.relay(client)
    assert "no session recorded" in outcome
    assert [h["json"]["event"] for h in receiver.got] == ["message.add"]


def test_a_forged_delete_after_a_new_session_is_checked_in_the_messages_own_session(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    """Ordinary user row: the customer opened a new session, so the chat's last session lacks the reply; the
    deletion is checked in the session the reply was seen in, where it still is; nor does naming the
    message in another chat (one where it was never relayed) get a delete through."""
    row, secret, b24 = conversation
    chat_id, message_id = _genuine_reply(
        client, b24, sink, django_capture_on_commit_callbacks, "Your order ships today"
    )
    imc.finish_dialog(b24, chat_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m9", "One more thing")).status_code == 202
        assert signed(client, row, secret, message("m10", "Me too", chat="chat-2", user="u-2")).status_code == 202
    other_chat = next(c["chat_id"] for c in imc.conversations(b24) if c["chat_id"] != chat_id)
    pairs = _forged(b24, "ONIMCONNECTORMESSAGEDELETE", chat_id, message_id)
    pairs += [
        (k.replace("[MESSAGES][0]", "[MESSAGES][1]"), v.replace("chat-1", "chat-2") if k.endswith("[chat][id]") else v)
        for k, v in _forged(b24, "ONIMCONNECTORMESSAGEDELETE", other_chat, message_id)
        if "[MESSAGES][0]" in k
    ]
    sink.got = [pairs]
    with django_capture_on_commit_callbacks(execute=True):
        [outcome] = sink.relay(client)
    assert "still in the conversation" in outcome and "never relayed in this chat" in outcome, outcome
    assert [h["json"]["event"] for h in receiver.got] == ["message.add"]


def test_a_forged_event_with_malformed_messages_is_rejected_and_holds_up_no_genuine_reply(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    """Ordinary user row: MESSAGES that is a number (a JSON body) is refused as carrying no message; a genuine
    reply waiting in the inbox before it, whose confirmation looks at the waiting events, still goes out."""
    from urllib.parse import urlencode

    from inbox import queue as inbox
    from inbox.models import InboxItem

    row, secret, b24 = conversation
    chat_id = imc.conversations(b24)[0]["chat_id"]
    imc.operator_reply(b24, chat_id, "Genuine", handlers=[sink.url])
    [genuine] = sink.got
    assert (
        client.post("/events/", urlencode(genuine), content_type="application/x-www-form-urlencoded").status_code == 200
    )
    forged = {}
    for key, value in _forged(b24, "ONIMCONNECTORMESSAGEADD", chat_id, 1):
        if "[" in key:
            outer, inner = key.rstrip("]").split("[", 1)
            forged.setdefault(outer, {})[inner.split("]")[0]] = value
        else:
            forged[key] = value
    forged["data"] = {"CONNECTOR": CONNECTOR, "LINE": "1", "MESSAGES": 5}
    assert client.post("/events/", json.dumps(forged), content_type="application/json").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        inbox.process_pending()
    states = dict(InboxItem.objects.filter(event="ONIMCONNECTORMESSAGEADD").values_list("id", "state"))
    assert sorted(states.values()) == sorted([InboxItem.State.DONE, InboxItem.State.REJECTED]), states
    assert [h["json"]["message"]["text"] for h in receiver.got] == ["Genuine"]


def test_a_forged_event_asks_the_portal_about_at_most_three_chats(
    client, conversation, receiver, sink, settings, django_capture_on_commit_callbacks
):
    """Ordinary user row (the REST budget): an event naming messages in five of the channel's conversations
    makes us ask about three of them (each its last session; none has earlier ones); the rest are refused
    unasked."""
    row, secret, b24 = conversation
    with django_capture_on_commit_callbacks(execute=True):
        for i in range(2, 6):
            assert (
                signed(client, row, secret, message(f"m{i}", "Hi", chat=f"chat-{i}", user=f"u-{i}")).status_code == 202
            )
    chats = imc.conversations(b24)
    pairs = []
    for n, chat in enumerate(chats):
        pairs += [
            (k.replace("[MESSAGES][0]", f"[MESSAGES][{n}]"), chat["external_chat"] if k.endswith("[chat][id]") else v)
            for k, v in _forged(b24, "ONIMCONNECTORMESSAGEADD", chat["chat_id"], 900000 + n)
            if "[MESSAGES][0]" in k or n == 0
        ]
    before = b24.calls("imopenlines.session.history.get")
    sink.got = [pairs]
    with django_capture_on_commit_callbacks(execute=True):
        [outcome] = sink.relay(client)
    assert b24.calls("imopenlines.session.history.get") - before == 3
    assert outcome.count("more than 3 chats or sessions in one event") == 2, outcome
    assert receiver.got == []


CONFIRM_FAILED = "the portal could not confirm the message(s)"


@pytest.mark.parametrize(
    "error, status, outcome, attempts",
    [
        # a limit: later, at the portal's next slot, no attempt counted (tests/openlines/test_outbound.py has more)
        ("QUERY_LIMIT_EXCEEDED", 503, "pending: later: the portal's limit (QUERY_LIMIT_EXCEEDED)", 0),
        ("INTERNAL_SERVER_ERROR", 500, f"pending: {CONFIRM_FAILED}: INTERNAL_SERVER_ERROR", 1),
    ],
)
def test_an_operator_message_the_portal_cannot_confirm_for_now_is_retried_not_dropped(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks, settings, error, status, outcome, attempts
):
    """Nothing lost: Bitrix24 refusing the history call for now (a limit, or a server error longer than the client
    retries) leaves the event pending; the reply is relayed once the portal answers."""
    from django.utils import timezone

    from inbox import queue as inbox
    from inbox.models import InboxItem

    settings.B24_RATE_LIMIT_BURST, settings.B24_RATE_LIMIT_PER_SECOND = 5, 500.0  # short client waits
    row, secret, b24 = conversation
    chat_id = imc.conversations(b24)[0]["chat_id"]
    imc.operator_reply(b24, chat_id, "After the limit", handlers=[sink.url])
    b24.fail_next("imopenlines.session.history.get", error, status, times=20)
    with django_capture_on_commit_callbacks(execute=True):
        [answer] = sink.relay(client)
    assert answer == outcome
    assert InboxItem.objects.get(event="ONIMCONNECTORMESSAGEADD").attempts == attempts
    assert receiver.got == []
    b24._failures.clear()  # Bitrix24 is back
    InboxItem.objects.update(next_attempt_at=timezone.now())  # the wait is over
    with django_capture_on_commit_callbacks(execute=True):
        inbox.process_pending()
    assert InboxItem.objects.get(event="ONIMCONNECTORMESSAGEADD").state == InboxItem.State.DONE
    assert [h["json"]["message"]["text"] for h in receiver.got] == ["After the limit"]


def test_a_chat_whose_history_the_app_may_not_read_by_chat_id_is_read_by_session(
    client, conversation, receiver, sink, django_capture_on_commit_callbacks
):
    """The page's ACCESS_DENIED by CHAT_ID (the app's user is no participant of the chat): the page's advice,
    SESSION_ID, confirms it; it was dropped for good before (issue 23; tests/openlines/test_rights_change.py
    has the rest: the event's own token, and waiting when nobody may read)."""
    row, secret, b24 = conversation
    chat_id = imc.conversations(b24)[0]["chat_id"]
    imc.operator_reply(b24, chat_id, "Hello", handlers=[sink.url])
    b24.fail_next("imopenlines.session.history.get", "ACCESS_DENIED", 400)
    with django_capture_on_commit_callbacks(execute=True):
        [outcome] = sink.relay(client)
    assert outcome == "1 message(s) queued for the webhook"
    assert [h["json"]["message"]["text"] for h in receiver.got] == ["Hello"]


def test_an_ordinary_user_cannot_revoke_a_channel_with_a_forged_teardown_event(client, conversation, sink):
    """Ordinary user row (channel API): the channel keeps working unless Bitrix24 really removed it; the
    portal is asked (imconnector.status) before a teardown event is believed."""
    row, secret, b24 = conversation
    status_delete = _forged_connector_event(b24, "ONIMCONNECTORSTATUSDELETE", {"connector": CONNECTOR, "line": "1"})
    # on-im-connector-line-delete.md: data is the bare line id.
    line_delete = [
        (k, v) for k, v in _forged_connector_event(b24, "ONIMCONNECTORLINEDELETE", {}) if not k.startswith("data")
    ] + [("data", "1")]
    for pairs in (status_delete, line_delete):
        sink.got = [pairs]
        [outcome] = sink.relay(client)
        assert outcome.startswith("rejected: not confirmed by the portal"), outcome
        row.refresh_from_db()
        assert row.is_connected and row.secret == secret


def test_the_webhook_goes_to_the_address_checked_and_tls_is_verified_for_the_name(tmp_path):
    """Administrator row, DNS rebinding: the send connects to the address that passed the check (the name is not
    resolved again: `hooks.b24widget.test` resolves nowhere), with the name in Host, SNI and the certificate
    check; a certificate for another name is refused."""
    import requests

    from openlines import outbound
    from tests.tls import self_signed_context

    cert, context = self_signed_context(tmp_path, names=("hooks.b24widget.test",))
    got = []

    class Handler(QuietHandler):
        def do_POST(self):  # noqa: N802
            got.append((self.headers["Host"], self.path, self.body()))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with local_server(Handler, wrap=lambda sock: context.wrap_socket(sock, server_side=True)) as server:
        port = server.port
        url, host, session = outbound.pinned(f"https://hooks.b24widget.test:{port}/in?x=1", "127.0.0.1")
        assert url == f"https://127.0.0.1:{port}/in?x=1" and host == {"Host": f"hooks.b24widget.test:{port}"}
        with session:
            answer = session.post(url, headers=host, data=b"{}", verify=str(cert), timeout=5)
        assert answer.status_code == 200
        assert got == [(f"hooks.b24widget.test:{port}", "/in?x=1", b"{}")]
        url, host, session = outbound.pinned(f"https://elsewhere.b24widget.test:{port}/in", "127.0.0.1")
        with session, pytest.raises(requests.exceptions.SSLError):
            session.post(url, headers=host, data=b"{}", verify=str(cert), timeout=5)
        assert len(got) == 1


def test_a_channels_signed_requests_have_a_budget_and_a_strangers_do_not_spend_it(
    client, channel, settings, django_capture_on_commit_callbacks
):
    """Administrator row (the secret's holder): past OPENLINES_INBOUND_BURST signed requests (then
    OPENLINES_INBOUND_PER_MINUTE) the channel answers 429 rate_limited with Retry-After, nothing stored; a
    stranger's badly signed requests are refused before the budget and never spend it."""
    settings.OPENLINES_INBOUND_PER_MINUTE, settings.OPENLINES_INBOUND_BURST = 6, 3
    row, secret, b24 = channel
    for i in range(10):
        assert signed(client, row, secret, message(f"x{i}"), signature="sha256=" + "0" * 64).status_code == 401
    with django_capture_on_commit_callbacks(execute=True):
        answers = [signed(client, row, secret, message(f"m{i}")) for i in range(4)]
    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    refused = answers[-1]
    assert refused.json()["error"] == "rate_limited" and 1 <= int(refused["Retry-After"]) <= 10
    assert InboundMessage.objects.count() == 3


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/f.pdf",
        "https://10.0.0.5/f.pdf",
        "https://[::1]/f.pdf",
        "https://169.254.169.254/latest/meta-data/",
        "https://224.0.0.1/f.pdf",
        "https://files.internal/f.pdf",
        "https://intranet/f.pdf",
        "https://user:pass@shop.example.com/f.pdf",
        "ftp://shop.example.com/f.pdf",
        "https://shop.example.com:99999/f.pdf",
    ],
)
def test_urls_in_an_inbound_message_must_name_a_public_host(client, channel, url):
    """Bitrix24 fetches a message's files and pictures itself and shows its links to operators: a private,
    loopback, link-local or multicast host (or a name no public resolver knows) is a 400, and nothing is sent."""
    row, secret, b24 = channel
    for body in (
        message() | {"message": {**message()["message"], "files": [{"url": url, "name": "f.pdf"}]}},
        message() | {"user": {**message()["user"], "picture": {"url": url}}},
        message() | {"chat": {**message()["chat"], "url": url}},
    ):
        answer = signed(client, row, secret, body)
        assert answer.status_code == 400, (url, answer.content)
        assert "public http(s) URL" in answer.json()["error_description"]
    assert not InboundMessage.objects.filter(channel=row).exists()


def test_private_message_urls_are_admitted_when_the_deployment_says_so(client, channel, settings):
    settings.OPENLINES_ALLOW_PRIVATE_MESSAGE_URLS = True
    row, secret, b24 = channel
    body = message() | {"message": {**message()["message"], "files": [{"url": "http://10.0.0.5/f.pdf", "name": "f"}]}}
    assert signed(client, row, secret, body).status_code == 202
