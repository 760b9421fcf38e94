"""Bitrix24 app events (ONAPPINSTALL, ONAPPUNINSTALL, ONAPPUPDATE), verified and applied in a worker; and the
portal directory the inbox asks about stored portals.

`/events/` only parses, runs the inbox's cheap checks (with `_check_install` / `_check_update` below) and
stores the event (inbox/); the handlers below run in a Celery worker, registered for their event codes in
PortalsConfig.ready(). What each proves:
- Only an administrator's grant changes an install: an ONAPPINSTALL (or an ONAPPUPDATE with a new
  `application_token`) is applied when its `auth[refresh_token]` passes `grants.administrator_grant`.
  A token-less ONAPPINSTALL only confirms an install whose `application_token` we already hold.
- `application_token` (compared in constant time) proves the sender knows it -- but every user of
  the portal does (placement POSTs carry `APPLICATION_TOKEN`). So ONAPPUNINSTALL is applied only once
  Bitrix24 confirms the app is gone from the portal ("after uninstall the app's API access is gone",
  docs/bitrix24.md); ONAPPUPDATE with the known token records a version and re-binds, nothing more.
Refusals from unverified senders are counted (lifecycle.count_rejection), not stored one row each;
in the worker a refusal becomes Reject, and unavailability (OAuth, REST) Retry. A Bitrix24 limit met by the
handler's own calls to the portal (QUERY_LIMIT_EXCEEDED, OPERATION_TIME_LIMIT, our limiter's wait) is neither:
those calls are not retried in the worker (limit_retries=0) and the event waits for the portal's next slot in
the inbox (Later: no attempt counted, never a dead letter), so one portal's limit holds no worker other
portals' events need (issue 26). The unverified OAuth budget (`throttled`) stays a Retry: a flood of forged
events must end as dead letters.
"""

import hmac
import logging
import re
from functools import lru_cache

from django.db import connection

from bitrix24 import limits, oauth
from bitrix24.errors import RETRYABLE, Refusal, RestError, TokenRefreshFailed
from inbox import queue as inbox_queue
from inbox import registry as inbox
from inbox.parsing import Event

from . import install as installer
from . import lifecycle
from .grants import GrantRefused, administrator_grant
from .models import Portal, PortalEvent
from .tokens import PortalClient

log = logging.getLogger(__name__)

INSTALL = "ONAPPINSTALL"
UNINSTALL = "ONAPPUNINSTALL"
UPDATE = "ONAPPUPDATE"
_VERSION = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_LANGUAGE = re.compile(r"^[a-z]{2}$")


def _version(value) -> str:
    """A version as Bitrix24 sends it (a number), or '' for anything else."""
    value = _str(value) if not isinstance(value, int) or isinstance(value, bool) else str(value)
    return value if _VERSION.match(value) else ""


def _language(value) -> str:
    value = _str(value).lower()
    return value if _LANGUAGE.match(value) else ""


class EventRefused(Refusal):
    """A well-formed event that is not believed or not applicable; `status` is the HTTP answer."""


def _str(value) -> str:
    return value if isinstance(value, str) else ""


def _token_matches(portal: Portal, presented: str) -> bool:
    stored = portal.application_token
    if not stored or not presented:
        return False
    return hmac.compare_digest(stored.encode(), presented.encode())


# What the inbox reads of a portal for each event (inbox/queue.py accept).
_FIND_FIELDS = ("id", "member_id", "status", "application_token_digest")


@lru_cache(maxsize=1)
def _find_sql() -> str:
    """The directory's lookup, built once from the model's metadata (so it follows migrations): run for every
    event `/events/` takes, where compiling it through the ORM cost more CPU than running it (bench/ingest.py).
    member_id is unique, so the first row is the only one."""
    meta = Portal._meta
    column = {f.attname: str(f.column) for f in meta.concrete_fields}
    columns = ", ".join(column[name] for name in _FIND_FIELDS)
    return f"SELECT {columns} FROM {meta.db_table} WHERE {column['member_id']} = %s"


@lru_cache(maxsize=1)
def _unchanged_sql() -> str:
    meta = Portal._meta
    digest = meta.get_field("application_token_digest").column
    return f"SELECT 1 FROM {meta.db_table} WHERE {meta.pk.column} = %s AND {digest} = %s"


# The portals' rows as `find` last read them in this process, by member_id (a hint, see `find`).
_portal_rows: dict[str, tuple] = {}
_PORTAL_ROWS_MAX = 10_000


