"""The app's tokens of a stored portal: the single-flight, never-abandoned refresh, and the REST client that
uses it.

Refresh tokens rotate: a successful refresh spends the old one, so its answer must be stored whatever
happens. `refresh_portal` therefore
- takes a *lease* on the portal row in a short transaction (no database lock is held while the OAuth
  server thinks), so one caller refreshes and the others wait briefly or answer at once;
- asks the OAuth server through `bitrix24.oauth.request_refresh` (its own deadline; it stores nothing);
- commits the new tokens first, in their own short transaction, retrying the write for a while, before
  anything else happens.
A lease outlives the OAuth deadline, so a crashed holder's lease simply expires.

`PortalClient(portal)` is `bitrix24.client.Client` with this refresh as its credentials' refresh step.
"""

import logging
import time
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, close_old_connections, transaction
from django.db.models import Q
from django.utils import timezone
from prometheus_client import Counter

from bitrix24 import errors, oauth
from bitrix24.client import Client
from bitrix24.metrics import label

from . import lifecycle
from .models import Portal

log = logging.getLogger(__name__)

REFRESH_FAILURES = Counter("b24widget_token_refresh_failures", "Failed token refreshes, by OAuth error code.", ["code"])


def refresh_failed(code: str) -> None:
    REFRESH_FAILURES.labels(label(code)).inc()


# mypy checks the bound (Credentials) against Portal's class attributes, which django-stubs types as field
# descriptors, not the str they read as; a Portal does pass as Credentials wherever one is used as such.
class PortalClient(Client[Portal]):  # type: ignore[type-var]
    """REST access to one stored portal: the app's tokens are refreshed through `refresh_portal`."""

    def __init__(
        self, portal: Portal, *, access_token: str | None = None, oauth_server: bool = False, interactive: bool = False
    ) -> None:
        # A row never stored (a grant's probe) has no tokens of ours to refresh.
        super().__init__(
            portal,
            refresh=_refresh if portal.pk is not None else None,
            access_token=access_token,
            oauth_server=oauth_server,
            interactive=interactive,
        )

    @property
    def portal(self) -> Portal:
        """The portal row, as last refreshed (the client may have followed a move)."""
        return self.credentials


def _refresh(portal: Portal, *, seen_access_token: str | None, force: bool, wait: float | None) -> Portal:
    return refresh_portal(portal, seen_access_token=seen_access_token, force=force, wait=wait)


def refresh_portal(
    portal: Portal,
    *,
    seen_access_token: str | None = None,
    force: bool = False,
    allow_blocked: bool = False,
    wait: float | None = None,
    still_due: Q | None = None,
) -> Portal:
    """Refresh the portal's tokens once, however many callers ask at the same time.

    `seen_access_token` is the token the caller found expired: if the stored one differs, another
    caller refreshed meanwhile and the fresh row is returned. `force` refreshes a still-valid token
    (keep-alive, a portal that may have moved) unless someone refreshed it since this call began.
    `still_due` (a Q) is re-checked under the lock: when the row no longer matches, nothing is done.
    While another caller holds the lease this one waits up to `wait` seconds (default
    B24_REFRESH_WAIT) for its result, then raises RefreshInProgress. Blocking OAuth errors mark the
    portal `blocked`; an unreachable OAuth server only records the failure. Both raise.
    """
    began = timezone.now()
    wait_until = time.monotonic() + (settings.B24_REFRESH_WAIT if wait is None else wait)
    while True:
        claim = _claim(
            portal.pk,
            seen_access_token=seen_access_token,
            force=force,
            allow_blocked=allow_blocked,
            began=began,
            still_due=still_due,
        )
        if isinstance(claim, Portal):
            return claim
        if claim is not None:
            break
        if time.monotonic() >= wait_until:
            raise errors.RefreshInProgress()
        time.sleep(0.05)
    current, owner = claim
    try:
        grant = oauth.request_refresh(current.refresh_token)
        if grant.member_id != current.member_id:
            raise errors.OAuthRejected("wrong_member", "OAuth server answered for another portal")
    except errors.ClientMisconfigured:
        refresh_failed("client_misconfigured")
        _release(current, owner)
        log.error(
            "OAuth server refused our client credentials; no portal is blocked", extra={"member_id": current.member_id}
        )
        raise
    except errors.OAuthRejected as exc:
        refresh_failed(exc.code)
        with transaction.atomic():
            row = _locked(current.pk, owner)
            if exc.code in oauth.BLOCKING_ERRORS:
                lifecycle.block(row, reason=exc.code, description=exc.description)
            else:
                lifecycle.record_refresh_failure(row, exc)
        raise
    except errors.OAuthUnavailable as exc:
        refresh_failed(exc.code)
        with transaction.atomic():
            lifecycle.record_refresh_failure(_locked(current.pk, owner), exc)
        raise
    except BaseException:
        _release(current, owner)
        raise
    return _store(current.pk, owner, grant)


