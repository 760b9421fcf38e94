"""Bitrix24 app events (ONAPPINSTALL, ONAPPUNINSTALL, ONAPPUPDATE): parse, verify, apply.

Events arrive form-encoded (`event`, `data[...]`, `ts`, `auth[...]`) or as JSON. What each proves:
- Only an administrator's grant changes an install: an ONAPPINSTALL (or an ONAPPUPDATE with a new
  `application_token`) is applied when its `auth[refresh_token]` passes `grants.administrator_grant`.
  A token-less ONAPPINSTALL only confirms an install whose `application_token` we already hold.
- `application_token` (compared in constant time) proves the sender knows it -- but every user of
  the portal does (placement POSTs carry `APPLICATION_TOKEN`). So ONAPPUNINSTALL is applied only once
  Bitrix24 confirms the app is gone from the portal ("after uninstall the app's API access is gone",
  docs/bitrix24.md); ONAPPUPDATE with the known token records a version and re-binds, nothing more.
Refusals from unverified senders are counted (lifecycle.count_rejection), not stored one row each.
"""
import hmac
import json
import logging
import re
from dataclasses import dataclass, field

from . import install as installer, lifecycle, oauth
from .grants import GrantRefused, administrator_grant
from .models import Portal
from .rest import PortalClient, RestError, TokenRefreshFailed

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

    def __init__(self, reason: str, status: int = 403, retry_after: float | None = None):
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
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
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
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
        if event.name == UPDATE:
            return _on_update(portal, event)
        if not _token_matches(portal, event.application_token):
            raise EventRefused("application_token does not match")
        return _on_uninstall(portal, event)
    except EventRefused as exc:
        if exc.status in (400, 403, 404, 409):
            lifecycle.count_rejection(event.member_id, source=event.name, reason=exc.reason)
        raise


def _usable_token(event: AppEvent) -> str:
    token = event.application_token
    if not token or len(token) > 255:
        raise EventRefused(f"{event.name} without a usable application_token", status=400)
    return token


def _grant_of(event: AppEvent):
    """The event's tokens as an administrator's grant, or EventRefused."""
    try:
        return administrator_grant(event.member_id, _str(event.auth.get("refresh_token")))
    except GrantRefused as exc:
        raise EventRefused(f"the event's tokens are not an administrator's ({exc.reason})", status=exc.status,
                           retry_after=exc.retry_after) from None


def _on_install(portal: Portal | None, event: AppEvent) -> str:
    token = _usable_token(event)
    version = _version(event.data.get("VERSION"))
    known = portal is not None and portal.status != Portal.Status.UNINSTALLED and _token_matches(portal, token)
    if known:
        # The install we already believe (its install POST carried this token): nothing to prove.
        lifecycle.accept_application_token(portal, token, via="known_application_token", version=version)
        return "install confirmed"
    if not _str(event.auth.get("refresh_token")):
        raise EventRefused("ONAPPINSTALL without an administrator's tokens for an install we do not know")
    grant = _grant_of(event)
    stored, _created = lifecycle.install(grant, language=_language(event.data.get("LANGUAGE_ID")),
                                         application_token=token)
    if not stored.bound_at:
        # Installed without our install page (handler set in the version card): bind here instead.
        # A binding failure is recorded on the portal, which then stays `new`.
        try:
            installer.bind(stored)
        except installer.InstallUnavailable:
            pass
    lifecycle.accept_application_token(Portal.objects.get(pk=stored.pk), token, via="oauth_refresh",
                                       version=version)
    return "application_token saved"


def _on_uninstall(portal: Portal, event: AppEvent) -> str:
    if portal.status == Portal.Status.UNINSTALLED:
        raise EventRefused("portal is already uninstalled", status=409)
    _confirm_gone(portal)
    clean = str(event.data.get("CLEAN", "0")) in ("1", "Y")
    lifecycle.uninstall(Portal.objects.get(pk=portal.pk), clean=clean)
    return "uninstalled"


# Answers that mean our app has no access to the portal any more.
_GONE = frozenset({"invalid_token", "NO_AUTH_FOUND", "APPLICATION_NOT_FOUND", "WRONG_AUTH_TYPE", "NOT_INSTALLED",
                   "invalid_grant", "PORTAL_DELETED", "portal_not_serving"})


def _confirm_gone(portal: Portal) -> None:
    """Ask the portal, with the app's own tokens, whether the app is still there; EventRefused if it is."""
    try:
        PortalClient(portal, interactive=True).call("app.info")
    except TokenRefreshFailed as exc:
        if exc.code in _GONE or exc.code in oauth.BLOCKING_ERRORS:
            return
        raise EventRefused(f"could not confirm the uninstall with Bitrix24 ({exc.code})", status=503,
                           retry_after=30) from None
    except RestError as exc:
        if exc.code in _GONE:
            return
        raise EventRefused(f"could not confirm the uninstall with Bitrix24 ({exc.code})", status=503,
                           retry_after=30) from None
    raise EventRefused("the app is still installed on the portal")


def _on_update(portal: Portal, event: AppEvent) -> str:
    if portal.status == Portal.Status.UNINSTALLED:
        raise EventRefused("portal is uninstalled", status=409)
    version = _version(event.data.get("VERSION"))
    if not version:
        raise EventRefused("ONAPPUPDATE without a usable data[VERSION]", status=400)
    token = _usable_token(event)
    if not _token_matches(portal, token):
        # "the updated application_token": only an administrator's grant may make it ours.
        if not _str(event.auth.get("refresh_token")):
            raise EventRefused("application_token does not match")
        grant = _grant_of(event)
        lifecycle.install(grant, language=_language(event.data.get("LANGUAGE_ID")), application_token=token)
    portal = lifecycle.record_update(Portal.objects.get(pk=portal.pk), version=version,
                                     previous_version=_version(event.data.get("PREVIOUS_VERSION")))
    # "When an application is deleted or updated, its event handlers will be removed" (event-bind.md).
    try:
        installer.bind(portal)
    except installer.InstallUnavailable:
        pass  # recorded on the portal; the admin's "re-bind" action or the next install repeats it
    return "updated"
