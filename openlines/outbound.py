"""The signed webhook out: an operator's message POSTed to the line's configured URL.

Addresses: https and a public host only; OPENLINES_ALLOW_PRIVATE_WEBHOOKS admits http and loopback or
private hosts (local systems, the sandbox) and is refused by the deploy check. The host's addresses are
resolved again before each send, so a name that later points inside the network is refused too, and the
connection goes to the address that was checked (`pinned`: TLS still verifies the certificate for the
name), so a name that answers differently a moment later (DNS rebinding) cannot send it elsewhere.
Each POST has a total deadline and an answer cap (portals.http.send). The status line decides
(`verdict`): a 2xx is delivered whatever its body does (too large, too slow, broken off: only its first
bytes are read, for the outside system's own id of the message); 408, 429, 5xx and other codes are
tried again; any other 4xx is the outside system refusing the message, which retrying would not change.
"""

import hashlib
import hmac
import ipaddress
import json
import re
import socket
import time
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import idna
import requests
from django.conf import settings
from requests.adapters import HTTPAdapter

from bitrix24 import http
from bitrix24.addresses import is_public

SIGNATURE_HEADER = "X-B24Widget-Signature"
TIMESTAMP_HEADER = "X-B24Widget-Timestamp"
VERSION_HEADER = "X-B24Widget-Signature-Version"
# Who signed (version 2 signs it): the outside system's requests to the channel, or our webhooks to it.
INBOUND, WEBHOOK = "inbound", "webhook"


DELIVERED, REFUSED, RETRY = "delivered", "refused", "retry"
_RETRIED_4XX = frozenset({408, 429})  # Request Timeout, Too Many Requests: the request was fine
_ID_MAX = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BadWebhookUrl(ValueError):
    """An address the channel does not send to."""


def verdict(status: int) -> str:
    """DELIVERED (2xx), REFUSED (4xx but 408 and 429: not retried) or RETRY (the rest) for a webhook answer."""
    if 200 <= status < 300:
        return DELIVERED
    if 400 <= status < 500 and status not in _RETRIED_4XX:
        return REFUSED
    return RETRY


def outside_message_id(answer: http.Answer) -> str:
    """The outside system's id for the message, when its answer is JSON `{"message": {"id": ...}}`; else ""."""
    data = answer.json() if answer.complete else None
    message = data.get("message") if isinstance(data, dict) else None
    value = message.get("id") if isinstance(message, dict) else None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return ""
    value = str(value)
    return value if 0 < len(value) <= _ID_MAX and not _CONTROL.search(value) else ""


def retry_after(answer: http.Answer) -> timedelta | None:
    """A Retry-After in seconds (at most an hour), as a 429 or 503 may carry; the date form is not used."""
    value = str(answer.headers.get("Retry-After") or "").strip()
    return timedelta(seconds=min(int(value), 3600)) if value.isascii() and value.isdigit() and len(value) < 8 else None


def sign(secret: str, timestamp: str, body: bytes, direction: str) -> str:
    """Version 2: `sha256=<hex>` of HMAC-SHA256(secret, "v2.<direction>.<timestamp>." + body), `direction` being
    INBOUND or WEBHOOK, so a signature made for one direction never verifies in the other (a captured webhook
    POST is no request to the channel)."""
    assert direction in (INBOUND, WEBHOOK), direction
    message = f"v2.{direction}.{timestamp}.".encode() + body
    return f"sha256={hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()}"


