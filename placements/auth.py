"""Prove a placement request genuine: a stored portal, its current address, a verified AUTH_ID.

The verdict (who the user is, whether they administer the portal, what app.info said) is cached
under a hash of the token for at most the token's remaining lifetime, so a re-opened widget costs one
indexed query and no call to Bitrix24. The posted DOMAIN is only compared with the address the OAuth
server confirmed; it is never contacted.
"""
import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache

from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.locmem import LocMemCache

from b24widget import metrics

from portals import lifecycle, oauth
from portals.frame_post import FramePost
from portals.models import Portal
from portals.rest import PortalClient, PortalMovedUnexplained, RestError, TokenRefreshFailed, TransportError

from .models import WidgetSettings

log = logging.getLogger(__name__)

VERDICT_MAX_AGE = 3600
_ID = re.compile(r"[0-9]{1,10}")  # Bitrix24 user and Open Line ids
_DAYS = re.compile(r"[0-9]{1,6}")
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


# In front of a shared cache (Redis), each process keeps the verdicts it has read: a verdict only ever
# expires, so a local copy with the same lifetime is as good, and saves a network round trip per open.
_local_verdicts = LocMemCache("b24widget-verdicts", {"OPTIONS": {"MAX_ENTRIES": 20000}})


def _get_verdict(key: str):
    """The cached verdict, from this process's copy first when the shared cache is remote."""
    remote = not isinstance(caches["default"], LocMemCache)
    if remote:
        entry = _local_verdicts.get(key)
        if entry is not None:
            return entry[1]
    entry = cache.get(key)
    if entry is None:
        return None
    expires_at, verdict = entry
    if remote and expires_at - time.time() > 1:
        _local_verdicts.set(key, entry, expires_at - time.time())
    return verdict


def _set_verdict(key: str, verdict, lifetime: int) -> None:
    cache.set(key, (time.time() + lifetime, verdict), lifetime)


def _cache_key(member_id: str, auth_id: str) -> str:
    digest = hashlib.sha256(f"{member_id}\0{auth_id}".encode()).hexdigest()
    return f"b24widget:verdict:{digest}"


SECRETS = ("access_token", "refresh_token", "application_token")


@lru_cache(maxsize=1)
def _find_sql() -> str:
    """The hot path's one query, built from the models' metadata (so it follows migrations).

    A raw query costs a third of the equivalent ORM query here (no per-call SQL compilation); it
    leaves the secrets unloaded, and brings the widget's settings along in the same round trip.
    """
    portal, settings_ = Portal._meta, WidgetSettings._meta
    columns = ", ".join(f"p.{f.column}" for f in portal.concrete_fields if f.name not in SECRETS)
    return (
        f"SELECT {columns}, w.id AS ws_id, w.enabled AS ws_enabled, w.open_line_id AS ws_open_line_id "
        f"FROM {portal.db_table} p LEFT JOIN {settings_.db_table} w "
        f"ON w.{settings_.get_field('portal').column} = p.{portal.pk.column} "
        f"WHERE p.{portal.get_field('member_id').column} = %s"
    )


def _load_portal(member_id: str) -> Portal | None:
    for portal in Portal.objects.raw(_find_sql(), [member_id]):
        widget_settings = None
        if portal.ws_id is not None:
            widget_settings = WidgetSettings(id=portal.ws_id, portal_id=portal.pk, enabled=bool(portal.ws_enabled),
                                             open_line_id=portal.ws_open_line_id)
        portal._state.fields_cache["widget_settings"] = widget_settings
        return portal
    return None


def find_portal(post: FramePost) -> Portal:
    """The stored portal the POST names, if it may be served; raises Refused."""
    portal = _load_portal(post.member_id)
    if portal is None:
        raise Refused("not_installed")
    if portal.status == Portal.Status.UNINSTALLED:
        raise Refused("uninstalled", portal=portal)
    if portal.status == Portal.Status.BLOCKED:
        raise Refused("blocked", portal=portal)
    return portal


