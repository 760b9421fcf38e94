"""The Bitrix24 OAuth server (settings/oauth/index.md): token refresh and token facts (its `app.info`).

`request_refresh` exchanges a refresh token and returns the validated grant; it stores nothing. Refresh
tokens rotate (a successful refresh spends the old one), so the caller must store the grant whatever
happens: portals/tokens.py does that, single-flight, for a stored portal. The OAuth request has its own
deadline (`B24_OAUTH_DEADLINE`), long enough to receive an answer the server sends late.
"""

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from . import http, limits, wire
from .addresses import BadAddress, is_oauth_server_endpoint, parse_endpoint
from .errors import (
    ClientMisconfigured,
    HttpFailure,
    OAuthError,
    OAuthRejected,
    OAuthThrottled,
    OAuthUnavailable,
    PortalNotServing,
    RefreshInProgress,
)
from .wire import JSON

__all__ = [
    "BLOCKING_ERRORS",
    "CLIENT_ERRORS",
    "ClientMisconfigured",
    "OAuthError",
    "OAuthRejected",
    "OAuthThrottled",
    "OAuthUnavailable",
    "PortalNotServing",
    "RefreshInProgress",
    "TokenGrant",
    "TokenInfo",
    "client_rejected",
    "recheck_client",
    "exchange_unverified",
    "lease_seconds",
    "parse_grant",
    "request_refresh",
    "token_info",
]

log = logging.getLogger(__name__)

# OAuth answers that mean the portal cannot be served until an administrator acts (opens the app, pays,
# reinstalls). A blocked portal heals from the next proof of an administrator (lifecycle.recover).
BLOCKING_ERRORS = frozenset({"invalid_grant", "NOT_INSTALLED", "PAYMENT_REQUIRED", "PORTAL_DELETED"})
# Answers about *our* credentials (client_id / client_secret): the deployment is misconfigured, and
# no portal is to blame for it.
CLIENT_ERRORS = frozenset({"invalid_client", "wrong_client"})
_CLIENT_REJECTED_KEY = "b24widget:oauth-client-rejected"
_CLIENT_CHECK_KEY = "b24widget:oauth-client-check"
_MAX_TOKEN_LENGTH = wire.MAX_TOKEN


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


def _text(answer: dict[str, JSON], key: str, *, required: bool = True, limit: int = 255) -> str:
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
def parse_grant(answer: JSON) -> TokenGrant:
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
        if is_oauth_server_endpoint(server_endpoint):
            server_endpoint, _host = parse_endpoint(server_endpoint)
        else:
            # Never contacted: only the OAuth server's own hosts may receive a token as its REST.
            log.warning("OAuth answer names a server_endpoint outside B24_OAUTH_SERVER_HOSTS; ignored")
            server_endpoint = ""
    member_id = _text(answer, "member_id", limit=64)
    if not wire.is_member_id(member_id):
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
        status=status if status in wire.APP_STATUSES else "",
        user_id=wire.digits_or_empty(user_id),
    )


def client_rejected() -> str:
    """The OAuth server's last refusal of our credentials ('' when none is known); for /healthz and the admin."""
    try:
        return cache.get(_CLIENT_REJECTED_KEY) or ""
    except Exception:  # the cache is down: health and the admin still answer
        return ""


def _note_client(code: str | None) -> None:
    try:
        if code:
            cache.set(_CLIENT_REJECTED_KEY, f"{code} at {timezone.now():%Y-%m-%d %H:%M:%S} UTC", None)
        elif cache.get(_CLIENT_REJECTED_KEY):
            cache.delete(_CLIENT_REJECTED_KEY)
    except Exception:
        log.warning("could not note the OAuth client state in the cache")


@sensitive_variables()
def recheck_client(*, interval: float, deadline: float) -> str:
    """While a refusal of our credentials is recorded, ask the OAuth server again whether it accepts them;
    returns what `client_rejected` says afterwards ('' once they are accepted). For /healthz.

    At most once per `interval` seconds for the whole deployment (an atomic cache.add on the shared cache,
    so a check in flight is never repeated meanwhile), each bounded by `deadline`. The question is a
    refresh with a refresh token nobody issued: the OAuth server judges the client before the grant
    (RFC 6749 section 5.2, and the stand-in does so), so `invalid_client` / `wrong_client` means the
    credentials are still refused, `invalid_grant` that they are accepted (nothing is refreshed, nothing
    is spent). Any other answer, or none within the deadline, changes nothing.
    """
    rejected = client_rejected()
    if not rejected:
        return ""
    try:
        if not cache.add(_CLIENT_CHECK_KEY, "1", max(int(interval), 1)):
            return rejected  # checked (or being checked) within the interval
    except Exception:
        return rejected  # no shared cache: no check, rather than one per request
    probe = "b24widget-client-check-" + uuid.uuid4().hex
    params = {
        "grant_type": "refresh_token",
        "client_id": settings.B24_CLIENT_ID,
        "client_secret": settings.B24_CLIENT_SECRET,
        "refresh_token": probe,
    }
    try:
        status, answer = _oauth_answer(
            "GET",
            settings.B24_OAUTH_URL,
            params=params,
            deadline=deadline,
            connect_timeout=min(settings.B24_CONNECT_TIMEOUT, deadline),
        )
    except OAuthUnavailable as exc:
        log.info("OAuth client re-check got no answer", extra={"code": exc.code})
        return rejected
    error = wire.error_of(answer)
    code = error[0] if error is not None else None
    if code in CLIENT_ERRORS:
        _note_client(code)
        return client_rejected()
    if code == "invalid_grant":
        _note_client(None)
        log.info("OAuth client accepted again")
        return ""
    log.info("OAuth client re-check was not conclusive", extra={"code": code or f"http_{status}"})
    return rejected


