"""Portal addresses: what a domain or REST endpoint may look like, and how to compare them.

Cloud portals are `name.bitrix24.<zone>` over HTTPS. With B24_ALLOW_HTTP_PORTALS on, plain-HTTP
addresses with a port (`127.0.0.1:8123`, on-premise test portals, the local stand-in) are admitted too.
"""
import ipaddress
import re
from urllib.parse import urlsplit

from django.conf import settings

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_PORT = re.compile(r"^[0-9]{1,5}$")


class BadAddress(ValueError):
    """An address that is not a portal address this deployment accepts."""


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


def _public_host(host: str) -> bool:
    """A name or address the public internet routes to: no loopback, private, link-local or bare names."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return "." in host and not host.endswith((".localhost", ".local", ".internal", ".localdomain"))
    return address.is_global


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


def portal_origin(portal) -> str:
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