class PortalDirectory:
    """The stored portals as the inbox sees them (inbox.registry.Directory), registered in ready()."""

    def find(self, member_id: str, *, fresh: bool = False) -> Portal | None:
        """The portal as `/events/` checks it (no token read or decrypted; other fields load on access): its row as
        this process last read it, unless `fresh`. Only a hint: the inbox stores a proven event only if the row
        still holds that token's digest (`unchanged`), and reads it again otherwise."""
        found = None if fresh else _portal_rows.get(member_id)
        if found is None:
            with connection.cursor() as cursor:
                cursor.execute(_find_sql(), [member_id])
                found = cursor.fetchone()
            if found is None:
                _portal_rows.pop(member_id, None)
                return None
            if len(_portal_rows) >= _PORTAL_ROWS_MAX:
                _portal_rows.clear()
            _portal_rows[member_id] = found
        return Portal.from_db(connection.alias, _FIND_FIELDS, found)

    def unchanged(self, portal: inbox.StoredPortal) -> tuple[str, list]:
        """A condition (SQL, parameters) that holds while the portal's row is as `find` gave it: the same pk and
        application_token digest, checked inside the statement that stores an event proven by it."""
        return _unchanged_sql(), [portal.pk, portal.application_token_digest]

    def refused(self, member_id: str, *, source: str, reason: str) -> None:
        lifecycle.count_rejection(member_id, source=source, reason=reason)

    # --- the pull of offline events (inbox/offline.py) ---------------------------------------------------
    def _offline(self):
        return Portal.objects.filter(
            status__in=(Portal.Status.NEW, Portal.Status.ACTIVE), offline_events=Portal.OfflineEvents.BOUND
        )

    def offline_client(self, member_id: str) -> PortalClient | None:
        portal = self._offline().filter(member_id=member_id).first()
        # No limit waited out in the worker: a pull that meets one ends, and the portal is asked again at its
        # next slot (the ONOFFLINEEVENT that asked waits for it in the inbox; beat pulls every minute anyway).
        return PortalClient(portal, limit_retries=0) if portal is not None else None

    def offline_portals(self):
        return self._offline().order_by("pk").values_list("member_id", flat=True).iterator()

    def offline_failed(self, member_id: str, *, code: str, description: str) -> None:
        """What a refused pull means. The app gone from the portal (its tokens refused: the same answers
        `_confirm_gone` takes as proof) is the uninstall Bitrix24 could not deliver: it goes through the inbox
        as ONAPPUNINSTALL, so its handler confirms it again with the portal, in the portal's order. ACCESS_DENIED:
        offline events are not allowed any more (not on the plan, or the installer no longer an administrator):
        recorded on the portal, which then is not pulled until the next bind."""
        portal = Portal.objects.filter(member_id=member_id).first()
        if portal is None or not portal.is_serving:
            # E.g. blocked by the pull's own refused refresh: a refused refresh alone uninstalls nothing (the
            # lifecycle's rule); the admin shows the portal blocked, with the OAuth server's answer.
            return
        if shows_app_gone(code):
            uninstall_noticed(portal)
        elif code == "ACCESS_DENIED":
            lifecycle.set_offline_events(
                portal, Portal.OfflineEvents.FAILED, reason=f"pull: {code} {description}"[:255]
            )


def _in_worker(apply):
    """An inbox handler around `apply(portal, event)`: refusals become Reject, unavailability Retry, and a limit
    answer to the portal's calls (raised as it came: `_ask`) Later, at the portal's next slot."""

    def handler(item) -> str:
        event = Event.of(item)
        portal = Portal.objects.filter(member_id=event.member_id).first()
        try:
            return apply(portal, event)
        except EventRefused as exc:
            if exc.status in (429, 503):
                raise inbox.Retry(exc.reason, after=exc.retry_after) from None
            if exc.status in (400, 403, 404):
                lifecycle.count_rejection(event.member_id, source=event.name, reason=exc.reason)
            raise inbox.Reject(exc.reason) from None
        except (oauth.OAuthUnavailable, installer.InstallUnavailable) as exc:
            raise inbox.Retry(f"Bitrix24 unavailable ({getattr(exc, 'code', type(exc).__name__)})") from None
        except lifecycle.TransitionError as exc:
            raise inbox.Reject(str(exc)) from None
        except RestError as exc:
            plan = (portal.rest_plan if portal is not None else "") or limits.STANDARD
            wait = limits.retry_in(event.member_id, exc, plan=plan)
            if wait is None:
                raise
            raise inbox.Later(f"the portal's limit ({exc.code})", wait) from None

    handler.__name__ = f"on_{apply.__name__.strip('_')}"
    return handler


def _check_install(portal, auth: dict, data: dict) -> None:
    """ONAPPINSTALL in the request: its shape only (the proof is checked in the worker)."""
    token = _str(auth.get("application_token"))
    if not token or len(token) > 255:
        raise inbox.Refused("ONAPPINSTALL without a usable application_token", status=400)


