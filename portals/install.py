"""The UI install: an administrator's grant, stored; then placements and events bound.

Anyone can POST to the install URL, and every user of a portal holds a genuine REFRESH_ID of our
app, so the install is believed only through `grants.administrator_grant` (OAuth server + the
portal's `user.admin` with the grant's own token). The POST's `APPLICATION_TOKEN`
(settings/oauth/simple-way.md) is stored with it: the app does not depend on one ONAPPINSTALL
delivery, which Bitrix24 never resends.
"""

import logging

from django.conf import settings
from django.db import DatabaseError, transaction
from django.urls import reverse

from bitrix24 import wire
from bitrix24.client import BatchResult
from bitrix24.errors import LimitWaitExceeded, Refusal, RestError, TransportError
from bitrix24.frames import FramePost

from . import install_steps, lifecycle
from .grants import GrantRefused, administrator_grant
from .models import Portal
from .tokens import PortalClient

log = logging.getLogger(__name__)

# Events the app handles at <B24_APP_URL>/events/.
APP_EVENTS = ("ONAPPINSTALL", "ONAPPUNINSTALL", "ONAPPUPDATE")
# api-reference/events/on-offline-event.md: "there are new records in the offline queue", bound online.
ONOFFLINEEVENT = "ONOFFLINEEVENT"
# api-reference/common/system/feature-get.md: whether the portal's plan has offline events.
OFFLINE_FEATURE = "rest_offline_extended"


class InstallRefused(Refusal):
    """The install was not made by a verified administrator; nothing changed. `reason` is a stable code."""


class InstallUnavailable(Exception):
    """Bitrix24 (or our database) could not be reached, or refused, to complete the install. `scopes` and
    `placement` name what is missing when Bitrix24 refused for a scope (install_steps.MissingScope)."""

    def __init__(self, code: str, *, scopes: list[str] | None = None, placement: str = ""):
        self.code = code
        self.scopes = list(scopes or [])
        self.placement = placement
        super().__init__(code)


def app_url(view_name: str, **kwargs) -> str:
    """The absolute address of one of our views (B24_APP_URL + its reversed path): what we hand Bitrix24."""
    return settings.B24_APP_URL + reverse(view_name, kwargs=kwargs or None)


def events_url() -> str:
    """Where Bitrix24 sends every event we bind."""
    return app_url("events")


def install(post: FramePost) -> Portal:
    """Store an administrator's install and bind; raises InstallRefused or InstallUnavailable."""
    try:
        # The database is proven writable only once the sender's budget allowed the attempt: a flood
        # of forged installs opens no write transaction.
        grant = administrator_grant(post.member_id, post.refresh_id, before_spending=ensure_writable)
    except GrantRefused as exc:
        if exc.status == 403:
            lifecycle.count_rejection(post.member_id, source="install", reason=exc.reason)
        raise InstallRefused(exc.reason, exc.status, exc.retry_after) from None
    portal, _created = lifecycle.install(
        grant,
        language=post.lang,
        user_id=grant.user_id,
        application_token=post.application_token,
    )
    bind(portal)
    return portal


def ensure_writable() -> None:
    """Fail before a refresh token is spent when the database cannot store what it buys.

    A no-op UPDATE in a write transaction: refused by a read-only or unreachable database.
    """
    try:
        with transaction.atomic():
            Portal.objects.filter(pk=-1).update(last_error="")
    except DatabaseError as exc:  # (its class only: a driver's message can quote the statement's values)
        log.error(
            "database not writable; install refused before spending the refresh token",
            extra={"error": type(exc).__name__},
        )
        raise InstallUnavailable("database_unavailable") from None


def bind(portal: Portal) -> None:
    """Run every install step in order (placements, the app's events and app.info, the apps' own), then bind
    every event they bound offline too, and record what was bound. Each step unbinds before it binds, so this
    is idempotent."""
    client = PortalClient(portal)
    placements: list[str] = []
    events: list[str] = []
    for name, step in install_steps.steps():
        try:
            done = install_steps.bound(step(portal, client))
        except RestError as exc:
            lifecycle.record_binding_failure(portal, exc.code, f"{name}: {exc.description}")
            if isinstance(exc, install_steps.MissingScope):
                raise InstallUnavailable(exc.code, scopes=exc.scopes, placement=exc.placement) from None
            raise InstallUnavailable(exc.code) from None
        except Exception as exc:  # e.g. the cache or database failing mid-way: recorded, never "complete"
            lifecycle.record_binding_failure(portal, type(exc).__name__, f"{name}: binding interrupted")
            raise InstallUnavailable(type(exc).__name__) from None
        placements += done.placements
        events += done.events
    offline = bind_offline(portal, client, events)
    lifecycle.record_bindings(portal, placements=placements, events=events, offline=offline)


