"""Bitrix24 app events (ONAPPINSTALL, ONAPPUNINSTALL, ONAPPUPDATE): parse, verify, apply.

Events arrive form-encoded (`event`, `data[...]`, `ts`, `auth[...]`) or as JSON. They are believed
only through proof: ONAPPINSTALL by tokens the OAuth server confirms (or right after a verified
install POST, for a portal that has no application_token yet); every later event by its
`application_token`, compared in constant time with the stored one.
"""
import hmac
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from . import install as installer, lifecycle, oauth
from .models import Portal
from .rest import PortalClient, RestError

log = logging.getLogger(__name__)

INSTALL = "ONAPPINSTALL"
UNINSTALL = "ONAPPUNINSTALL"
UPDATE = "ONAPPUPDATE"
# The docs' example spells the uninstall event ONAPPSUNINSTALL.
EVENT_NAMES = {INSTALL: INSTALL, UNINSTALL: UNINSTALL, "ONAPPSUNINSTALL": UNINSTALL, UPDATE: UPDATE}

_BRACKETS = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_SECRET_MAX = 1024
_MEMBER_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_VERSION = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_LANGUAGE = re.compile(r"^[a-z]{2}$")


def _version(value) -> str:
    """A version as Bitrix24 sends it (a number), or '' for anything else."""
    value = _str(value) if not isinstance(value, int) or isinstance(value, bool) else str(value)
    return value if _VERSION.match(value) else ""


def _language(value) -> str:
    value = _str(value).lower()
    return value if _LANGUAGE.match(value) else ""


class BadEvent(ValueError):
    """A malformed event body (HTTP 400)."""


class EventRefused(Exception):
    """A well-formed event that is not believed or not applicable; `status` is the HTTP answer."""

    def __init__(self, reason: str, status: int = 403):
        self.reason = reason
        self.status = status
        super().__init__(reason)


@dataclass(frozen=True)
class AppEvent:
    name: str
    member_id: str
    data: dict
    auth: dict = field(repr=False)

    @property
    def application_token(self) -> str:
        return _str(self.auth.get("application_token"))


def _str(value) -> str:
    return value if isinstance(value, str) else ""


def _nest(pairs) -> dict:
    """Turn PHP-style keys (`auth[member_id]`, `data[A][B]`) into nested dicts."""
    out: dict = {}
    for key, value in pairs:
        match = _BRACKETS.match(key)
        if not match:
            raise BadEvent(f"malformed field name {key[:40]!r}")
        path = [match.group(1)] + re.findall(r"\[([^\[\]]*)\]", match.group(2))
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise BadEvent(f"conflicting field {key[:40]!r}")
            node = child
        if isinstance(node.get(path[-1]), dict):
            raise BadEvent(f"conflicting field {key[:40]!r}")
        node[path[-1]] = value
    return out