def sign_v1(secret: str, timestamp: str, body: bytes) -> str:
    """Version 1, the same both ways: HMAC-SHA256(secret, "<timestamp>." + body). Accepted on requests to the
    channel until OPENLINES_SIGNATURE_V1_UNTIL (the migration window); never sent."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _private_ok() -> bool:
    return settings.OPENLINES_ALLOW_PRIVATE_WEBHOOKS


def check_webhook_url(url: str) -> str:
    """The URL as stored, or BadWebhookUrl (syntax, scheme, host; no DNS here). A name is a DNS name (see
    `dns_name`); the URL is returned with it in its ASCII form, which is what is resolved and sent."""
    if len(url) > 500:
        raise BadWebhookUrl("longer than 500 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a malformed port, or a bracketed host that is no IPv6 address
        raise BadWebhookUrl("malformed address or port") from None
    if parts.scheme != "https" and not (parts.scheme == "http" and _private_ok()):
        raise BadWebhookUrl("https only")
    if parts.username or parts.password or parts.fragment or not parts.hostname:
        raise BadWebhookUrl("a host, no credentials, no fragment")
    host = parts.hostname
    if not _is_address(host):
        host = dns_name(host)
        if host != parts.hostname:
            url = urlunsplit((parts.scheme, f"{host}:{port}" if port else host, parts.path, parts.query, ""))
    if not _private_ok() and not _public_name(host):
        raise BadWebhookUrl("not a public host")
    return url


def check_message_url(url: str) -> str:
    """A URL an outside system puts in a message (a file, the customer's picture, the chat's page), or
    BadWebhookUrl. Bitrix24 fetches files and pictures itself and shows every link to operators, so in
    production it must be an http(s) URL of a public host, checked as a webhook's host is (no DNS here);
    OPENLINES_ALLOW_PRIVATE_MESSAGE_URLS admits private hosts for a self-hosted portal that needs them."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError:
        raise BadWebhookUrl("malformed address or port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadWebhookUrl("an http(s) URL with a host")
    if parts.username or parts.password:
        raise BadWebhookUrl("no credentials in the URL")
    if settings.OPENLINES_ALLOW_PRIVATE_MESSAGE_URLS:
        return url
    host = parts.hostname if _is_address(parts.hostname) else dns_name(parts.hostname)
    if not _public_name(host):
        raise BadWebhookUrl("not a public host")
    return url


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def dns_name(host: str) -> str:
    """`host` as an ASCII DNS name, or BadWebhookUrl: IDNA 2008 with the UTS 46 mapping (the `idna` package, as
    browsers and registries have it; Python's own codec is IDNA 2003), labels of 1 to 63 characters, at most 253
    in all, and a last label that is not all digits (`127.1` is an address to the resolver, not a name)."""
    try:
        name = idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise BadWebhookUrl("not a valid host name") from None
    labels = name.removesuffix(".").split(".")
    if len(name.removesuffix(".")) > 253 or not all(0 < len(label) <= 63 for label in labels):
        raise BadWebhookUrl("not a valid host name")
    if labels[-1].isdigit():
        raise BadWebhookUrl("not a valid host name")
    return name


def _public_name(host: str) -> bool:
    try:
        return is_public(ipaddress.ip_address(host))
    except ValueError:
        host = host.removesuffix(".")  # "hooks.local." is "hooks.local"
        return "." in host and not host.endswith((".localhost", ".local", ".internal", ".localdomain", ".lan"))


def _public_addresses(host: str | None, port: int) -> list[str]:
    """The host's addresses when every one of them is public (portals.addresses.is_public), else []."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):  # UnicodeError: a name the resolver's IDNA codec cannot encode
        return []
    addresses = [str(info[4][0]) for info in infos]  # an IPv4 or IPv6 sockaddr: (host, port, ...)
    return addresses if addresses and all(is_public(ipaddress.ip_address(a)) for a in addresses) else []


class _PinnedAdapter(HTTPAdapter):
    """Connects to the address in the URL, but speaks TLS (SNI and the certificate check) for `hostname`."""

    def __init__(self, hostname: str | None):
        self.hostname = hostname
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs):
        kwargs.update(server_hostname=self.hostname, assert_hostname=self.hostname)
        super().init_poolmanager(*args, **kwargs)


def pinned(url: str, address: str) -> tuple[str, dict[str, str], requests.Session]:
    """(the URL with `address` for its host, the Host header, a session that verifies TLS for the name)."""
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    session = requests.Session()
    session.trust_env = False  # an environment proxy would resolve the name again
    session.mount("https://", _PinnedAdapter(parts.hostname))
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), {"Host": parts.netloc}, session


def post(url: str, secret: str, payload: dict) -> http.Answer:
    """POST the signed payload; raises http.HttpFailure (unreachable, or no status line in time) or BadWebhookUrl.

    Once the status line is in, the answer is returned: at most OPENLINES_WEBHOOK_MAX_BYTES of its body are
    read, within the deadline, and a body past either is cut (`Answer.complete` False), never a failure."""
    url = check_webhook_url(url)
    parts = urlsplit(url)
    target = url
    host: dict[str, str] = {}
    via: requests.Session | None = None
    if not _private_ok():
        addresses = _public_addresses(parts.hostname, parts.port or 443)
        if not addresses:
            raise BadWebhookUrl("the host resolves to a non-public address")
        target, host, via = pinned(url, addresses[0])
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    timestamp = str(int(time.time()))
    try:
        return http.send(
            "POST",
            target,
            data=body,
            via=via,
            headers={
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(secret, timestamp, body, WEBHOOK),
                VERSION_HEADER: "2",
                "User-Agent": "b24widget-openlines",
                **host,
            },
            connect_timeout=min(5.0, settings.OPENLINES_WEBHOOK_DEADLINE),
            read_timeout=settings.OPENLINES_WEBHOOK_DEADLINE,
            deadline=settings.OPENLINES_WEBHOOK_DEADLINE,
            max_bytes=settings.OPENLINES_WEBHOOK_MAX_BYTES,
            partial=True,
        )
    finally:
        if via is not None:
            via.close()
