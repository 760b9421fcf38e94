"""Prove a placement request genuine: a stored portal, its current address, a verified AUTH_ID.

An AUTH_ID is believed once the OAuth server names its application (ours), portal and user
(`oauth.token_info`), and the portal answers for that user (`user.current`, `user.admin`, `app.info`).
The verdict is cached under a hash of the token for at most B24_VERDICT_MAX_AGE (minutes, whatever
the client-supplied AUTH_EXPIRES says), so a re-opened widget costs one indexed query and no call to
Bitrix24. Uncached verifications spend a per-portal budget (B24_VERIFY_*) and never wait for a rate
limit slot for long: a flood of forged opens is refused at once (429) while verified opens go on.
The posted DOMAIN is only compared with the address the OAuth server confirmed; it is never contacted.
A portal that moved (renamed) is followed through the OAuth server's app.info for the user's own token.

A blocked portal (its refresh token lost or refused) heals here: an administrator's verified open
whose REFRESH_ID passes `grants.administrator_grant` becomes the portal's new grant.
"""

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache

from bitrix24 import limits, oauth
from bitrix24.errors import (
    LimitWaitExceeded,
    PortalMovedUnexplained,
    Refusal,
    RestError,
    TokenRefreshFailed,
    TransportError,
)
from bitrix24.frames import FramePost
from portals import lifecycle
from portals.grants import GrantRefused, administrator_grant
from portals.models import Portal
from portals.tokens import PortalClient

from . import metrics

log = logging.getLogger(__name__)

_ID = re.compile(r"[0-9]{1,10}")  # Bitrix24 user ids
_DAYS = re.compile(r"-?[0-9]{1,6}")
_DENIED_TOKEN = frozenset(
    {
        "expired_token",
        "invalid_token",
        "NO_AUTH_FOUND",
        "WRONG_AUTH_TYPE",
        "ACCESS_DENIED",
        "INVALID_CREDENTIALS",
        "APPLICATION_NOT_FOUND",
    }
)


class Refused(Refusal):
    """The request is not believed. `reason` is a stable code the view turns into a page."""

    def __init__(self, reason: str, status: int = 403, portal: Portal | None = None, retry_after: float | None = None):
        super().__init__(reason, status, retry_after)
        self.portal = portal  # the stored portal, when one is known: its origin may frame the refusal


@dataclass(frozen=True)
class Verdict:
    member_id: str
    user_id: str
    user_name: str
    is_admin: bool
    app_info: dict = field(default_factory=dict)


# In front of a shared cache (Redis), each process keeps the verdicts it has read: a verdict only ever
# expires, so a local copy with the same lifetime is as good, and saves a network round trip per open.
_local_verdicts = LocMemCache("b24widget-verdicts", {"OPTIONS": {"MAX_ENTRIES": 20000}})


def _get_verdict(key: str):
    """The cached verdict, from this process's copy first when the shared cache is remote.

    Through limits.cache: a failing shared cache is left alone for a few seconds (its breaker) and
    this process's memory holds the verdicts meanwhile."""
    remote = not isinstance(caches["default"], LocMemCache)
    if remote:
        entry = _local_verdicts.get(key)
        if entry is not None:
            return entry[1]
    entry = limits.cache.get(key)
    if entry is None:
        return None
    expires_at, verdict = entry
    if remote and expires_at - time.time() > 1:
        _local_verdicts.set(key, entry, expires_at - time.time())
    return verdict


def _set_verdict(key: str, verdict, lifetime: int) -> None:
    limits.cache.set(key, (time.time() + lifetime, verdict), lifetime)


def _cache_key(member_id: str, auth_id: str) -> str:
    digest = hashlib.sha256(f"{member_id}\0{auth_id}".encode()).hexdigest()
    return f"b24widget:verdict:{digest}"


SECRETS = ("access_token", "refresh_token", "application_token")


@lru_cache(maxsize=1)
def _find_sql() -> str:
    """The hot path's one query, built from the model's metadata (so it follows migrations).

    A raw query costs a third of the equivalent ORM query here (no per-call SQL compilation); it
    leaves the secrets unloaded.
    """
    portal = Portal._meta
    columns = ", ".join(f"p.{f.column}" for f in portal.concrete_fields if f.name not in SECRETS)
    return f"SELECT {columns} FROM {portal.db_table} p WHERE p.{portal.get_field('member_id').column} = %s"