def oauth_server_rest() -> str:
    """The OAuth server's REST base (its `app.info`), next to B24_OAUTH_URL."""
    parts = urlsplit(settings.B24_OAUTH_URL)
    return f"{parts.scheme}://{parts.netloc}/rest/"


def _oauth_answer(
    method: str,
    url: str,
    *,
    deadline: float | None = None,
    connect_timeout: float | None = None,
    **kwargs: Any,
) -> tuple[int, JSON]:
    """One request to the OAuth server with its own deadline and cap; returns (status, JSON or None)."""
    deadline = settings.B24_OAUTH_DEADLINE if deadline is None else deadline
    try:
        answer = http.send(
            method,
            url,
            connect_timeout=settings.B24_CONNECT_TIMEOUT if connect_timeout is None else connect_timeout,
            read_timeout=deadline,
            deadline=deadline,
            max_bytes=settings.B24_OAUTH_MAX_BYTES,
            **kwargs,
        )
    except HttpFailure as exc:
        raise OAuthUnavailable(
            exc.code if exc.code != "unreachable" else "unreachable", f"OAuth server: {exc.description}"
        ) from None
    return answer.status, answer.json()


def _raise_for_error(status: int, answer: JSON) -> None:
    error = wire.error_of(answer)
    if error is not None:
        code, description = error
        if code in CLIENT_ERRORS:
            _note_client(code)
            raise ClientMisconfigured(
                code, "the OAuth server refused this deployment's B24_CLIENT_ID / B24_CLIENT_SECRET"
            )
        if status >= 500 and code not in BLOCKING_ERRORS:
            raise OAuthUnavailable(code, description)
        raise OAuthRejected(code, description)
    if status != 200 or not isinstance(answer, dict):
        raise OAuthUnavailable("bad_answer", f"OAuth server answered HTTP {status}")


@sensitive_variables()
def request_refresh(refresh_token: str, *, deadline: float | None = None) -> TokenGrant:
    """Exchange a refresh token at B24_OAUTH_URL with our client secret; no database access.

    GET with the parameters in the query, as settings/oauth/index.md documents it (and b24phpsdk and
    b24pysdk send it): no URL of an outward call is ever logged (urllib3's debug log is silenced in
    settings.LOGGING), so the secret stays out of our logs.
    """
    if not refresh_token or len(refresh_token) > _MAX_TOKEN_LENGTH:
        raise OAuthRejected("invalid_grant", "no usable refresh token")
    params = {
        "grant_type": "refresh_token",
        "client_id": settings.B24_CLIENT_ID,
        "client_secret": settings.B24_CLIENT_SECRET,
        "refresh_token": refresh_token,
    }
    status, answer = _oauth_answer("GET", settings.B24_OAUTH_URL, params=params, deadline=deadline)
    _raise_for_error(status, answer)
    _note_client(None)
    return parse_grant(answer)


