"""The portal state machine: new -> active -> (blocked <-> active) -> uninstalled.

Every change of a portal's state goes through a function here; each checks the current state and
writes a PortalEvent. Event details hold only non-secret facts (codes, addresses, versions).
"""

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone

from bitrix24 import limits
from bitrix24.errors import OAuthError
from bitrix24.oauth import TokenGrant

from .models import Portal, PortalEvent, Rejection

log = logging.getLogger(__name__)
Kind = PortalEvent.Kind
Status = Portal.Status

# Sent inside the uninstall transaction when the user asked to delete the app's data (data[CLEAN]=1).
# Apps that keep per-portal data (placements' widget settings) delete it here.
portal_data_cleaned = Signal()

# How stale last_seen_at may get before a widget open writes it again (keeps the hot path read-only).
LAST_SEEN_RESOLUTION = timedelta(minutes=5)


class TransitionError(Exception):
    """A transition that the portal's current state does not allow."""


def record(portal: Portal, kind: str, **detail) -> PortalEvent:
    """Append one line to the portal's history and log it (never with a secret: callers pass facts only)."""
    log.info("portal event", extra={"member_id": portal.member_id, "event": str(kind), "detail": detail})
    return PortalEvent.objects.create(portal=portal, kind=kind, detail=detail)


def _grant_fields(portal: Portal, grant: TokenGrant, now: datetime) -> list[str]:
    """Copy a confirmed token grant onto the portal; returns the changed field names."""
    portal.access_token = grant.access_token
    portal.refresh_token = grant.refresh_token
    portal.access_expires_at = now + timedelta(seconds=grant.expires_in)
    portal.refresh_renewed_at = now
    fields = ["access_token", "refresh_token", "access_expires_at", "refresh_renewed_at"]
    if grant.server_endpoint and grant.server_endpoint != portal.server_endpoint:
        portal.server_endpoint = grant.server_endpoint
        fields.append("server_endpoint")
    if grant.scope and grant.scope != portal.scope:
        portal.scope = grant.scope
        fields.append("scope")
    if grant.status and grant.status != portal.app_status:
        if portal.app_status:
            record(portal, Kind.APP_STATUS_CHANGED, old=portal.app_status, new=grant.status)
        portal.app_status = grant.status
        fields.append("app_status")
    fields += _follow_endpoint(portal, grant.client_endpoint, grant.domain)
    return fields


def _follow_endpoint(portal: Portal, client_endpoint: str, domain: str) -> list[str]:
    """Adopt an OAuth-confirmed address; a changed host is recorded as a move."""
    if client_endpoint == portal.client_endpoint and domain == portal.domain:
        return []
    if portal.domain and domain != portal.domain:
        record(portal, Kind.DOMAIN_CHANGED, old=portal.domain, new=domain)
    portal.client_endpoint = client_endpoint
    portal.domain = domain
    return ["client_endpoint", "domain"]


@transaction.atomic
def follow_move(portal: Portal, *, client_endpoint: str, domain: str, via: str) -> Portal:
    """The OAuth server reports the portal at another address (renamed): adopt it, record the move."""
    current = Portal.objects.select_for_update().get(pk=portal.pk)
    fields = _follow_endpoint(current, client_endpoint, domain)
    if fields:
        current.save(update_fields=fields)
        log.info("portal moved", extra={"member_id": current.member_id, "domain": domain, "via": via})
    for name in ("client_endpoint", "domain"):
        setattr(portal, name, getattr(current, name))
    return portal