def _load_portal(member_id: str) -> Portal | None:
    return next(iter(Portal.objects.raw(_find_sql(), [member_id])), None)


def find_portal(post: FramePost) -> Portal:
    """The stored portal the POST names, unless it is gone; raises Refused. A blocked one is returned:
    its user is verified first, and an administrator heals it."""
    portal = _load_portal(post.member_id)
    if portal is None:
        raise Refused("not_installed")
    if portal.status == Portal.Status.UNINSTALLED:
        raise Refused("uninstalled", portal=portal)
    return portal


def verify(post: FramePost, sender: str = "") -> tuple[Portal, Verdict]:
    """Return the portal and the verified user behind the POST, or raise Refused. `sender` is the client's
    address (a placement POST comes from the user's own browser): each sender has a share of the portal's
    verification budget, so one user's forged opens cannot starve the portal's other users."""
    portal = find_portal(post)
    if not post.auth_id:
        raise Refused("no_auth", portal=portal)
    key = _cache_key(portal.member_id, post.auth_id)
    verdict = _get_verdict(key)
    metrics.verification(cached=verdict is not None)
    if verdict is None or post.domain != portal.domain:
        # Unknown token, or a posted DOMAIN that is not the stored address (renamed? forged?): ask the
        # OAuth server, within the portal's budget. Its app.info for the user's own token says where the
        # portal lives now; nothing is refreshed on behalf of an unverified sender.
        _spend_verification(portal, matched=_presents_our_token(portal, post), sender=sender)
        info = _token_info(portal, post.auth_id)
        if (info.domain, info.client_endpoint) != (portal.domain, portal.client_endpoint):
            portal = lifecycle.follow_move(
                portal, client_endpoint=info.client_endpoint, domain=info.domain, via="oauth_app_info"
            )
        if verdict is None:
            portal, verdict = _ask_portal(portal, post.auth_id, info)
            # AUTH_EXPIRES is what is left of the token's life (0: it is ending, nothing to cache); it is
            # the client's word, so it can only shorten our own limit.
            lifetime = settings.B24_VERDICT_MAX_AGE
            if post.auth_expires is not None:
                lifetime = min(post.auth_expires, lifetime)
            if lifetime > 0:
                _set_verdict(key, verdict, lifetime)
    if post.domain != portal.domain:
        # Not the address the OAuth server confirmed (possibly learned just now, from a 302 at the old one).
        log.warning("posted domain differs from the confirmed one; refused", extra={"member_id": portal.member_id})
        raise Refused("domain_mismatch", portal=portal)
    if portal.status == Portal.Status.BLOCKED:
        portal = _heal(portal, post, verdict)
    portal = _check_application_token(portal, post, verdict)
    if portal.status == Portal.Status.NEW:
        # Bitrix24 shows the square only after installFinish: the install is complete.
        portal = lifecycle.activate(portal, via="widget_open")
    lifecycle.touch(portal)
    return portal, verdict


def _presents_our_token(portal: Portal, post: FramePost) -> bool:
    """Whether the POST carries the APPLICATION_TOKEN we hold (every genuine placement POST does; a
    stranger cannot know it). Checked from the stored digest, before anything is asked of Bitrix24."""
    return not portal.application_token_digest or portal.application_token_is(post.application_token)


def _spend_verification(portal: Portal, *, matched: bool = True, sender: str = "") -> None:
    """Take one unit of the portal's budget for verifying unknown tokens, or refuse at once.

    Opens without our APPLICATION_TOKEN (strangers; or a token we missed, which an administrator's
    open repairs) have a budget of their own, so they cannot use up the one genuine opens need. Opens
    with it may come from any user of the portal (every user's frame holds the token): each sender
    address first spends its own share (B24_VERIFY_BURST, B24_VERIFY_PER_MINUTE), then the portal's
    ceiling (B24_VERIFY_PORTAL_*), which bounds what the portal's users together may ask of Bitrix24."""
    if matched:
        budgets = [
            (f"verify:{portal.member_id}", settings.B24_VERIFY_PORTAL_PER_MINUTE, settings.B24_VERIFY_PORTAL_BURST)
        ]
        if sender:
            sender_key = hashlib.sha256(sender.encode()).hexdigest()[:32]
            budgets.insert(
                0,
                (
                    f"verify-sender:{portal.member_id}:{sender_key}",
                    settings.B24_VERIFY_PER_MINUTE,
                    settings.B24_VERIFY_BURST,
                ),
            )
    else:
        budgets = [
            (
                f"verify-unmatched:{portal.member_id}",
                settings.B24_VERIFY_UNMATCHED_PER_MINUTE,
                settings.B24_VERIFY_UNMATCHED_BURST,
            )
        ]
    for key, per_minute, burst in budgets:
        wait = limits.refused_for(key, per_minute=per_minute, burst=burst)
        if wait is not None:
            log.info("verification budget spent; open refused", extra={"member_id": portal.member_id})
            raise Refused("busy", status=429, portal=portal, retry_after=max(wait, 1.0))