@sensitive_variables()
def exchange_unverified(
    member_id: str, refresh_token: str, *, before_spending: Callable[[], object] | None = None
) -> TokenGrant:
    """`request_refresh` for a sender nobody has verified yet (an install POST, ONAPPINSTALL, a recovery).

    Budgeted per member_id and for the whole deployment (B24_UNVERIFIED_OAUTH_*), with at most one
    attempt in flight per member_id: a flood of forged installs costs a handful of OAuth requests.
    """
    if not limits.admit(
        f"oauth:{member_id}",
        per_minute=settings.B24_UNVERIFIED_OAUTH_PER_MINUTE,
        burst=settings.B24_UNVERIFIED_OAUTH_BURST,
    ):
        raise OAuthThrottled(60.0 / max(settings.B24_UNVERIFIED_OAUTH_PER_MINUTE, 1))
    if not limits.admit(
        "oauth:all",
        per_minute=settings.B24_UNVERIFIED_OAUTH_GLOBAL_PER_MINUTE,
        burst=max(int(settings.B24_UNVERIFIED_OAUTH_GLOBAL_PER_MINUTE // 6), 1),
    ):
        raise OAuthThrottled(5.0)
    # Web request threads waiting on the OAuth server for unverified senders: a few per process at most,
    # each for a short deadline (the sender's own refresh token is what a timeout may cost).
    if not _unverified_slots.acquire(blocking=False):
        raise OAuthThrottled(2.0)
    try:
        flight = (
            http.worst_case(
                settings.B24_CONNECT_TIMEOUT,
                settings.B24_UNVERIFIED_OAUTH_DEADLINE,
                settings.B24_UNVERIFIED_OAUTH_DEADLINE,
            )
            + 1
        )
        with limits.single_flight(f"oauth:{member_id}", flight) as held:
            if not held:
                raise OAuthThrottled(2.0)
            if before_spending is not None:
                before_spending()  # e.g. the install's check that the database can store the grant
            return request_refresh(refresh_token, deadline=settings.B24_UNVERIFIED_OAUTH_DEADLINE)
    finally:
        _unverified_slots.release()


class _Slots:
    """A per-process count of threads in unverified OAuth requests (B24_UNVERIFIED_OAUTH_CONCURRENCY)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used = 0

    def acquire(self, blocking: bool = False) -> bool:
        with self._lock:
            if self._used >= settings.B24_UNVERIFIED_OAUTH_CONCURRENCY:
                return False
            self._used += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._used -= 1


_unverified_slots = _Slots()


# What the OAuth server's app.info answers for a token it does not accept (settings/oauth/index.md,
# api-reference errors); anything else is its own trouble.
_TOKEN_REFUSED = frozenset(
    {
        "invalid_token",
        "expired_token",
        "NO_AUTH_FOUND",
        "WRONG_AUTH_TYPE",
        "INVALID_CREDENTIALS",
        "PAYMENT_REQUIRED",
        "NOT_INSTALLED",
        "PORTAL_DELETED",
        "APPLICATION_NOT_FOUND",
        "user_access_error",
        "ACCESS_DENIED",
    }
)


@dataclass(frozen=True)
class TokenInfo:
    """What the OAuth server says about an access token (its `app.info`): whose app, portal, user."""

    client_id: str
    member_id: str
    user_id: str
    domain: str
    client_endpoint: str
    status: str = ""
    installed: bool | None = None


@sensitive_variables()
def token_info(access_token: str) -> TokenInfo:
    """Ask the OAuth server whose token this is (`<oauth server>/rest/app.info`).

    The answer is `{client_id, scope, expires, user_id, install: {installed, version, status, scope,
    domain, uri, client_endpoint, member_id, member_type}}` (b24pysdk schemas/api.py; b24phpsdk reads
    `install`): the authority for a token's application, portal and user. Raises OAuthRejected for a
    token it does not know.
    """
    if not access_token or len(access_token) > _MAX_TOKEN_LENGTH:
        raise OAuthRejected("invalid_token", "no usable access token")
    # Asked from web requests only: their deadline, not the refresh's (nothing is lost by giving up here).
    status, answer = _oauth_answer(
        "POST",
        f"{oauth_server_rest()}app.info",
        data={"auth": access_token},
        deadline=min(settings.B24_REQUEST_DEADLINE, settings.B24_OAUTH_DEADLINE),
    )
    error = wire.error_of(answer)
    if error is not None:
        code, description = error
        if code in _TOKEN_REFUSED:
            raise OAuthRejected(code, description)
        raise OAuthUnavailable(code, description)  # the server's trouble, not the token's
    if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("result"), dict):
        raise OAuthUnavailable("bad_answer", f"OAuth server app.info answered HTTP {status}")
    result = answer["result"]
    install = result.get("install")
    if not isinstance(install, dict):
        raise OAuthUnavailable("bad_answer", "OAuth app.info has no install block")
    member_id = _text(install, "member_id", limit=64)
    if not wire.is_member_id(member_id):
        raise OAuthUnavailable("bad_answer", "OAuth app.info has a malformed member_id")
    try:
        client_endpoint, domain = parse_endpoint(_text(install, "client_endpoint"))
    except BadAddress as exc:
        raise OAuthUnavailable("bad_answer", f"OAuth app.info has an unusable client_endpoint ({exc})") from None
    user_id = _text(result, "user_id", required=False, limit=32)
    status_code = _text(install, "status", required=False, limit=1)
    installed = install.get("installed")
    return TokenInfo(
        client_id=_text(result, "client_id", limit=128),
        member_id=member_id,
        user_id=wire.digits_or_empty(user_id),
        domain=domain,
        client_endpoint=client_endpoint,
        status=status_code if status_code in wire.APP_STATUSES else "",
        installed=installed if isinstance(installed, bool) else None,
    )


def lease_seconds() -> float:
    """How long a refresh may take at worst (http.worst_case) and a little more: what a lease on its
    outcome must outlast, so nobody else sends the same (maybe already spent) refresh token meanwhile."""
    return http.worst_case(settings.B24_CONNECT_TIMEOUT, settings.B24_OAUTH_DEADLINE, settings.B24_OAUTH_DEADLINE) + 5
