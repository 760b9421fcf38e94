"""Portal maintenance passes: the keep-alive refresh and the app.info sync, per portal.

The services (`due`, `refresh_if_due`, `sync_portal`) are what both the Celery tasks (portals/tasks.py)
and the cron commands (refresh_tokens, sync_portals) call. For the commands this module also holds
what they share: the --limit budget, SIGTERM handling, the tally that prints progress and the summary,
and a bounded thread pool (concurrent.futures) in which each thread closes its database connection.
"""

import contextlib
import logging
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypedDict

from django.conf import settings
from django.db import connections, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from bitrix24 import oauth
from bitrix24.errors import RestError, TokenRefreshFailed
from bitrix24.wire import JSON

from . import app_events, lifecycle, tokens
from .models import AppStatus, Portal
from .tokens import PortalClient

log = logging.getLogger("portals.commands")

REFRESHED = "refreshed"
SYNCED = "synced"
CHANGED = "changed"
FAILED = "failed"
SKIPPED = "skipped"
BLOCKED = "blocked"
MISCONFIGURED = "misconfigured"
# Claimed after --limit was reached: released untouched, not counted.
OVER_LIMIT = "over_limit"


@dataclass(frozen=True)
class Outcome:
    """What happened to one portal; `code`/`description` say why it failed or was blocked."""

    kind: str
    label: str = ""
    code: str = ""
    description: str = ""


# --- the services ----------------------------------------------------------------------------------


def due(*, older_than_days: int, within_minutes: int | None, now: datetime | None = None) -> Q:
    """Serving portals with a refresh token that is old (or of unknown age), or, when
    `within_minutes` is given, whose access token expires within that time (or at an unknown time)."""
    now = now or timezone.now()
    lapsing = Q(refresh_renewed_at__isnull=True) | Q(refresh_renewed_at__lte=now - timedelta(days=older_than_days))
    if within_minutes is not None:
        lapsing |= Q(access_expires_at__isnull=True) | Q(access_expires_at__lte=now + timedelta(minutes=within_minutes))
    return Q(status__in=(Portal.Status.NEW, Portal.Status.ACTIVE)) & ~Q(refresh_token="") & lapsing


def refresh_if_due(pk: int, due_now: Q, *, budget: "Budget | None" = None) -> Outcome:
    """Refresh the portal if it is still due and nobody else is refreshing it.

    Whether it is due is judged again under the row lock when the lease is taken: the id was read
    earlier, and another worker may have refreshed the portal since.
    """
    portal = Portal.objects.filter(due_now, pk=pk).first()
    if portal is None:
        return Outcome(SKIPPED)  # refreshed, blocked or uninstalled meanwhile
    if budget is not None and not budget.take():
        return Outcome(OVER_LIMIT)
    label = f"{portal.member_id} ({portal.domain})"
    try:
        after = tokens.refresh_portal(portal, force=True, wait=0, still_due=due_now)
    except (oauth.PortalNotServing, oauth.RefreshInProgress):
        return Outcome(SKIPPED, label)  # gone, or another worker holds the lease right now
    except oauth.ClientMisconfigured as exc:
        if budget is not None:
            budget.stop(exc.code)
        return Outcome(MISCONFIGURED, label, exc.code, exc.description)
    except oauth.OAuthError as exc:
        if Portal.objects.filter(pk=pk, status=Portal.Status.BLOCKED).exists():
            return Outcome(BLOCKED, label, exc.code, exc.description)
        return Outcome(FAILED, label, exc.code, exc.description)
    if not getattr(after, "refreshed_now", False):
        return Outcome(SKIPPED, label)  # no longer due when the lease was taken (another worker refreshed it)
    return Outcome(REFRESHED, label)


class BadAppInfo(Exception):
    """The OAuth server's app.info answer does not vouch for our app on this portal."""

    def __init__(self, code: str, description: str):
        super().__init__(description)
        self.code = code
        self.description = description


class AppInfoFacts(TypedDict):
    """What parse_app_info vouches for: lifecycle.set_app_info's keyword arguments."""

    app_status: str
    payment_expired: bool | None
    license: str