def _heal(portal: Portal, post: FramePost, verdict: Verdict) -> Portal:
    """A blocked portal: an administrator's open with a confirmed REFRESH_ID restores it; others wait for one."""
    if not verdict.is_admin or not post.refresh_id:
        raise Refused("needs_admin", portal=portal)
    try:
        grant = administrator_grant(portal.member_id, post.refresh_id)
    except GrantRefused as exc:
        log.info("recovery refused", extra={"member_id": portal.member_id, "reason": exc.reason})
        if exc.status == 403:
            raise Refused("needs_admin", portal=portal) from None
        raise Refused("busy", status=exc.status, portal=portal, retry_after=exc.retry_after) from None
    try:
        return lifecycle.recover(portal, grant, via="administrator_open", application_token=post.application_token)
    except lifecycle.TransitionError:
        raise Refused("uninstalled", portal=portal) from None


def _check_application_token(portal: Portal, post: FramePost, verdict: Verdict) -> Portal:
    """Placement POSTs carry APPLICATION_TOKEN: it must be the one we hold. An administrator's open
    brings ours up to date (an ONAPPUPDATE we missed); anyone else's mismatch is refused."""
    presented = post.application_token
    if not presented or portal.status not in (Portal.Status.ACTIVE, Portal.Status.NEW):
        return portal
    stored = bool(portal.application_token_digest)
    if portal.application_token_is(presented):
        return portal
    if not verdict.is_admin:
        if stored:
            raise Refused("needs_admin", portal=portal)
        return portal  # nothing to compare with yet; an administrator's open will store it
    try:
        return lifecycle.adopt_application_token(portal, presented, via="administrator_open")
    except lifecycle.TransitionError:  # uninstalled meanwhile
        raise Refused("uninstalled", portal=portal) from None


def _refused_by_bitrix24(error: RestError, portal: Portal) -> Refused:
    """What an error answer from the portal means for the user who opened the widget."""
    if isinstance(error, LimitWaitExceeded):
        return Refused("busy", status=429, portal=portal, retry_after=error.retry_after)
    if isinstance(error, TokenRefreshFailed):
        # Following a move needed the OAuth server; it refused the portal (now blocked) or did not answer.
        if error.code in oauth.BLOCKING_ERRORS or error.code == "portal_not_serving":
            return Refused("blocked", portal=portal)
        return Refused("bitrix24_unreachable", status=502, portal=portal)
    if isinstance(error, PortalMovedUnexplained):
        return Refused("bitrix24_error", status=502, portal=portal)  # a redirect nobody vouches for
    if isinstance(error, TransportError):
        return Refused("bitrix24_unreachable", status=502, portal=portal)
    special = _special_refusal(error.code, error.description, portal)
    if special is not None:
        return special
    if error.code in _DENIED_TOKEN:
        return Refused("bad_token", portal=portal)
    # Limits, outages, unknown methods: Bitrix24's trouble, not the user's authorization.
    return Refused("bitrix24_error", status=502, portal=portal)