def parse(request) -> AppEvent:
    """Parse an event POST (form-encoded or JSON) into an AppEvent, or raise BadEvent."""
    if request.content_type == "application/json":
        try:
            body = json.loads(request.body or b"null")
        except ValueError:
            raise BadEvent("body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadEvent("body is not a JSON object")
    else:
        body = _nest(request.POST.items())
    name = body.get("event")
    if not isinstance(name, str) or not name:
        raise BadEvent("event is missing")
    if name.upper() not in EVENT_NAMES:
        raise EventRefused(f"unknown event {name[:40]}", status=400)
    auth = body.get("auth")
    data = body.get("data", {})
    if not isinstance(auth, dict):
        raise BadEvent("auth is missing")
    if isinstance(data, list) and not data:
        data = {}
    if not isinstance(data, dict):
        raise BadEvent("data is not an object")
    member_id = _str(auth.get("member_id"))
    if not _MEMBER_ID.match(member_id):
        raise BadEvent("auth[member_id] is missing or malformed")
    for key, value in auth.items():
        if not isinstance(value, (str, int)) or len(str(value)) > _SECRET_MAX:
            raise BadEvent(f"auth[{str(key)[:40]}] is malformed")
    return AppEvent(name=EVENT_NAMES[name.upper()], member_id=member_id, data=data, auth=auth)


def _token_matches(portal: Portal, presented: str) -> bool:
    stored = portal.application_token
    if not stored or not presented:
        return False
    return hmac.compare_digest(stored.encode(), presented.encode())


def handle(event: AppEvent) -> str:
    """Verify and apply an event; returns what was done. Raises EventRefused (nothing changed)."""
    portal = Portal.objects.filter(member_id=event.member_id).first()
    try:
        if event.name == INSTALL:
            return _on_install(portal, event)
        if portal is None:
            raise EventRefused("unknown portal", status=404)
        if not _token_matches(portal, event.application_token):
            raise EventRefused("application_token does not match")
        if event.name == UNINSTALL:
            return _on_uninstall(portal, event)
        return _on_update(portal, event)
    except EventRefused as exc:
        lifecycle.reject_event(portal, event=event.name, reason=exc.reason)
        raise


def _on_install(portal: Portal | None, event: AppEvent) -> str:
    token = event.application_token
    if not token or len(token) > 255:
        raise EventRefused("ONAPPINSTALL without a usable application_token", status=400)
    version = _version(event.data.get("VERSION"))
    via = _confirm_install(portal, event)
    if via == "oauth_refresh":
        portal = Portal.objects.get(member_id=event.member_id)
    lifecycle.accept_application_token(portal, token, via=via, version=version)
    return "application_token saved"


def _confirm_install(portal: Portal | None, event: AppEvent) -> str:
    """Prove an ONAPPINSTALL genuine; returns how. Raises EventRefused."""
    refresh_token = _str(event.auth.get("refresh_token"))
    access_token = _str(event.auth.get("access_token"))
    if refresh_token:
        # The OAuth server names the portal the token belongs to.
        try:
            grant = oauth.request_refresh(refresh_token)
        except oauth.OAuthRejected as exc:
            raise EventRefused(f"OAuth server refused the event's tokens ({exc.code})") from None
        except oauth.OAuthUnavailable as exc:
            raise EventRefused(f"OAuth server unreachable ({exc.code})", status=503) from None
        if grant.member_id != event.member_id:
            raise EventRefused("the event's tokens belong to another portal")
        stored, created = lifecycle.install(grant, language=_language(event.data.get("LANGUAGE_ID")))
        if created:
            # Installed without our install page (handler set in the version card): bind here instead.
            # A binding failure is recorded on the portal; the event itself is still genuine.
            try:
                installer.bind(stored)
            except installer.InstallUnavailable:
                pass
        return "oauth_refresh"
    if portal is None:
        raise EventRefused("unknown portal and no tokens to confirm it", status=404)
    if portal.status == Portal.Status.UNINSTALLED:
        raise EventRefused("portal is uninstalled", status=409)
    if access_token:
        # The stored endpoint came from the OAuth server; the portal itself judges the token.
        try:
            info = PortalClient(portal, access_token=access_token).call("app.info")
        except RestError as exc:
            raise EventRefused(f"portal refused the event's access token ({exc.code})") from None
        if not isinstance(info, dict) or info.get("CODE") != settings.B24_CLIENT_ID:
            raise EventRefused("the event's access token belongs to another application")
        return "access_token"
    if _token_matches(portal, event.application_token):
        return "known_application_token"
    window = timedelta(seconds=settings.B24_INSTALL_EVENT_WINDOW)
    if not portal.application_token and portal.installed_at and timezone.now() - portal.installed_at <= window:
        if portal.last_error.startswith("binding:"):
            # The install page could not bind the widget (e.g. not an administrator): not complete.
            raise EventRefused("the install did not complete (placements not bound)", status=409)
        return "recent_install"
    raise EventRefused("ONAPPINSTALL without proof (no tokens, no recent verified install)")


def _on_uninstall(portal: Portal, event: AppEvent) -> str:
    if portal.status == Portal.Status.UNINSTALLED:
        raise EventRefused("portal is already uninstalled", status=409)
    clean = str(event.data.get("CLEAN", "0")) in ("1", "Y")
    lifecycle.uninstall(portal, clean=clean)
    return "uninstalled"


def _on_update(portal: Portal, event: AppEvent) -> str:
    version = _version(event.data.get("VERSION"))
    if not version:
        raise EventRefused("ONAPPUPDATE without a usable data[VERSION]", status=400)
    lifecycle.record_update(portal, version=version, previous_version=_version(event.data.get("PREVIOUS_VERSION")))
    return "updated"