@transaction.atomic
def install(
    grant: TokenGrant, *, language: str = "", user_id: str = "", application_token: str = ""
) -> tuple[Portal, bool]:
    """Store a portal whose install an administrator made (the caller checked both); returns (portal, created).

    A known member_id is updated in place (reinstall): its tokens and `application_token` are replaced.
    Uninstalled and blocked portals start again as `new`; an active portal stays active.
    """
    now = timezone.now()
    portal = Portal.objects.select_for_update().filter(member_id=grant.member_id).first()
    created = portal is None
    if portal is None:
        portal = Portal(member_id=grant.member_id, client_endpoint=grant.client_endpoint, domain=grant.domain)
    previous = portal.status
    _grant_fields(portal, grant, now)
    portal.language = language or portal.language
    portal.installed_by = grant.user_id or user_id or portal.installed_by
    portal.installed_at = now
    portal.uninstalled_at = None
    portal.last_error = ""
    portal.refresh_lease_owner, portal.refresh_lease_until = "", None
    if previous in (Status.UNINSTALLED, Status.BLOCKED):
        portal.status = Status.NEW
        portal.application_token = ""
        portal.bound_at = None
    if application_token:
        portal.application_token = application_token
    portal.save()
    if created:
        record(portal, Kind.INSTALLED, domain=portal.domain, user_id=portal.installed_by)
    else:
        record(portal, Kind.REINSTALLED, domain=portal.domain, user_id=portal.installed_by, previous_status=previous)
    if application_token:
        record(portal, Kind.APPLICATION_TOKEN_SAVED, via="administrator_install")
    return portal, created


def count_rejection(member_id: str, *, source: str, reason: str) -> None:
    """Count a refused request from an unverified sender: one row per portal, source, reason and hour.

    Unknown portals are only logged (a stranger may name any member_id). Never raises: a refusal is
    answered whether or not the count could be written.
    """
    log.info("request refused", extra={"member_id": member_id, "source": source, "reason": reason})
    portal_id = Portal.objects.filter(member_id=member_id).values_list("pk", flat=True).first()
    if portal_id is None:
        return
    from django.db import DatabaseError, IntegrityError
    from django.db.models import F

    now = timezone.now()
    window = now.replace(minute=0, second=0, microsecond=0)
    reason = reason[:128]
    try:
        with transaction.atomic():
            updated = Rejection.objects.filter(
                portal_id=portal_id, source=source, reason=reason, window_start=window
            ).update(count=F("count") + 1, last_at=now)
            if not updated:
                try:
                    with transaction.atomic():
                        Rejection.objects.create(
                            portal_id=portal_id, source=source, reason=reason, window_start=window, count=1, last_at=now
                        )
                except IntegrityError:  # created by a concurrent refusal meanwhile
                    Rejection.objects.filter(
                        portal_id=portal_id, source=source, reason=reason, window_start=window
                    ).update(count=F("count") + 1, last_at=now)
    except DatabaseError:
        log.warning("could not count a refusal", extra={"member_id": member_id, "source": source})


@transaction.atomic
def recover(portal: Portal, grant: TokenGrant, *, via: str, application_token: str = "") -> Portal:
    """A blocked portal (lost or refused refresh token) takes an administrator's verified grant; serving again."""
    portal = Portal.objects.select_for_update().get(pk=portal.pk)
    if portal.status == Status.UNINSTALLED:
        raise TransitionError("portal is uninstalled")
    previous = portal.status
    fields = _grant_fields(portal, grant, timezone.now())
    if application_token and application_token != portal.application_token:
        portal.application_token = application_token
        fields.append("application_token")
    if previous == Status.BLOCKED:
        portal.status = Status.ACTIVE if portal.application_token and portal.bound_at else Status.NEW
        fields.append("status")
    portal.last_error = ""
    portal.refresh_lease_owner, portal.refresh_lease_until = "", None
    portal.save(update_fields=sorted(set(fields + ["last_error", "refresh_lease_owner", "refresh_lease_until"])))
    record(portal, Kind.RECOVERED, via=via, previous_status=previous, user_id=grant.user_id)
    return portal


def record_bindings(
    portal: Portal, *, placements: list[str], events: list[str], offline: list[str] | tuple[str, ...] = ()
) -> None:
    """Placements and events are bound: the install is complete once the application_token is known too.
    `offline`: the events bound offline too (inbox/offline.py), recorded with them."""
    with transaction.atomic():
        now = timezone.now()
        Portal.objects.filter(pk=portal.pk).update(bound_at=now, last_error="")
        portal.bound_at, portal.last_error = now, ""
        if placements:
            record(portal, Kind.PLACEMENT_BOUND, placements=placements)
        if events:
            record(portal, Kind.EVENTS_BOUND, events=events, **({"offline": list(offline)} if offline else {}))