def _special_refusal(code: str, description: str, portal: Portal) -> Refused | None:
    """Answers that are about the portal's plan or the user's access, not a bad token
    (_includes/system-errors.md): each gets its own page."""
    if code == "PAYMENT_REQUIRED":
        return Refused("payment_required", status=402, portal=portal)
    if code == "user_access_error":
        # "the portal administrator has restricted access to this application to specific users only"
        return Refused("no_access", portal=portal)
    if code == "ACCESS_DENIED" and "commercial" in description.lower():
        # "REST API is available only on commercial plans"
        return Refused("plan_required", status=402, portal=portal)
    if code == "OVERLOAD_LIMIT":
        # A manual block of the portal's REST by Bitrix24 support: no retry helps.
        return Refused("bitrix24_blocked", status=503, portal=portal)
    return None


def _token_info(portal: Portal, auth_id: str) -> "oauth.TokenInfo":
    """The OAuth server's word on the token: our application, this portal; or Refused."""
    try:
        info = oauth.token_info(auth_id)
    except oauth.OAuthRejected as exc:
        special = _special_refusal(exc.code, exc.description, portal)
        if special is not None:
            raise special from None
        raise Refused("bad_token", portal=portal) from None
    except oauth.OAuthUnavailable:
        raise Refused("bitrix24_unreachable", status=502, portal=portal) from None
    if info.client_id != settings.B24_CLIENT_ID or info.member_id != portal.member_id:
        # A token of another application (or of another portal): genuine, but not ours to believe.
        log.info("token of another application or portal refused", extra={"member_id": portal.member_id})
        raise Refused("bad_token", portal=portal)
    return info


def _ask_portal(portal: Portal, auth_id: str, info: "oauth.TokenInfo") -> tuple[Portal, Verdict]:
    """One batch with the user's token at the address the OAuth server confirmed: who, admin?, the app."""
    client = PortalClient(portal, access_token=auth_id, interactive=True)
    try:
        result = client.batch(
            {
                "user": ("user.current", {}),
                "admin": ("user.admin", {}),
                "app": ("app.info", {}),
            }
        )
    except RestError as exc:
        raise _refused_by_bitrix24(exc, client.portal) from None
    portal = client.portal  # the client may have followed a move
    for key in ("user", "admin"):
        if key in result.errors:
            raise _refused_by_bitrix24(result.errors[key], portal)
    user, app = result.result.get("user"), result.result.get("app")
    if not isinstance(user, dict) or not _is_id(user.get("ID")):
        raise Refused("bitrix24_error", status=502, portal=portal)
    if info.user_id and str(user["ID"]) != info.user_id:
        raise Refused("bad_token", portal=portal)
    name = " ".join(str(user.get(k) or "").strip() for k in ("NAME", "LAST_NAME")).strip()
    verdict = Verdict(
        member_id=portal.member_id,
        user_id=str(user["ID"]),
        user_name=(name or str(user.get("EMAIL") or ""))[:128],
        is_admin=result.result.get("admin") is True,
        # Shown on the page only; what is stored about the licence comes from the OAuth server (sync_portals).
        app_info=_app_info(app if isinstance(app, dict) else {}),
    )
    return portal, verdict


def recheck_admin(portal: Portal, auth_id: str, user_id: str) -> bool:
    """Ask Bitrix24 now whether the token's user (who must be `user_id`) administers the portal.

    A change (connecting a channel, say) is not believed from a cached verdict. Raises Refused."""
    if not auth_id:
        raise Refused("no_auth", portal=portal)
    _spend_verification(portal)
    portal, verdict = _ask_portal(portal, auth_id, _token_info(portal, auth_id))
    if verdict.user_id != user_id:
        raise Refused("bad_token", portal=portal)
    return verdict.is_admin


def _app_info(app: dict) -> dict:
    status = str(app.get("STATUS") or "")
    return {
        "status": status if status in ("F", "D", "T", "P", "L", "S") else "",
        "payment_expired": str(app.get("PAYMENT_EXPIRED") or "N").upper() == "Y",
        "days": _days(app.get("DAYS")),
        "license": str(app.get("LICENSE") or "")[:64],
        "version": str(app.get("VERSION") or "")[:32],
    }


def _is_id(value) -> bool:
    # ASCII digits only: str.isdigit() also admits "²" and other digits int() or a form field reject.
    return not isinstance(value, bool) and _ID.fullmatch(str(value)) is not None


def _days(value) -> int | None:
    """Days left of the paid or trial period; negative once it has expired (app-info.md: DAYS)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if abs(value) < 10**6 else None
    return int(value) if isinstance(value, str) and _DAYS.fullmatch(value) else None
