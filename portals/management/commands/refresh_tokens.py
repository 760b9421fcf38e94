"""Keep unused portals alive: refresh tokens that would otherwise lapse, and only those.

Refresh tokens live 180 days and Bitrix24 asks apps not to refresh "just in case", so a portal is
refreshed only when it is due: its refresh token was renewed more than --older-than-days ago, or
(with --expiring-access-tokens) its access token expires within --within-minutes.

The same service runs on Celery beat (portals.tasks.keepalive_pass, fanned out over workers); this
command is for cron users. Several copies may run at once: each refresh takes the portal's lease
(tokens.refresh_portal) and checks again under the row lock that the portal is still due, so no portal
is refreshed twice; no database lock is held while the OAuth server answers. SIGTERM stops the run gracefully (in-flight
refreshes finish and are stored; nothing new is claimed). An OAuth answer that our own client
credentials are wrong stops the run at once with exit status 2: no portal is blocked for it.
"""

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from bitrix24 import oauth
from portals import maintenance
from portals.maintenance import BLOCKED, FAILED, REFRESHED, SKIPPED, due, refresh_if_due
from portals.models import Portal

REFRESH_TOKEN_DAYS = 180
ACCESS_TOKEN_MINUTES = 60


class Command(BaseCommand):
    help = (
        "Refresh the tokens of serving portals whose refresh token would otherwise lapse (renewed more "
        "than --older-than-days ago; refresh tokens live 180 days) and, with --expiring-access-tokens, "
        "of those whose access token expires within --within-minutes. Nothing else is refreshed: "
        "Bitrix24 asks apps not to refresh just in case. Safe to run as several copies at once on "
        "PostgreSQL (rows are claimed with FOR UPDATE SKIP LOCKED); on SQLite copies take turns. "
        "Refused refreshes block the portal (an expected outcome); an unreachable OAuth server or an "
        "error is a failure and makes the command exit with status 1."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than-days",
            type=int,
            default=150,
            metavar="N",
            help="refresh portals whose refresh token was renewed more than N days ago "
            "(default 150; must be below 180)",
        )
        parser.add_argument(
            "--expiring-access-tokens",
            action="store_true",
            help="also refresh portals whose access token is about to expire",
        )
        parser.add_argument(
            "--within-minutes",
            type=int,
            default=10,
            metavar="M",
            help="with --expiring-access-tokens: expiring within M minutes (default 10; below 60)",
        )
        maintenance.add_arguments(parser, verb="refreshed")
        parser.add_argument(
            "--dry-run", action="store_true", help="list the portals that are due; refresh and change nothing"
        )

    def handle(self, *args, **options):
        older_than_days = options["older_than_days"]
        if not 0 < older_than_days < REFRESH_TOKEN_DAYS:
            raise CommandError(f"--older-than-days must be between 1 and {REFRESH_TOKEN_DAYS - 1}")
        within_minutes = None
        if options["expiring_access_tokens"]:
            within_minutes = options["within_minutes"]
            # An access token lives an hour: a window of an hour or more would refresh every portal every run.
            if not 0 < within_minutes < ACCESS_TOKEN_MINUTES:
                raise CommandError(f"--within-minutes must be between 1 and {ACCESS_TOKEN_MINUTES - 1}")
        maintenance.check_options(options)
        self.older_than_days = older_than_days
        self.within_minutes = within_minutes

        candidates = Portal.objects.filter(self._due())
        if options["dry_run"]:
            return self._dry_run(candidates, options["batch_size"], options["limit"])

        workers = options["workers"]
        total = candidates.count()
        if options["limit"] is not None:
            total = min(total, options["limit"])
        self.stdout.write(f"due: {total} portal(s); refreshing with {workers} worker(s)")
        self.budget = maintenance.Budget(options["limit"])
        tally = maintenance.Tally(
            self, (REFRESHED, BLOCKED, FAILED, SKIPPED), every=options["progress_every"], total=total
        )
        with maintenance.stop_on_sigterm(self.budget):
            maintenance.run(
                maintenance.ids_in_pages(candidates, options["batch_size"]),
                lambda pk: refresh_if_due(pk, self._due(), budget=self.budget),
                workers=workers,
                tally=tally,
                budget=self.budget,
            )
        self.stdout.write(tally.summary())
        if self.budget.stopped in oauth.CLIENT_ERRORS:
            raise CommandError(
                f"the OAuth server refused this deployment's credentials ({self.budget.stopped}): check "
                "B24_CLIENT_ID and B24_CLIENT_SECRET. No portal was blocked; the run stopped at the first "
                "such answer.",
                returncode=2,
            )
        if self.budget.stopped == "SIGTERM":
            raise CommandError(
                "stopped by SIGTERM: refreshes in flight were finished and stored; run again to go on", returncode=143
            )
        if tally.counts[FAILED]:
            raise CommandError(f"{tally.counts[FAILED]} portal(s) could not be refreshed")

    def _due(self) -> Q:
        return due(older_than_days=self.older_than_days, within_minutes=self.within_minutes)

    def _dry_run(self, candidates, batch_size: int, limit: int | None) -> None:
        rows = candidates.order_by("pk").only("member_id", "domain", "refresh_renewed_at", "access_expires_at")
        if limit is not None:
            rows = rows[:limit]
        count = 0
        for portal in rows.iterator(chunk_size=batch_size):
            count += 1
            renewed = f"{portal.refresh_renewed_at:%Y-%m-%d %H:%M}" if portal.refresh_renewed_at else "unknown"
            expires = f"{portal.access_expires_at:%Y-%m-%d %H:%M}" if portal.access_expires_at else "unknown"
            self.stdout.write(
                f"due {portal.member_id} ({portal.domain}): refresh token renewed {renewed}, "
                f"access token expires {expires}"
            )
        self.stdout.write(f"{REFRESHED}=0 {BLOCKED}=0 {FAILED}=0 {SKIPPED}=0 due={count} (dry run)")
