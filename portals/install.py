"""The UI install: confirm it with the OAuth server, store the portal, bind placements and events."""
import logging

from django.conf import settings

from . import lifecycle, oauth
from .frame_post import FramePost
from .models import Portal
from .rest import PortalClient, RestError

log = logging.getLogger(__name__)

# Events the app handles at <B24_APP_URL>/events/.
APP_EVENTS = ("ONAPPINSTALL", "ONAPPUNINSTALL", "ONAPPUPDATE")


class InstallNotConfirmed(Exception):
    """The OAuth server did not confirm the install (forged or spent token, another portal)."""

    def __init__(self, code: str):
        self.code = code
        super().__init__(code)


class InstallUnavailable(Exception):
    """Bitrix24 could not be reached to confirm or complete the install."""

    def __init__(self, code: str):
        self.code = code
        super().__init__(code)


def events_url() -> str:
    return f"{settings.B24_APP_URL}/events/"


def install(post: FramePost) -> Portal:
    """Believe an install POST only once the OAuth server confirms it; then store and bind.

    The tokens and address stored are the OAuth server's, never the POST's.
    """
    try:
        grant = oauth.request_refresh(post.refresh_id)
    except oauth.OAuthRejected as exc:
        lifecycle.record_install_failure(post.member_id, exc.code, exc.description)
        raise InstallNotConfirmed(exc.code) from None
    except oauth.OAuthUnavailable as exc:
        lifecycle.record_install_failure(post.member_id, exc.code, exc.description)
        raise InstallUnavailable(exc.code) from None
    if grant.member_id != post.member_id:
        lifecycle.record_install_failure(post.member_id, "wrong_member", "OAuth server confirmed another portal")
        raise InstallNotConfirmed("wrong_member")

    portal, _created = lifecycle.install(grant, language=post.lang, user_id=grant.user_id)
    bind(portal)
    return portal


def bind(portal: Portal) -> None:
    """(Re)bind the registry's placements, then the app's events: unbind first, so it is idempotent.

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
    client = PortalClient(portal)
    for commands in (placements, events):
        if commands:
            _run_bindings(client, portal, commands)
    lifecycle.record_bindings(
        portal, placements=[b["PLACEMENT"] for b in handlers], events=list(APP_EVENTS)
    )


def _run_bindings(client: PortalClient, portal: Portal, commands: dict) -> None:
    try:
        result = client.batch(commands)
    except RestError as exc:
        lifecycle.record_binding_failure(portal, exc.code, exc.description)
        raise InstallUnavailable(exc.code) from None
    for key, error in result.errors.items():
        if key.startswith("unbind_") or _already_bound(error):
            continue
        lifecycle.record_binding_failure(portal, error.code, f"{key}: {error.description}")
        raise InstallUnavailable(error.code)


def _already_bound(error: RestError) -> bool:
    # A repeated bind is refused, not ignored; these exact answers mean "already there".
    if error.code == "ERROR_PLACEMENT_HANDLER_ALREADY_BINDED":
        return True
    return error.code == "ERROR_CORE" and "already binded" in error.description.lower()