def set_offline_events(portal: Portal, state: str, *, reason: str = "") -> None:
    """Whether the portal's offline events are bound (Portal.OfflineEvents). Bad news (not on the plan, refused)
    is recorded in the history each time it is new; so is any change from a known state. Never blocks serving."""
    with transaction.atomic():
        current = Portal.objects.select_for_update().filter(pk=portal.pk).first()
        if current is None:
            return
        before = current.offline_events
        if before != state:
            Portal.objects.filter(pk=portal.pk).update(offline_events=state)
            bad = state in (Portal.OfflineEvents.UNAVAILABLE, Portal.OfflineEvents.FAILED)
            if bad or before:
                record(
                    current, Kind.OFFLINE_EVENTS, state=state or "unknown", previous=before or "unknown", reason=reason
                )
        portal.offline_events = state


def record_binding_failure(portal: Portal, code: str, description: str) -> None:
    with transaction.atomic():
        Portal.objects.filter(pk=portal.pk).update(last_error=f"binding: {code} {description}".strip()[:1000])
        record(portal, Kind.INSTALL_FAILED, reason=code, description=description[:255], step="bind")


@transaction.atomic
def accept_application_token(portal: Portal, application_token: str, *, via: str, version: str = "") -> Portal:
    """Save the application_token from a verified ONAPPINSTALL; the install is now complete."""
    portal = Portal.objects.select_for_update().get(pk=portal.pk)
    if portal.status == Status.UNINSTALLED:
        raise TransitionError("portal is uninstalled")
    portal.application_token = application_token
    fields = ["application_token"]
    if version:
        portal.app_version = version
        fields.append("app_version")
    portal.save(update_fields=fields)
    record(portal, Kind.APPLICATION_TOKEN_SAVED, via=via)
    _activate(portal, via="ONAPPINSTALL")
    return portal


@transaction.atomic
def adopt_application_token(portal: Portal, application_token: str, *, via: str) -> Portal:
    """Take the application_token an administrator's verified request presented (the caller checked)."""
    current = Portal.objects.select_for_update().get(pk=portal.pk)
    if current.status == Status.UNINSTALLED:
        raise TransitionError("portal is uninstalled")
    current.application_token = application_token
    current.save(update_fields=["application_token"])
    record(current, Kind.APPLICATION_TOKEN_SAVED, via=via)
    portal.__dict__["application_token"] = application_token
    return portal


def _activate(portal: Portal, *, via: str) -> bool:
    # Never "active" with nothing bound: the square and the events would be missing.
    if portal.status != Status.NEW or not portal.bound_at:
        return False
    portal.status = Status.ACTIVE
    portal.save(update_fields=["status"])
    record(portal, Kind.ACTIVATED, via=via)
    return True


@transaction.atomic
def activate(portal: Portal, *, via: str) -> Portal:
    """new -> active, once the install is known to be complete (e.g. the first verified widget open)."""
    portal = Portal.objects.select_for_update().get(pk=portal.pk)
    _activate(portal, via=via)
    return portal


def apply_grant(portal: Portal, grant: TokenGrant, *, reason: str) -> None:
    """Store refreshed tokens (called by tokens.refresh_portal inside its row lock).

    An uninstall that landed while the refresh was on its way wins: its wiped secrets stay wiped."""
    if portal.status == Status.UNINSTALLED:
        log.info("refreshed tokens of an uninstalled portal dropped", extra={"member_id": portal.member_id})
        return
    now = timezone.now()
    fields = _grant_fields(portal, grant, now)
    unblocked = portal.status == Status.BLOCKED
    if unblocked:
        portal.status = Status.ACTIVE if portal.application_token and portal.bound_at else Status.NEW
        fields.append("status")
    portal.last_error = ""
    portal.save(update_fields=sorted(set(fields + ["last_error"])))
    record(portal, Kind.TOKEN_REFRESHED, reason=reason, expires_in=grant.expires_in)
    if unblocked:
        record(portal, Kind.UNBLOCKED, via=reason)


