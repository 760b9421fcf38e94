"""Token refresh against the Bitrix24 OAuth server, and the single-flight refresh of a stored portal.

Refresh tokens rotate: the old one is spent by a successful refresh. Two callers refreshing one
portal at once would make one of them fail, so `refresh_portal` takes the portal's row lock
(SELECT ... FOR UPDATE on PostgreSQL; an IMMEDIATE transaction on SQLite), re-reads the row and
refreshes only if nobody did it while it waited.
"""
import logging
import re
import threading
from dataclasses import dataclass, field

import requests
from django.conf import settings
from django.db import transaction
from django.views.decorators.debug import sensitive_variables

from b24widget import metrics

from .addresses import BadAddress, parse_endpoint
from .models import AppStatus, Portal

log = logging.getLogger(__name__)

# OAuth answers that mean the portal cannot be served until someone acts (reinstall, payment).
BLOCKING_ERRORS = frozenset(
    {"invalid_grant", "invalid_client", "wrong_client", "NOT_INSTALLED", "PAYMENT_REQUIRED", "PORTAL_DELETED"}
)
_MAX_TOKEN_LENGTH = 1024
_MEMBER_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class OAuthError(Exception):
    """Base of OAuth failures. `code` is Bitrix24's error code; the text never holds a secret."""

    def __init__(self, code: str, description: str = ""):
        self.code = code
        self.description = description
        super().__init__(f"{code}: {description}" if description else code)


class OAuthRejected(OAuthError):
    """The OAuth server answered with an error (or with a grant for another portal)."""


class OAuthUnavailable(OAuthError):
    """The OAuth server could not be reached or gave no usable answer; nothing is known."""


class PortalNotServing(OAuthError):
    """The portal is blocked or uninstalled: no refresh is attempted."""