def parse_app_info(info: JSON, *, client_id: str, member_id: str) -> AppInfoFacts:
    """The facts of the OAuth server's app.info result for our app on that portal, or BadAppInfo.

    Its shape is `{client_id, scope, expires, user_id, install: {installed, version, status, ...}}`
    (b24pysdk schemas/api.py B24AppInfoResultData): no PAYMENT_EXPIRED or LICENSE, so those stored
    values are left as they are.
    """
    if not isinstance(info, dict) or not isinstance(info.get("install"), dict):
        raise BadAppInfo("bad_answer", "app.info answered without an install section")
    if info.get("client_id") != client_id:
        raise BadAppInfo("wrong_app", "app.info answered for another application")
    install = info["install"]
    if str(install.get("member_id") or "") != member_id:
        raise BadAppInfo("wrong_member", "app.info answered for another portal")
    if install.get("installed") is not True:
        raise BadAppInfo("not_installed", "app.info says the app is not installed on this portal")
    status = str(install.get("status") or "")
    if status not in AppStatus.values:
        raise BadAppInfo("bad_answer", "app.info answered without a known status")
    return {"app_status": status, "payment_expired": None, "license": ""}


def sync_portal(pk: int, *, budget: "Budget | None" = None) -> Outcome:
    """Ask the OAuth server's app.info about one active portal and store what it says."""
    portal = Portal.objects.filter(pk=pk, status=Portal.Status.ACTIVE).first()
    if portal is None:
        return Outcome(SKIPPED)
    if budget is not None and not budget.take():
        return Outcome(OVER_LIMIT)
    label = f"{portal.member_id} ({portal.domain})"
    # The OAuth server's app.info is the trusted word on licence and payment (the portal's is not).
    client = PortalClient(portal, oauth_server=True)
    try:
        answer = client.call("app.info")
    except TokenRefreshFailed as exc:
        # PortalClient refreshed on expired_token through tokens.refresh_portal, which blocks
        # the portal when the OAuth server refuses.
        status = Portal.objects.filter(pk=pk).values_list("status", flat=True).first()
        if status == Portal.Status.BLOCKED:
            return Outcome(BLOCKED, label, exc.code, exc.description)
        if exc.code == "portal_not_serving":
            return Outcome(SKIPPED, label)
        return Outcome(FAILED, label, exc.code, exc.description)
    except RestError as exc:
        if app_events.shows_app_gone(exc.code):
            # The app is gone from the portal and its ONAPPUNINSTALL never came (a portal without offline
            # events, the event lost while we were down): the inbox confirms and applies it.
            app_events.uninstall_noticed(portal)
            return Outcome(CHANGED, label, exc.code, "the app looks uninstalled: ONAPPUNINSTALL queued to confirm")
        return Outcome(FAILED, label, exc.code, exc.description)
    try:
        info = parse_app_info(answer, client_id=settings.B24_CLIENT_ID, member_id=portal.member_id)
    except BadAppInfo as exc:
        return Outcome(FAILED, label, exc.code, exc.description)
    with transaction.atomic():
        current = Portal.objects.select_for_update().filter(pk=pk).first()
        if current is None or current.status != Portal.Status.ACTIVE:
            return Outcome(SKIPPED, label)
        before = (current.app_status, current.payment_expired, current.license)
        lifecycle.set_app_info(current, **info)
        after = (current.app_status, current.payment_expired, current.license)
    return Outcome(CHANGED if after != before else SYNCED, label)


def ids_in_pages(queryset: QuerySet[Portal], batch_size: int) -> Iterator[int]:
    """Primary keys of `queryset`, read `batch_size` at a time (keyset pagination: rows that change
    or disappear during the pass do not shift the pages)."""
    last = None
    while True:
        page = queryset.order_by("pk")
        if last is not None:
            page = page.filter(pk__gt=last)
        ids = list(page.values_list("pk", flat=True)[:batch_size])
        yield from ids
        if len(ids) < batch_size:
            return
        last = ids[-1]


# --- what the cron commands share ------------------------------------------------------------------


class Budget:
    """At most `limit` portals are worked on (None: no limit); taken while the portal is claimed.

    `stop()` (SIGTERM, a deployment error) ends the run: nothing new is claimed, work in flight finishes.
    """

    def __init__(self, limit: int | None):
        self.limit = limit
        self.used = 0
        self.stopped = ""
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.stopped or (self.limit is not None and self.used >= self.limit):
                return False
            self.used += 1
            return True

    def stop(self, reason: str) -> None:
        with self._lock:
            self.stopped = self.stopped or reason

    @property
    def exhausted(self) -> bool:
        with self._lock:
            return bool(self.stopped) or (self.limit is not None and self.used >= self.limit)