def block(portal: Portal, *, reason: str, description: str = "") -> None:
    """Stop serving a portal the OAuth server refused (invalid_grant, PAYMENT_REQUIRED, ...)."""
    if portal.status == Status.UNINSTALLED:
        return
    portal.status = Status.BLOCKED
    portal.last_error = f"{reason}: {description}".strip(": ")[:1000]
    portal.save(update_fields=["status", "last_error"])
    record(portal, Kind.REFRESH_FAILED, reason=reason, description=description[:255])
    record(portal, Kind.BLOCKED, reason=reason)


def record_refresh_failure(portal: Portal, exc: OAuthError) -> None:
    Portal.objects.filter(pk=portal.pk).update(last_error=f"refresh: {exc.code} {exc.description}".strip()[:1000])
    record(portal, Kind.REFRESH_FAILED, reason=exc.code, description=exc.description[:255])


@transaction.atomic
def uninstall(portal: Portal, *, clean: bool) -> Portal:
    """Stop serving the portal and wipe its secrets; keep the row and its history."""
    portal = Portal.objects.select_for_update().get(pk=portal.pk)
    if portal.status == Status.UNINSTALLED:
        raise TransitionError("portal is already uninstalled")
    previous = portal.status
    portal.status = Status.UNINSTALLED
    portal.uninstalled_at = timezone.now()
    portal.access_token = portal.refresh_token = portal.application_token = ""
    portal.access_expires_at = None
    portal.save()
    record(portal, Kind.UNINSTALLED, previous_status=previous, clean=clean)
    if clean:
        portal_data_cleaned.send(sender=Portal, portal=portal)
        record(portal, Kind.DATA_CLEANED)
    return portal


@transaction.atomic
def record_update(portal: Portal, *, version: str, previous_version: str = "") -> Portal:
    portal = Portal.objects.select_for_update().get(pk=portal.pk)
    if portal.status == Status.UNINSTALLED:
        raise TransitionError("portal is uninstalled")
    old = portal.app_version
    portal.app_version = version
    portal.save(update_fields=["app_version"])
    record(portal, Kind.UPDATED, old=old or previous_version, new=version)
    return portal


def touch(portal: Portal) -> None:
    """Note that the portal was seen; writes at most once per LAST_SEEN_RESOLUTION."""
    now = timezone.now()
    if portal.last_seen_at and now - portal.last_seen_at < LAST_SEEN_RESOLUTION:
        return
    Portal.objects.filter(pk=portal.pk).update(last_seen_at=now)
    portal.last_seen_at = now


def set_app_info(
    portal: Portal, *, app_status: str, payment_expired: bool | None, license: str = "", version: str = ""
) -> None:
    """Store what app.info said about the app's licence on the portal; each change is recorded once.

    `version` (the portal's app.info VERSION) is taken only when none is known yet: a change of version
    is an update, recorded by record_update.

    The row is re-read under its lock, so two callers with the same news record it once.
    """
    with transaction.atomic():
        current = Portal.objects.select_for_update().get(pk=portal.pk)
        fields = []
        if version and not current.app_version:
            current.app_version = version[:32]
            fields.append("app_version")
        if app_status and app_status != current.app_status:
            record(current, Kind.APP_STATUS_CHANGED, old=current.app_status, new=app_status)
            current.app_status = app_status
            fields.append("app_status")
        # First learning a value is not a change; a later difference is.
        if payment_expired is not None and payment_expired != current.payment_expired:
            if current.payment_expired is not None:
                record(current, Kind.APP_STATUS_CHANGED, payment_expired=payment_expired)
            current.payment_expired = payment_expired
            fields.append("payment_expired")
        if license and license[:64] != current.license:
            if current.license:
                record(current, Kind.APP_STATUS_CHANGED, old_license=current.license, license=license[:64])
            current.license = license[:64]
            fields.append("license")
            plan = limits.plan_of(license)
            if plan != current.rest_plan:
                current.rest_plan = plan
                fields.append("rest_plan")
        if fields:
            current.save(update_fields=fields)
        for name in fields:
            setattr(portal, name, getattr(current, name))