def _check_update(portal, auth: dict, data: dict) -> None:
    """ONAPPUPDATE in the request: a known, installed portal; the known token, or tokens to prove a new one."""
    if portal is None:
        raise inbox.Refused("unknown portal", status=404)
    if portal.status == Portal.Status.UNINSTALLED:
        raise inbox.Refused("portal is uninstalled", status=409)
    if not _version(data.get("VERSION")):
        raise inbox.Refused("ONAPPUPDATE without a usable data[VERSION]", status=400)
    token = _str(auth.get("application_token"))
    if not token or len(token) > 255:
        raise inbox.Refused("ONAPPUPDATE without a usable application_token", status=400)
    if not portal.application_token_is(token) and not _str(auth.get("refresh_token")):
        raise inbox.Refused("application_token does not match")


def register() -> None:
    """Route the app events through the inbox and tell it about stored portals (PortalsConfig.ready())."""
    inbox.set_directory(PortalDirectory())
    inbox.register(INSTALL, _in_worker(_on_install), needs_application_token=False, precheck=_check_install)
    # The docs' example spells the uninstall event ONAPPSUNINSTALL.
    inbox.register(UNINSTALL, _in_worker(_on_uninstall), aliases=("ONAPPSUNINSTALL",))
    inbox.register(UPDATE, _in_worker(_on_update), needs_application_token=False, precheck=_check_update)


def _usable_token(event: Event) -> str:
    token = event.application_token
    if not token or len(token) > 255:
        raise EventRefused(f"{event.name} without a usable application_token", status=400)
    return token


def _grant_of(event: Event):
    """The event's tokens as an administrator's grant, or EventRefused."""
    try:
        return administrator_grant(event.member_id, _str(event.auth.get("refresh_token")))
    except GrantRefused as exc:
        raise EventRefused(
            f"the event's tokens are not an administrator's ({exc.reason})",
            status=exc.status,
            retry_after=exc.retry_after,
        ) from None


def _on_install(portal: Portal | None, event: Event) -> str:
    if event.offline:
        # From the portal's own queue, read with our tokens: the install we hold (else we could not have read
        # it). It only completes that install; it carries no application_token to save.
        if portal is None or portal.status == Portal.Status.UNINSTALLED:
            raise EventRefused("an offline ONAPPINSTALL for a portal we do not serve", status=404)
        if portal.status == Portal.Status.NEW:
            lifecycle.activate(portal, via="ONAPPINSTALL (offline)")
        return "install confirmed"
    token = _usable_token(event)
    version = _version(event.data.get("VERSION"))
    known = portal is not None and portal.status != Portal.Status.UNINSTALLED and _token_matches(portal, token)
    if portal is not None and known:
        # The install we already believe (its install POST carried this token): nothing to prove, and
        # nothing to take from it either (every user knows this token): it may only complete the install.
        if portal.status == Portal.Status.NEW:
            lifecycle.activate(portal, via="ONAPPINSTALL")
        return "install confirmed"
    if not _str(event.auth.get("refresh_token")):
        raise EventRefused("ONAPPINSTALL without an administrator's tokens for an install we do not know")
    grant = _grant_of(event)
    stored, _created = lifecycle.install(
        grant, language=_language(event.data.get("LANGUAGE_ID")), application_token=token
    )
    if not stored.bound_at:
        # Installed without our install page (handler set in the version card): bind here instead.
        # A binding failure is recorded on the portal, which then stays `new`.
        try:
            installer.bind(stored)
        except installer.InstallUnavailable:
            pass
    lifecycle.accept_application_token(Portal.objects.get(pk=stored.pk), token, via="oauth_refresh", version=version)
    return "application_token saved"


def _on_uninstall(portal: Portal | None, event: Event) -> str:
    if portal is None:
        raise EventRefused("unknown portal", status=404)
    if portal.status == Portal.Status.UNINSTALLED:
        return "already uninstalled"  # applied by an earlier run of this item
    _confirm_gone(portal)
    clean = str(event.data.get("CLEAN", "0")) in ("1", "Y")
    lifecycle.uninstall(Portal.objects.get(pk=portal.pk), clean=clean)
    return "uninstalled"


# Answers that mean our app has no access to the portal any more.
_GONE = frozenset(
    {
        "invalid_token",
        "NO_AUTH_FOUND",
        "APPLICATION_NOT_FOUND",
        "WRONG_AUTH_TYPE",
        "NOT_INSTALLED",
        "invalid_grant",
        "PORTAL_DELETED",
        "portal_not_serving",
    }
)


def shows_app_gone(code: str) -> bool:
    """An answer to the app's own tokens that says the app is no longer on the portal."""
    return code in _GONE and code != "portal_not_serving"


