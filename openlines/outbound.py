"""The signed webhook out: an operator's message POSTed to the line's configured URL.

Addresses: https and a public host only; OPENLINES_ALLOW_PRIVATE_WEBHOOKS admits http and loopback or
private hosts (local systems, the sandbox) and is refused by the deploy check. The host's addresses are
resolved again before each send, so a name that later points inside the network is refused too.
Each POST has a total deadline and an answer cap (portals.http.send).
"""
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from urllib.parse import urlsplit

from django.conf import settings

from portals import http

SIGNATURE_HEADER = "X-B24Widget-Signature"
TIMESTAMP_HEADER = "X-B24Widget-Timestamp"


class BadWebhookUrl(ValueError):
    """An address the channel does not send to."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>." + body): the same scheme both ways."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _private_ok() -> bool:
    return settings.OPENLINES_ALLOW_PRIVATE_WEBHOOKS


def check_webhook_url(url: str) -> str:
    """The URL as stored, or BadWebhookUrl (syntax, scheme, host; no DNS here)."""
    if len(url) > 500:
        raise BadWebhookUrl("longer than 500 characters")
    parts = urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and _private_ok()):
        raise BadWebhookUrl("https only")
    if parts.username or parts.password or parts.fragment or not parts.hostname:
        raise BadWebhookUrl("a host, no credentials, no fragment")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise BadWebhookUrl("malformed port") from None
    if not _private_ok() and not _public_name(parts.hostname):
        raise BadWebhookUrl("not a public host")
    return url


def _public_name(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        return "." in host and not host.endswith((".localhost", ".local", ".internal", ".localdomain", ".lan"))


def _resolves_public(host: str, port: int) -> bool:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_global for info in infos)


def post(url: str, secret: str, payload: dict) -> http.Answer:
    """POST the signed payload; raises http.HttpFailure (unreachable, deadline, too_large) or BadWebhookUrl."""
    check_webhook_url(url)
    parts = urlsplit(url)
    if not _private_ok() and not _resolves_public(parts.hostname, parts.port or 443):
        raise BadWebhookUrl("the host resolves to a non-public address")
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    timestamp = str(int(time.time()))
    return http.send(
        "POST", url, data=body,
        headers={"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
                 SIGNATURE_HEADER: sign(secret, timestamp, body), "User-Agent": "b24widget-openlines"},
        connect_timeout=min(5.0, settings.OPENLINES_WEBHOOK_DEADLINE), read_timeout=settings.OPENLINES_WEBHOOK_DEADLINE,
        deadline=settings.OPENLINES_WEBHOOK_DEADLINE, max_bytes=settings.OPENLINES_WEBHOOK_MAX_BYTES,
    )