class Tally:
    """Counts outcomes, prints one progress line per `every` portals and the summary line.
    A `changed` portal is counted as synced too."""

    def __init__(self, command, kinds: tuple[str, ...], *, every: int, total: int):
        self.command = command
        self.kinds = kinds
        self.every = every
        self.total = total
        self.counts: Counter[str] = Counter()
        self.failure_codes: Counter[str] = Counter()
        self.done = 0
        self._lock = threading.Lock()

    def add(self, outcome: Outcome) -> None:
        if outcome.kind == OVER_LIMIT:
            return
        with self._lock:
            self.counts[outcome.kind] += 1
            if outcome.kind == CHANGED:
                self.counts[SYNCED] += 1
            self.done += 1
            if outcome.kind == FAILED:
                self.failure_codes[outcome.code or "error"] += 1
                self.command.stderr.write(f"failed {outcome.label}: {outcome.code} {outcome.description}".rstrip())
            elif outcome.kind == BLOCKED:
                self.command.stdout.write(f"blocked {outcome.label}: {outcome.code}")
            if self.every and self.done % self.every == 0:
                self.command.stdout.write(f"progress {self.done}/{max(self.total, self.done)} {self._counts()}")

    def _counts(self) -> str:
        return " ".join(f"{kind}={self.counts[kind]}" for kind in self.kinds)

    def summary(self) -> str:
        with self._lock:
            line = self._counts()
            if self.failure_codes:
                codes = ",".join(f"{code}:{n}" for code, n in sorted(self.failure_codes.items()))
                line += f" failure_codes={codes}"
            return line


def run(ids: Iterable[int], work: Callable[[int], Outcome], *, workers: int, tally: Tally, budget: Budget) -> None:
    """Run `work(pk) -> Outcome` for each id on at most `workers` threads; an exception counts as failed.

    At most 2 x `workers` ids are in flight, so a stop (SIGTERM, --limit) claims nothing new while
    portals already being worked on finish (a refresh token spent at the OAuth server must be stored).
    """

    def one(pk):
        try:
            if budget.stopped:
                return
            try:
                outcome = work(pk)
            except Exception as exc:  # one portal's bug must not stop the others
                log.exception("portal id %s: unexpected error", pk)
                outcome = Outcome(FAILED, label=f"id={pk}", code=type(exc).__name__, description=str(exc)[:255])
            tally.add(outcome)
        finally:
            connections.close_all()  # this thread's connections only

    in_flight = threading.BoundedSemaphore(workers * 2)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="portal-worker") as pool:
        try:
            for pk in ids:
                if budget.exhausted:
                    break
                in_flight.acquire()
                future = pool.submit(one, pk)
                future.add_done_callback(lambda _f: in_flight.release())
        except BaseException:
            budget.stop("interrupted")  # queued portals are dropped; in-flight ones finish below
            raise


@contextlib.contextmanager
def stop_on_sigterm(budget: Budget) -> Iterator[None]:
    """SIGTERM (what systemd and Kubernetes send) stops the run gracefully: in-flight portals finish and
    commit (a spent refresh token must be stored), nothing new is claimed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: budget.stop("SIGTERM"))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def add_arguments(parser, *, verb: str) -> None:
    """The options every portal-walking command shares (--workers, --batch-size, --limit, --progress-every)."""
    parser.add_argument(
        "--workers",
        type=int,
        default=4,
        metavar="N",
        help=f"portals {verb} at once, each thread with its own database connection (default 4)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=100,
        metavar="N",
        help="portal ids read from the database per query (default 100)",
    )
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="handle at most N portals in this run")
    parser.add_argument(
        "--progress-every",
        type=int,
        default=100,
        metavar="N",
        help="print a progress line every N portals (default 100; 0: none)",
    )


def check_options(options) -> None:
    """Refuse nonsensical values of the shared options with a clear message."""
    from django.core.management.base import CommandError

    for name in ("workers", "batch_size"):
        if options[name] < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
    if options["limit"] is not None and options["limit"] < 1:
        raise CommandError("--limit must be at least 1")
    if options["progress_every"] < 0:
        raise CommandError("--progress-every must not be negative")