def uninstall_noticed(portal: Portal) -> None:
    """The app looks gone from a serving portal (the offline pull's or the sync pass's call was refused so),
    and no ONAPPUNINSTALL came (lost while we were down, or dropped): it goes through the inbox as one, so
    its handler confirms it with the portal, in the portal's order, and applies it once. Stored once per
    install (the key names the install); CLEAN is unknown, so the app's data is kept."""
    installed = portal.installed_at.isoformat() if portal.installed_at else ""
    inbox_queue.accept_offline(UNINSTALL, member_id=portal.member_id, data={"CLEAN": "0"}, record=f"gone:{installed}")


def _confirm_gone(portal: Portal) -> None:
    """Ask the portal, with the app's own tokens, whether the app is still there; EventRefused if it is.

    A refresh refused *now* (tokens revoked by the uninstall) is proof for a portal that was serving. For
    a portal already blocked (its refresh token lost before this event) it proves nothing: only the
    portal's own answer to our access token counts, or the uninstall waits (rejected, replayable) --
    else any user, who knows the application_token, could uninstall a portal waiting to heal."""
    blocked = portal.status == Portal.Status.BLOCKED
    try:
        _ask(portal, "app.info")
    except TokenRefreshFailed as exc:
        if blocked:
            raise EventRefused(
                "cannot confirm the uninstall of a blocked portal (its tokens were lost "
                "before); an administrator's open heals it",
                status=409,
            ) from None
        if exc.code in _GONE or exc.code in oauth.BLOCKING_ERRORS:
            return
        raise EventRefused(
            f"could not confirm the uninstall with Bitrix24 ({exc.code})", status=503, retry_after=30
        ) from None
    except RestError as exc:
        if exc.code in _GONE:
            return
        if exc.code in RETRYABLE:
            raise  # a limit: later (_in_worker), it says nothing of the app being there
        raise EventRefused(
            f"could not confirm the uninstall with Bitrix24 ({exc.code})", status=503, retry_after=30
        ) from None
    raise EventRefused("the app is still installed on the portal")


def _on_update(portal: Portal | None, event: Event) -> str:
    if portal is None:
        raise EventRefused("unknown portal", status=404)
    if portal.status == Portal.Status.UNINSTALLED:
        raise EventRefused("portal is uninstalled", status=409)
    if event.offline:
        # From the portal's own queue (no auth, the data as Bitrix24 kept it): the version and the bindings
        # are asked of the portal below anyway. The new application_token is not learnt this way.
        return _apply_update(portal, event)
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
    return _apply_update(portal, event)


def _apply_update(portal: Portal, event: Event) -> str:
    portal = Portal.objects.get(pk=portal.pk)
    # Every user knows the application_token, so the event's VERSION is only a hint: the portal's own
    # app.info, asked with the app's token, says which version is installed. A version we already hold
    # changes nothing (no history row, no re-bind): forged or repeated updates cost one REST call.
    installed = _installed_version(portal)
    if installed == portal.app_version:
        if not _bindings_older_than_the_last_update(portal):
            return "no change"
        # Recorded by an earlier run of this item that died before its bindings were done: finish them.
    else:
        portal = lifecycle.record_update(
            portal,
            version=installed,
            previous_version=portal.app_version or _version(event.data.get("PREVIOUS_VERSION")),
        )
    # "When an application is deleted or updated, its event handlers will be removed" (event-bind.md).
    try:
        installer.bind(portal)
    except installer.InstallUnavailable:
        pass  # recorded on the portal; the admin's "re-bind" action or the next install repeats it
    return "updated"


def _bindings_older_than_the_last_update(portal: Portal) -> bool:
    last = (
        portal.events.filter(kind=PortalEvent.Kind.UPDATED)
        .order_by("-created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    return last is not None and (portal.bound_at is None or portal.bound_at < last)


def _ask(portal: Portal, method: str):
    """A handler's own call to the portal, with no limit waited out in the worker (the client's limit_retries=0):
    a limit answer is raised as it came, and the event waits for the portal's slot in the inbox (`_in_worker`)."""
    return PortalClient(portal, limit_retries=0).call(method)


def _installed_version(portal: Portal) -> str:
    """The version the portal says is installed (app.info VERSION, api-reference/common/system/app-info.md)."""
    try:
        info = _ask(portal, "app.info")
    except TokenRefreshFailed as exc:
        raise EventRefused(
            f"could not ask the portal for the installed version ({exc.code})", status=503, retry_after=60
        ) from None
    except RestError as exc:
        if exc.code in RETRYABLE:
            raise  # a limit: later (_in_worker)
        raise EventRefused(
            f"could not ask the portal for the installed version ({exc.code})", status=503, retry_after=30
        ) from None
    version = _version(info.get("VERSION")) if isinstance(info, dict) else ""
    if not version:
        raise EventRefused("the portal's app.info has no usable VERSION", status=503, retry_after=60)
    return version