@dataclass(frozen=True)
class TokenGrant:
    """A validated token answer from the OAuth server."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_in: int
    member_id: str
    client_endpoint: str
    domain: str
    server_endpoint: str = ""
    scope: str = ""
    status: str = ""
    user_id: str = ""


_local = threading.local()


def _session() -> requests.Session:
    # One Session per thread: connection reuse without sharing a Session across threads.
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def _text(answer: dict, key: str, *, required=True, limit=255) -> str:
    value = answer.get(key)
    if value is None or value == "":
        if required:
            raise OAuthUnavailable("bad_answer", f"OAuth answer lacks {key}")
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or len(value) > limit:
        raise OAuthUnavailable("bad_answer", f"OAuth answer has a malformed {key}")
    return value


@sensitive_variables()
def parse_grant(answer) -> TokenGrant:
    """Validate a token answer (from the OAuth server, or an event's auth block) into a TokenGrant."""
    if not isinstance(answer, dict):
        raise OAuthUnavailable("bad_answer", "OAuth answer is not a JSON object")
    try:
        expires_in = int(answer.get("expires_in") or 3600)
    except (TypeError, ValueError):
        raise OAuthUnavailable("bad_answer", "OAuth answer has a malformed expires_in") from None
    if not 0 < expires_in <= 86400 * 2:
        raise OAuthUnavailable("bad_answer", "OAuth answer has an implausible expires_in")
    try:
        client_endpoint, domain = parse_endpoint(_text(answer, "client_endpoint"))
    except BadAddress as exc:
        raise OAuthUnavailable("bad_answer", f"OAuth answer has an unusable client_endpoint ({exc})") from None
    server_endpoint = _text(answer, "server_endpoint", required=False)
    if server_endpoint:
        try:
            server_endpoint, _host = parse_endpoint(server_endpoint)
        except BadAddress:
            server_endpoint = ""  # unusable: calls that want it fall back to the portal
    member_id = _text(answer, "member_id", limit=64)
    if not _MEMBER_ID.match(member_id):
        raise OAuthUnavailable("bad_answer", "OAuth answer has a malformed member_id")
    status = _text(answer, "status", required=False, limit=1)
    user_id = _text(answer, "user_id", required=False, limit=32)
    return TokenGrant(
        access_token=_text(answer, "access_token", limit=_MAX_TOKEN_LENGTH),
        refresh_token=_text(answer, "refresh_token", limit=_MAX_TOKEN_LENGTH),
        expires_in=expires_in,
        member_id=member_id,
        client_endpoint=client_endpoint,
        domain=domain,
        server_endpoint=server_endpoint,
        scope=_text(answer, "scope", required=False, limit=4000),
        status=status if status in AppStatus.values else "",
        user_id=user_id if user_id.isascii() and user_id.isdigit() else "",
    )


@sensitive_variables()
def request_refresh(refresh_token: str) -> TokenGrant:
    """Exchange a refresh token at B24_OAUTH_URL with our client secret; no database access."""
    if not refresh_token or len(refresh_token) > _MAX_TOKEN_LENGTH:
        raise OAuthRejected("invalid_grant", "no usable refresh token")
    params = {
        "grant_type": "refresh_token",
        "client_id": settings.B24_CLIENT_ID,
        "client_secret": settings.B24_CLIENT_SECRET,
        "refresh_token": refresh_token,
    }
    try:
        # POST keeps the secret out of URLs (and so out of proxies' access logs).
        response = _session().post(
            settings.B24_OAUTH_URL, data=params, timeout=settings.B24_HTTP_TIMEOUT, allow_redirects=False
        )
    except requests.RequestException as exc:
        raise OAuthUnavailable("unreachable", f"OAuth server unreachable ({type(exc).__name__})") from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if isinstance(answer, dict) and answer.get("error"):
        code = str(answer["error"])[:64]
        description = str(answer.get("error_description") or "")[:255]
        if response.status_code >= 500 and code not in BLOCKING_ERRORS:
            raise OAuthUnavailable(code, description)
        raise OAuthRejected(code, description)
    if response.status_code != 200 or answer is None:
        raise OAuthUnavailable("bad_answer", f"OAuth server answered HTTP {response.status_code}")
    return parse_grant(answer)


def refresh_portal(
    portal: Portal, *, seen_access_token: str | None = None, force: bool = False, allow_blocked: bool = False
) -> Portal:
    """Refresh the portal's tokens once, however many callers ask at the same time.

    `seen_access_token` is the token the caller found expired: if the stored one differs, another
    caller refreshed meanwhile and the fresh row is returned. `force` refreshes a still-valid token
    (keep-alive, a portal that may have moved). Blocking OAuth errors mark the portal `blocked`; an
    unreachable OAuth server only records the failure. Both raise.
    """
    from . import lifecycle  # lifecycle is the only writer of portal state; imported late (cycle)

    failure = None
    with transaction.atomic():
        current = Portal.objects.select_for_update().get(pk=portal.pk)
        serving = current.is_serving or (allow_blocked and current.status == Portal.Status.BLOCKED)
        if not serving or not current.refresh_token:
            raise PortalNotServing("portal_not_serving", f"portal is {current.status}")
        if current.access_token and not current.access_token_expired():
            if seen_access_token is not None and current.access_token != seen_access_token:
                return current  # refreshed by someone else while we waited for the lock
            if seen_access_token is None and not force:
                return current
        try:
            grant = request_refresh(current.refresh_token)
            if grant.member_id != current.member_id:
                raise OAuthRejected("wrong_member", "OAuth server answered for another portal")
        except OAuthRejected as exc:
            failure = exc
            if exc.code in BLOCKING_ERRORS:
                lifecycle.block(current, reason=exc.code, description=exc.description)
            else:
                lifecycle.record_refresh_failure(current, exc)
        except OAuthUnavailable as exc:
            failure = exc
            lifecycle.record_refresh_failure(current, exc)
        else:
            lifecycle.apply_grant(current, grant, reason="refresh")
    if failure is not None:
        metrics.refresh_failed(failure.code)
        raise failure
    return current