def recheck_domain(portal: Portal, post: FramePost) -> Portal:
    """The posted DOMAIN differs from the stored one: the portal may have been renamed.

    Anyone can post any DOMAIN, so the OAuth server is asked at most once per
    B24_DOMAIN_RECHECK_INTERVAL per portal. When that budget is spent the portal comes back unchanged:
    verifying the token at the stored address still notices a real move (the old address answers 302,
    which the REST client confirms with the OAuth server). The posted host itself is never contacted.
    """
    if not cache.add(f"b24widget:domain-recheck:{portal.pk}", 1, settings.B24_DOMAIN_RECHECK_INTERVAL):
        log.info("posted domain differs; OAuth re-check throttled", extra={"member_id": portal.member_id})
        return portal
    try:
        portal = oauth.refresh_portal(portal, force=True)
    except oauth.OAuthUnavailable:
        raise Refused("bitrix24_unreachable", status=502, portal=portal) from None
    except oauth.OAuthError as exc:
        if exc.code in oauth.BLOCKING_ERRORS or isinstance(exc, oauth.PortalNotServing):
            raise Refused("blocked", portal=portal) from None
        raise Refused("bitrix24_error", status=502, portal=portal) from None
    if post.domain != portal.domain:
        raise Refused("domain_mismatch", portal=portal)
    return portal


def verify(post: FramePost) -> tuple[Portal, Verdict]:
    """Return the portal and the verified user behind the POST, or raise Refused."""
    portal = find_portal(post)
    if not post.auth_id:
        raise Refused("no_auth", portal=portal)
    if post.domain != portal.domain:
        portal = recheck_domain(portal, post)
    key = _cache_key(portal.member_id, post.auth_id)
    verdict = _get_verdict(key)
    metrics.verification(cached=verdict is not None)
    if verdict is None:
        portal, verdict = _ask_portal(portal, post.auth_id)
        # AUTH_EXPIRES is what is left of the token's life; 0 means it is ending: nothing to cache.
        lifetime = VERDICT_MAX_AGE if post.auth_expires is None else min(post.auth_expires, VERDICT_MAX_AGE)
        if lifetime > 0:
            _set_verdict(key, verdict, lifetime)
    if post.domain != portal.domain:
        # Not the address the OAuth server confirmed (possibly learned just now, from a 302 at the old one).
        log.warning("posted domain differs from the confirmed one; refused", extra={"member_id": portal.member_id})
        raise Refused("domain_mismatch", portal=portal)
    if portal.status == Portal.Status.NEW:
        # Bitrix24 shows the square only after installFinish: the install is complete.
        portal = lifecycle.activate(portal, via="widget_open")
    lifecycle.touch(portal)
    return portal, verdict


def _refused_by_bitrix24(error: RestError, portal: Portal) -> Refused:
    """What an error answer from the portal means for the user who opened the widget."""
    if isinstance(error, TokenRefreshFailed):
        # Following a move needed the OAuth server; it refused the portal (now blocked) or did not answer.
        if error.code in oauth.BLOCKING_ERRORS or error.code == "portal_not_serving":
            return Refused("blocked", portal=portal)
        return Refused("bitrix24_unreachable", status=502, portal=portal)
    if isinstance(error, PortalMovedUnexplained):
        return Refused("bitrix24_error", status=502, portal=portal)  # a redirect nobody vouches for
    if isinstance(error, TransportError):
        return Refused("bitrix24_unreachable", status=502, portal=portal)
    if error.code in _DENIED_TOKEN:
        return Refused("bad_token", portal=portal)
    if error.code == "PAYMENT_REQUIRED":
        return Refused("payment_required", status=402, portal=portal)
    # Limits, outages, unknown methods: Bitrix24's trouble, not the user's authorization.
    return Refused("bitrix24_error", status=502, portal=portal)


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
        raise _refused_by_bitrix24(exc, client.portal) from None
    portal = client.portal  # the client may have followed a move
    for key in ("user", "admin", "app"):
        if key in result.errors:
            raise _refused_by_bitrix24(result.errors[key], portal)
    user, app = result.result.get("user"), result.result.get("app")
    if not isinstance(user, dict) or not _is_id(user.get("ID")) or not isinstance(app, dict):
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
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    return int(value) if isinstance(value, str) and _DAYS.fullmatch(value) else None


def _open_lines(lines) -> tuple:
    out = []
    for line in lines if isinstance(lines, list) else []:
        if isinstance(line, dict) and _is_id(line.get("ID")):
            out.append({"id": str(line["ID"]), "name": str(line.get("LINE_NAME") or line["ID"])[:128]})
    return tuple(out)


def _store_app_info(portal: Portal, info: dict) -> None:
    lifecycle.set_app_info(portal, app_status=info["status"], payment_expired=info["payment_expired"],
                           license=info["license"])