def _claim(
    pk: int,
    *,
    seen_access_token: str | None,
    force: bool,
    allow_blocked: bool,
    began: datetime,
    still_due: Q | None,
) -> Portal | tuple[Portal, str] | None:
    """In one short transaction: the fresh row (nothing to do), None (leased by another), or (row, lease)."""
    now = timezone.now()
    with transaction.atomic():
        rows = Portal.objects.select_for_update().filter(pk=pk)
        current = rows.first()
        if current is None:
            raise errors.PortalNotServing("portal_not_serving", "portal is gone")
        serving = current.is_serving or (allow_blocked and current.status == Portal.Status.BLOCKED)
        if not serving or not current.refresh_token:
            raise errors.PortalNotServing("portal_not_serving", f"portal is {current.status}")
        if still_due is not None and not rows.filter(still_due).exists():
            return current
        if current.access_token and not current.access_token_expired():
            if seen_access_token is not None and current.access_token != seen_access_token:
                return current  # refreshed by someone else meanwhile
            if seen_access_token is None and not force:
                return current
            if force and current.refresh_renewed_at and current.refresh_renewed_at >= began:
                return current  # a forced refresh that someone else did since we asked
        if current.refresh_lease_until and current.refresh_lease_until > now:
            return None
        owner = uuid.uuid4().hex
        current.refresh_lease_owner = owner
        current.refresh_lease_until = now + timedelta(seconds=oauth.lease_seconds())
        current.save(update_fields=["refresh_lease_owner", "refresh_lease_until"])
    return current, owner


def _locked(pk: int, owner: str) -> Portal:
    """The row under its lock, with our lease (if still ours) dropped."""
    row = Portal.objects.select_for_update().get(pk=pk)
    if row.refresh_lease_owner == owner:
        row.refresh_lease_owner = ""
        row.refresh_lease_until = None
        row.save(update_fields=["refresh_lease_owner", "refresh_lease_until"])
    return row


def _release(current: Portal, owner: str) -> None:
    try:
        Portal.objects.filter(pk=current.pk, refresh_lease_owner=owner).update(
            refresh_lease_owner="", refresh_lease_until=None
        )
    except DatabaseError:
        log.warning("could not release a refresh lease (it expires by itself)", extra={"member_id": current.member_id})


def _store(pk: int, owner: str, grant: oauth.TokenGrant) -> Portal:
    """Commit the rotated tokens before anything else, retrying the write: the old token is spent."""
    delay = 0.2
    for attempt in range(settings.B24_TOKEN_STORE_ATTEMPTS):
        try:
            with transaction.atomic():
                row = _locked(pk, owner)
                lifecycle.apply_grant(row, grant, reason="refresh")
            row.refreshed_now = True  # this call refreshed (others return the row someone else refreshed)
            return row
        except DatabaseError:
            if transaction.get_connection().in_atomic_block or attempt + 1 == settings.B24_TOKEN_STORE_ATTEMPTS:
                log.critical(
                    "a rotated token could not be stored; the portal heals at the next administrator open",
                    extra={"member_id": grant.member_id},
                )
                raise
            log.warning(
                "storing a rotated token failed; retrying", extra={"member_id": grant.member_id, "attempt": attempt + 1}
            )
            close_old_connections()
            time.sleep(delay)
            delay = min(delay * 2, 5)
    raise AssertionError("unreachable")
