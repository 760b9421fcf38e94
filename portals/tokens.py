"""The app's tokens of a stored portal: the single-flight, never-abandoned refresh, and the REST client that
uses it.

Refresh tokens rotate: a successful refresh spends the old one, so its answer must be stored whatever
happens. `refresh_portal` therefore
- takes a *lease* on the portal row in a short transaction (no database lock is held while the OAuth
  server thinks), so one caller refreshes and the others wait briefly or answer at once;
- asks the OAuth server through `bitrix24.oauth.request_refresh` (its own deadline; it stores nothing);
- *holds* the answer before anything else (write-ahead): encrypted in the spool folder (and the cache,
  `vault.spool`), where it survives the worker and the database;
- commits the new tokens in their own short transaction, retrying the write for B24_TOKEN_STORE_WAIT, and
  lets the held copy go once they are stored.
A lease outlives the OAuth deadline, so a crashed holder's lease simply expires. Whoever takes the next
lease looks for a held grant first and stores it instead of asking the OAuth server again (the old refresh
token is spent: asking with it would be refused, and that refusal would block the portal). Beat stores held
grants too (`store_held`), as soon as the database is back, for as long as the refresh token lives. So a
portal is blocked only by the OAuth server's answer, never because our database was away.

`PortalClient(portal)` is `bitrix24.client.Client` with this refresh as its credentials' refresh step.
"""

import dataclasses
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, close_old_connections, transaction
from django.db.models import Q
from django.utils import timezone
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily

from bitrix24 import errors, oauth
from bitrix24.client import Client
from bitrix24.metrics import label
from vault.spool import Spool

from . import lifecycle
from .models import Portal

log = logging.getLogger(__name__)

REFRESH_FAILURES = Counter("b24widget_token_refresh_failures", "Failed token refreshes, by OAuth error code.", ["code"])


def refresh_failed(code: str) -> None:
    REFRESH_FAILURES.labels(label(code)).inc()


# Rotated grants not yet stored, one per portal (member_id): registered with vault (rotation) by PortalsConfig.
HELD = Spool(
    "tokens",
    folder=lambda: Path(settings.B24_TOKEN_SPOOL_DIR),
    cache_seconds=180 * 86400,
)


def _hold(grant: oauth.TokenGrant, pk: int) -> None:
    """Write the grant ahead of storing it: whatever happens next, it is not lost with this process."""
    HELD.put(grant.member_id, {"grant": dataclasses.asdict(grant), "held_at": time.time(), "portal": pk})


def held(member_id: str) -> tuple[oauth.TokenGrant, datetime] | None:
    """The grant held for this portal and when it was held, or None."""
    document = HELD.get(member_id)
    if document is None:
        return None
    try:
        grant = oauth.TokenGrant(**document["grant"])
        held_at = datetime.fromtimestamp(float(document["held_at"]), tz=UTC)
    except (KeyError, TypeError, ValueError):
        log.error("a held grant is malformed; dropped", extra={"member_id": member_id})
        HELD.remove(member_id)
        return None
    return grant, held_at


def _let_go(grant: oauth.TokenGrant) -> None:
    """Drop the held copy once `grant` is stored (not a newer grant held meanwhile)."""
    current = held(grant.member_id)
    if current is not None and current[0].refresh_token == grant.refresh_token:
        HELD.remove(grant.member_id)


def _apply_held(row: Portal, grant: oauth.TokenGrant, held_at: datetime, *, reason: str) -> bool:
    """Store a held grant into the locked row unless it is already there or superseded; True if stored."""
    if row.refresh_token == grant.refresh_token:
        return False
    if row.refresh_renewed_at is not None and row.refresh_renewed_at > held_at:
        return False  # a newer grant (a later refresh, an administrator's install or open) was stored since
    lifecycle.apply_grant(row, grant, reason=reason)
    if reason == "held":  # its access token was issued when it was held, not now
        row.access_expires_at = held_at + timedelta(seconds=grant.expires_in)
        Portal.objects.filter(pk=row.pk).update(access_expires_at=row.access_expires_at)
    return True


def _take_over(member_id: str, grant: oauth.TokenGrant, held_at: datetime) -> tuple[Portal | None, bool]:
    """Store a held grant without a lease of our own, and end the lease of the refresh that held it.

    A held grant is written by a lease holder once its OAuth answer is in, inside its lease (the lease
    outlasts the OAuth deadline), and every later holder looks for it before asking the OAuth server: so
    while it is held, nobody is asking the OAuth server for this portal, and the lease (which the database
    outage may have left behind) guards nothing. Returns (row or None, whether the grant was applied)."""
    with transaction.atomic():
        row = Portal.objects.select_for_update().filter(member_id=member_id).first()
        if row is None:
            return None, False
        applied = _apply_held(row, grant, held_at, reason="held")
        if row.refresh_lease_owner:
            row.refresh_lease_owner, row.refresh_lease_until = "", None
            row.save(update_fields=["refresh_lease_owner", "refresh_lease_until"])
    return row, applied


