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

from bitrix24.errors import Refusal
from . import install_steps, lifecycle
from bitrix24.frames import FramePost
from .grants import GrantRefused, administrator_grant
from .models import Portal
from .tokens import PortalClient
from bitrix24.errors import RestError

log = logging.getLogger(__name__)

# Events the app handles at <B24_APP_URL>/events/.
APP_EVENTS = ("ONAPPINSTALL", "ONAPPUNINSTALL", "ONAPPUPDATE")


class InstallRefused(Refusal):
    """The install was not made by a verified administrator; nothing changed. `reason` is a stable code."""


class InstallUnavailable(Exception):
    """Bitrix24 (or our database) could not be reached to complete the install."""

    def __init__(self, code: str):
        self.code = code
        super().__init__(code)


def events_url() -> str:
    return f"{settings.B24_APP_URL}/events/"


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
        grant, language=post.lang, user_id=grant.user_id, application_token=post.application_token,
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
    except DatabaseError:
        log.error("database not writable; install refused before spending the refresh token")
        raise InstallUnavailable("database_unavailable") from None


def bind(portal: Portal) -> None:
    """(Re)bind the registry's placements, then the app's events, then run the apps' install steps
    (`install_steps`): unbind first, so it is idempotent.

    Events are bound only once the placements are: `event.bind` is open to any user, `placement.bind`
    only to administrators, and an install that cannot show its square must not look complete.
    """
    from placements.registry import bindings  # the one seam from portals into placements

    handlers = bindings()
    placements = {}
    for i, binding in enumerate(handlers):
        target = {"PLACEMENT": binding["PLACEMENT"], "HANDLER": binding["HANDLER"]}
        placements[f"unbind_placement_{i}"] = ("placement.unbind", target)
        placements[f"bind_placement_{i}"] = ("placement.bind", binding)
    events = {}
    for event in APP_EVENTS:
        events[f"unbind_{event}"] = ("event.unbind", {"event": event, "handler": events_url()})
        events[f"bind_{event}"] = ("event.bind", {"event": event, "handler": events_url()})
    # The portal's app.info rides along (no request of its own): its LICENSE names the plan, and with it
    # the request-rate bucket the client paces this portal by (portals.limits.plan_of).
    placements["app_info"] = ("app.info", {})
    client = PortalClient(portal)
    for commands in (placements, events):
        if commands:
            result = _run_bindings(client, portal, commands)
            app = result.result.get("app_info")
            if isinstance(app, dict):
                license = app.get("LICENSE") if isinstance(app.get("LICENSE"), str) else ""
                version = str(app.get("VERSION") or "")
                lifecycle.set_app_info(portal, app_status="", payment_expired=None, license=license,
                                       version=version if version.isascii() and version.isdigit() else "")
    bound_events = list(APP_EVENTS)
    for name, step in install_steps.steps():  # e.g. openlines registers its connectors
        try:
            bound_events += step(portal, client) or []
        except RestError as exc:
            lifecycle.record_binding_failure(portal, exc.code, f"{name}: {exc.description}")
            raise InstallUnavailable(exc.code) from None
    lifecycle.record_bindings(
        portal, placements=[b["PLACEMENT"] for b in handlers], events=bound_events
    )


def _run_bindings(client: PortalClient, portal: Portal, commands: dict):
    try:
        result = client.batch(commands)
    except RestError as exc:
        lifecycle.record_binding_failure(portal, exc.code, exc.description)
        raise InstallUnavailable(exc.code) from None
    except Exception as exc:  # e.g. the cache or database failing mid-way: recorded, never "complete"
        lifecycle.record_binding_failure(portal, type(exc).__name__, "binding interrupted")
        raise InstallUnavailable(type(exc).__name__) from None
    for key, error in result.errors.items():
        if key.startswith("unbind_") or key == "app_info" or _already_bound(error):
            continue
        lifecycle.record_binding_failure(portal, error.code, f"{key}: {error.description}")
        raise InstallUnavailable(error.code)
    return result


def _already_bound(error: RestError) -> bool:
    # A repeated bind is refused, not ignored; these exact answers mean "already there".
    if error.code == "ERROR_PLACEMENT_HANDLER_ALREADY_BINDED":
        return True
    return error.code == "ERROR_CORE" and "already binded" in error.description.lower()
