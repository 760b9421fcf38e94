"""Prove a placement request genuine: a stored portal, its current address, a verified AUTH_ID.

The verdict (who the user is, whether they administer the portal, what app.info said) is cached
under a hash of the token for at most the token's remaining lifetime, so a re-opened widget costs one
indexed query and no call to Bitrix24.
"""
import hashlib
import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.core.cache import cache

from portals import lifecycle, oauth
from portals.frame_post import FramePost
from portals.models import Portal
from portals.rest import PortalClient, RestError, TransportError

log = logging.getLogger(__name__)

VERDICT_MAX_AGE = 3600
_DENIED_TOKEN = frozenset({"expired_token", "invalid_token", "NO_AUTH_FOUND", "WRONG_AUTH_TYPE", "ACCESS_DENIED",
                           "INVALID_CREDENTIALS", "APPLICATION_NOT_FOUND"})


class Refused(Exception):
    """The request is not believed. `reason` is a stable code the view turns into a page."""

    def __init__(self, reason: str, status: int = 403, portal: Portal | None = None):
        self.reason = reason
        self.status = status
        self.portal = portal  # the stored portal, when one is known: its origin may frame the refusal
        super().__init__(reason)


@dataclass(frozen=True)
class Verdict:
    member_id: str
    user_id: str
    user_name: str
    is_admin: bool
    app_info: dict = field(default_factory=dict)
    open_lines: tuple = ()
    open_lines_error: str = ""


def _cache_key(member_id: str, auth_id: str) -> str:
    digest = hashlib.sha256(f"{member_id}\0{auth_id}".encode()).hexdigest()
    return f"b24widget:verdict:{digest}"


def find_portal(post: FramePost) -> Portal:
    """The stored portal the POST names, if it may be served; raises Refused."""
    portal = Portal.objects.filter(member_id=post.member_id).first()
    if portal is None:
        raise Refused("not_installed")
    if portal.status == Portal.Status.UNINSTALLED:
        raise Refused("uninstalled", portal=portal)
    if portal.status == Portal.Status.BLOCKED:
        raise Refused("blocked", portal=portal)
    return portal


def check_domain(portal: Portal, post: FramePost) -> Portal:
    """The posted DOMAIN must be where the OAuth server says the portal lives.

    A different DOMAIN may mean the portal was renamed: ask the OAuth server (at most once per
    B24_DOMAIN_RECHECK_INTERVAL per portal). The posted host itself is never contacted.
    """
    if post.domain == portal.domain:
        return portal
    if not cache.add(f"b24widget:domain-recheck:{portal.pk}", 1, settings.B24_DOMAIN_RECHECK_INTERVAL):
        raise Refused("domain_mismatch", portal=portal)
    try:
        portal = oauth.refresh_portal(portal, force=True)
    except oauth.OAuthUnavailable:
        raise Refused("bitrix24_unreachable", status=502, portal=portal) from None
    except oauth.OAuthError:
        raise Refused("blocked", portal=portal) from None
    if post.domain != portal.domain:
        log.warning("portal %s: posted domain differs from the confirmed one; refused", portal.member_id)
        raise Refused("domain_mismatch", portal=portal)
    return portal


def verify(post: FramePost) -> tuple[Portal, Verdict]:
    """Return the portal and the verified user behind the POST, or raise Refused."""
    portal = check_domain(find_portal(post), post)
    if not post.auth_id:
        raise Refused("no_auth", portal=portal)
    key = _cache_key(portal.member_id, post.auth_id)
    verdict = cache.get(key)
    if verdict is None:
        portal, verdict = _ask_portal(portal, post.auth_id)
        lifetime = min(post.auth_expires or VERDICT_MAX_AGE, VERDICT_MAX_AGE)
        if lifetime > 0:
            cache.set(key, verdict, lifetime)
        if portal.status == Portal.Status.NEW:
            # Bitrix24 shows the square only after installFinish: the install is complete.
            portal = lifecycle.activate(portal, via="widget_open")
    lifecycle.touch(portal)
    return portal, verdict


def _ask_portal(portal: Portal, auth_id: str) -> tuple[Portal, Verdict]:
    """One batch request with the user's token at the stored endpoint: who, admin?, our app?, lines."""
    client = PortalClient(portal, access_token=auth_id)
    try:
        result = client.batch({
            "user": ("user.current", {}),
            "admin": ("user.admin", {}),
            "app": ("app.info", {}),
            "lines": ("imopenlines.config.list.get", {}),
        })
    except RestError as exc:
        if isinstance(exc, TransportError) or exc.code == "REDIRECT" or (exc.http_status or 0) >= 500:
            raise Refused("bitrix24_unreachable", status=502, portal=portal) from None
        raise Refused("bad_token", portal=portal) from None
    portal = client.portal  # the client may have followed a move
    for key in ("user", "admin", "app"):
        if key in result.errors:
            error = result.errors[key]
            raise Refused("bad_token" if error.code in _DENIED_TOKEN else "bitrix24_error",
                          status=403 if error.code in _DENIED_TOKEN else 502, portal=portal)
    user, app = result.result.get("user"), result.result.get("app")
    if not isinstance(user, dict) or not str(user.get("ID", "")).isdigit() or not isinstance(app, dict):
        raise Refused("bitrix24_error", status=502, portal=portal)
    if app.get("CODE") != settings.B24_CLIENT_ID:
        raise Refused("bad_token", portal=portal)
    name = " ".join(str(user.get(k) or "").strip() for k in ("NAME", "LAST_NAME")).strip()
    lines = result.result.get("lines")
    lines_error = result.errors["lines"].code if "lines" in result.errors else ""
    verdict = Verdict(
        member_id=portal.member_id,
        user_id=str(user["ID"]),
        user_name=(name or str(user.get("EMAIL") or ""))[:128],
        is_admin=result.result.get("admin") is True,
        app_info=_app_info(app),
        open_lines=_open_lines(lines),
        open_lines_error=lines_error,
    )
    _store_app_info(portal, verdict.app_info)
    return portal, verdict


def _app_info(app: dict) -> dict:
    status = str(app.get("STATUS") or "")
    days = app.get("DAYS")
    return {
        "status": status if status in ("F", "D", "T", "P", "L", "S") else "",
        "payment_expired": str(app.get("PAYMENT_EXPIRED") or "N").upper() == "Y",
        "days": days if isinstance(days, int) else (int(days) if str(days).isdigit() else None),
        "license": str(app.get("LICENSE") or "")[:64],
        "version": str(app.get("VERSION") or "")[:32],
    }


def _open_lines(lines) -> tuple:
    out = []
    for line in lines if isinstance(lines, list) else []:
        if isinstance(line, dict) and str(line.get("ID", "")).isdigit():
            out.append({"id": str(line["ID"]), "name": str(line.get("LINE_NAME") or line["ID"])[:128]})
    return tuple(out)


def _store_app_info(portal: Portal, info: dict) -> None:
    lifecycle.set_app_info(portal, app_status=info["status"], payment_expired=info["payment_expired"],
                           license=info["license"])