def bind_offline(portal: Portal, client: PortalClient, events: list[str]) -> list[str]:
    """Bind `events` offline as well (api-reference/events/offline-events.md), and ONOFFLINEEVENT online with
    B24_OFFLINE_MIN_TIMEOUT; returns the events bound offline. Bitrix24 keeps what it could not deliver in the
    portal's queue, which inbox/offline.py pulls.

    Skipped when the plan lacks the feature (bind_app_events asked feature.get in its batch). A refusal
    (offline binding is for administrators only, event-bind.md) is recorded on the portal, never fails the
    install: the online bindings work as before. One batch request, whatever the number of events."""
    if not events:
        return []
    if Portal.objects.filter(pk=portal.pk, offline_events=Portal.OfflineEvents.UNAVAILABLE).exists():
        return []
    commands = wire.rebind_commands(events, "", event_type="offline")
    commands.update(
        wire.rebind_commands([ONOFFLINEEVENT], events_url(), options={"minTimeout": settings.B24_OFFLINE_MIN_TIMEOUT})
    )
    try:
        run_bindings(client, commands)
    except (TransportError, LimitWaitExceeded) as exc:  # not an answer: the bind is not complete, as in a step
        lifecycle.record_binding_failure(portal, exc.code, f"offline events: {exc.description}")
        raise InstallUnavailable(exc.code) from None
    except RestError as exc:
        log.warning("offline events not bound", extra={"member_id": portal.member_id, "code": exc.code})
        lifecycle.set_offline_events(portal, Portal.OfflineEvents.FAILED, reason=f"{exc.code}: {exc.description}"[:255])
        return []
    lifecycle.set_offline_events(portal, Portal.OfflineEvents.BOUND)
    return list(events)


# Commands that only ask (riding along in a binding batch): their refusal fails no binding.
_ASKED = frozenset({"app_info", "offline_feature"})


def run_bindings(client: PortalClient, commands: dict) -> BatchResult:
    """Run bind commands in one batch; raise RestError for the first that Bitrix24 refused (an unbind's
    refusal and "already bound" are not failures)."""
    result = client.batch(commands)
    for key, error in result.errors.items():
        if key.startswith("unbind_") or key in _ASKED or wire.already_bound(error.code, error.description):
            continue
        raise RestError(error.code, f"{key}: {error.description}", method=error.method)
    return result


def bind_app_events(portal: Portal, client: PortalClient) -> install_steps.Bound:
    """Install step (order 20): the app's own events, with the portal's app.info riding along (no request
    of its own): its LICENSE names the plan, and with it the request-rate bucket the client paces this
    portal by (bitrix24.limits.plan_of). feature.get rides along too: whether the plan has offline events
    (bind_offline binds them after the last step unless it has not)."""
    commands = {
        "app_info": ("app.info", {}),
        "offline_feature": ("feature.get", {"CODE": OFFLINE_FEATURE}),
        **wire.rebind_commands(APP_EVENTS, events_url()),
    }
    result = run_bindings(client, commands)
    feature = result.result.get("offline_feature")
    if isinstance(feature, dict) and feature.get("value") in ("Y", "N"):
        # feature-get.md: {"value": "Y"|"N"}. An error (an older portal without the method) leaves it to the
        # binding's own answer.
        if feature["value"] == "N":
            lifecycle.set_offline_events(
                portal, Portal.OfflineEvents.UNAVAILABLE, reason=f"feature.get {OFFLINE_FEATURE} = N"
            )
        elif Portal.objects.filter(pk=portal.pk, offline_events=Portal.OfflineEvents.UNAVAILABLE).exists():
            lifecycle.set_offline_events(
                portal, Portal.OfflineEvents.UNKNOWN, reason=f"feature.get {OFFLINE_FEATURE} = Y"
            )
    app = result.result.get("app_info")
    if isinstance(app, dict):
        raw_license = app.get("LICENSE")
        license = raw_license if isinstance(raw_license, str) else ""
        lifecycle.set_app_info(
            portal,
            app_status="",
            payment_expired=None,
            license=license,
            version=wire.digits_or_empty(str(app.get("VERSION") or "")),
        )
    return install_steps.Bound(events=list(APP_EVENTS))