def store_held() -> dict[str, int]:
    """Store every held grant the database can take now (beat, and the worker's start); returns counts."""
    counts = {"stored": 0, "superseded": 0, "dropped": 0, "waiting": 0}
    oldest = timezone.now() - timedelta(days=settings.B24_REFRESH_TOKEN_DAYS)
    for member_id, _document in list(HELD.entries()):
        found = held(member_id)
        if found is None:
            continue
        grant, held_at = found
        if held_at < oldest:
            log.critical("a held grant outlived its refresh token; dropped", extra={"member_id": member_id})
            HELD.remove(member_id)
            counts["dropped"] += 1
            continue
        try:
            row, applied = _take_over(member_id, grant, held_at)
        except DatabaseError:
            counts["waiting"] += 1
            close_old_connections()
            continue
        _let_go(grant)
        counts["stored" if applied else "superseded" if row is not None else "dropped"] += 1
    if any(counts.values()):
        log.info("held grants", extra=counts)
    return counts


class HeldCollector:
    """Rotated tokens held outside the database (files in B24_TOKEN_SPOOL_DIR) for /metrics: above 0 only while
    the database is away or just back; one that stays up says the folder is not shared or cannot be stored."""

    def collect(self):
        yield GaugeMetricFamily(
            "b24widget_held_tokens", "Rotated tokens held until the database takes them.", value=len(HELD.files())
        )


# mypy checks the bound (Credentials) against Portal's class attributes, which django-stubs types as field
# descriptors, not the str they read as; a Portal does pass as Credentials wherever one is used as such.
class PortalClient(Client[Portal]):  # type: ignore[type-var]
    """REST access to one stored portal: the app's tokens are refreshed through `refresh_portal`."""

    def __init__(
        self,
        portal: Portal,
        *,
        access_token: str | None = None,
        oauth_server: bool = False,
        interactive: bool = False,
        limit_retries: int | None = None,
    ) -> None:
        # A row never stored (a grant's probe) has no tokens of ours to refresh.
        super().__init__(
            portal,
            refresh=_refresh if portal.pk is not None else None,
            access_token=access_token,
            oauth_server=oauth_server,
            interactive=interactive,
            limit_retries=limit_retries,
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
        waiting = held(portal.member_id)
        if waiting is not None:
            # Leased by a refresh whose answer is held (the database was away): store it and try again.
            _take_over(portal.member_id, *waiting)
            _let_go(waiting[0])
            continue
        if time.monotonic() >= wait_until:
            raise errors.RefreshInProgress()
        time.sleep(0.05)
    current, owner = claim
    waiting = held(current.member_id)
    if waiting is not None and waiting[0].refresh_token == current.refresh_token:
        HELD.remove(current.member_id)  # stored already; only the held copy was left behind
    elif waiting is not None:
        # A refresh whose answer the database could not take: its grant is the portal's, and the stored
        # refresh token is spent. Store it; ask the OAuth server only if its access token has expired too.
        row = _store(current.pk, owner, waiting[0], held_at=waiting[1], reason="held")
        if row.access_token_expired():
            return refresh_portal(row, seen_access_token=row.access_token, allow_blocked=allow_blocked, wait=wait)
        return row
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
    _hold(grant, current.pk)
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


def _store(
    pk: int, owner: str, grant: oauth.TokenGrant, *, held_at: datetime | None = None, reason: str = "refresh"
) -> Portal:
    """Commit the rotated tokens before anything else, retrying the write for B24_TOKEN_STORE_WAIT: the old
    token is spent. If the database stays away, the grant stays held (`_hold`) and the DatabaseError is
    raised: the next refresh of the portal, or beat's `store_held`, stores it once the database is back."""
    held_at = held_at or timezone.now()
    deadline = time.monotonic() + settings.B24_TOKEN_STORE_WAIT
    delay = 0.2
    attempt = 0
    while True:
        attempt += 1
        try:
            with transaction.atomic():
                row = _locked(pk, owner)
                _apply_held(row, grant, held_at, reason=reason)
        except DatabaseError:
            if transaction.get_connection().in_atomic_block or time.monotonic() + delay > deadline:
                log.error(
                    "a rotated token could not be stored yet; it is held until the database takes it",
                    extra={"member_id": grant.member_id, "attempts": attempt},
                )
                raise
            log.warning(
                "storing a rotated token failed; retrying", extra={"member_id": grant.member_id, "attempt": attempt}
            )
            close_old_connections()
            time.sleep(delay)
            delay = min(delay * 2, 5)
            continue
        _let_go(grant)
        row.refreshed_now = True  # this call refreshed (others return the row someone else refreshed)
        return row
