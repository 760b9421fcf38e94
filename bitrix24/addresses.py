"""Portal addresses: what a domain or REST endpoint may look like, and how to compare them.

Cloud portals are `name.bitrix24.<zone>` over HTTPS. With B24_ALLOW_HTTP_PORTALS on, plain-HTTP
addresses with a port (`127.0.0.1:8123`, on-premise test portals, the local stand-in) are admitted too.
"""

import ipaddress
import re
from typing import Protocol
from urllib.parse import urlsplit

from django.conf import settings

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_PORT = re.compile(r"^[0-9]{1,5}$")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: the IPv4 address in the last 32 bits
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215 local use: each network places the IPv4 address
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated (RFC 4291); also holds :: and ::1
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT (RFC 2765): the IPv4 address in the last 32 bits
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")  # deprecated (RFC 3879), a private range in practice


class BadAddress(ValueError):
    """An address that is not a portal address this deployment accepts."""


class Located(Protocol):
    """A portal as far as its address goes (a stored portal; the client's credentials)."""

    @property
    def client_endpoint(self) -> str: ...

    @property
    def domain(self) -> str: ...


def normalize_domain(value: str) -> str:
    """Return `host` or `host:port` in lower case, or raise BadAddress."""
    if not isinstance(value, str):
        raise BadAddress("domain must be a string")
    domain = value.strip().lower().rstrip(".")
    if domain.endswith(":443"):
        domain = domain[:-4].rstrip(".")  # the https default port, as some portals send DOMAIN
    host, sep, port = domain.partition(":")
    if not _HOSTNAME.match(host):
        raise BadAddress("not a valid host name")
    if sep:
        if not settings.B24_ALLOW_HTTP_PORTALS:
            raise BadAddress("a port in the portal address is only allowed with B24_ALLOW_HTTP_PORTALS")
        if not _PORT.match(port) or not 0 < int(port) < 65536:
            raise BadAddress("not a valid port")
    return domain


def scheme_allowed(scheme: str) -> bool:
    return scheme == "https" or (scheme == "http" and settings.B24_ALLOW_HTTP_PORTALS)


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether the public internet routes to `address`.

    An IPv6 address that carries an IPv4 one (IPv4-mapped, IPv4-translated, 6to4, NAT64, IPv4-compatible) is
    judged by the IPv4 address inside: Python 3.11's `is_global` counts 64:ff9b::7f00:1 (127.0.0.1) and the
    like as global. Where the IPv4 address cannot be read reliably (the NAT64 local-use prefix, Teredo) it
    is refused, and so is the deprecated site-local range fec0::/10. Multicast, reserved and unspecified
    addresses are never public (`is_global` counts multicast as global in Python 3.11).
    """
    if address.version == 6:
        if address.teredo or address in _NAT64_LOCAL or address in _SITE_LOCAL:
            return False
        inner = address.ipv4_mapped or address.sixtofour
        if inner is None and (address in _NAT64 or address in _IPV4_COMPATIBLE or address in _IPV4_TRANSLATED):
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None:
            return _routable(inner)
    return _routable(address)


def _routable(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """`is_global`, without the ranges Python 3.11 still counts as global: multicast (224.0.0.0/4, ff00::/8:
    a group, never one server), and, to be sure whatever the Python version, reserved and unspecified."""
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def _public_host(host: str) -> bool:
    """A name or address the public internet routes to: no loopback, private, link-local or bare names."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return "." in host and not host.endswith((".localhost", ".local", ".internal", ".localdomain"))
    return is_public(address)


def parse_endpoint(url: str) -> tuple[str, str]:
    """Validate a REST base URL (`https://host/rest/`) and return (normalized URL, domain).

    The host must be public (B24_ALLOW_HTTP_PORTALS, the local exception, also admits loopback and
    private addresses for on-premise test portals and the stand-in).
    """
    if not isinstance(url, str) or len(url) > 255:
        raise BadAddress("endpoint must be a URL of at most 255 characters")
    parts = urlsplit(url.strip())
    if not scheme_allowed(parts.scheme):
        raise BadAddress("endpoint scheme not allowed")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise BadAddress("endpoint must not carry credentials, a query or a fragment")
    domain = normalize_domain(parts.netloc)
    if not settings.B24_ALLOW_HTTP_PORTALS and not _public_host(domain.partition(":")[0]):
        raise BadAddress("endpoint host is not a public address")
    path = parts.path or "/rest/"
    if not path.endswith("/"):
        path += "/"
    return f"{parts.scheme}://{domain}{path}", domain


def portal_origin(portal: Located) -> str:
    """The portal's web origin (for frame-ancestors and links), from its stored endpoint."""
    scheme = urlsplit(portal.client_endpoint).scheme or "https"
    return f"{scheme}://{portal.domain}"


def is_oauth_server_endpoint(url: str) -> bool:
    """Whether `url` is the OAuth server's REST (`server_endpoint`): the host of B24_OAUTH_URL, or one
    listed in B24_OAUTH_SERVER_HOSTS."""
    try:
        _url, domain = parse_endpoint(url)
    except BadAddress:
        return False
    allowed = {h.lower() for h in settings.B24_OAUTH_SERVER_HOSTS if h}
    allowed.add((urlsplit(settings.B24_OAUTH_URL).hostname or "").lower())
    return domain.partition(":")[0] in allowed
