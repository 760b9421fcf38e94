"""Ask Bitrix24 what it says about the app on every active portal (app.info) and store it (the same
service runs on Celery beat as portals.tasks.sync_pass; this command is for cron users).

app.info is asked at the OAuth server's REST (the portal's `server_endpoint`), Bitrix24's trusted
source of licence and payment facts, with the portal's own token (the portal itself when no server
endpoint is known).

The OAuth server's app.info has its own shape, not the portal's (b24restdocs documents only that it is
the trusted source, settings/oauth/simple-way.md; the shape is the official Python SDK's, b24pysdk
`schemas/api.py` B24AppInfoResultData, and the PHP SDK reads `install.uri` the same way):
`{client_id, scope, expires, user_id, install: {installed, version, status, scope, domain, uri,
client_endpoint, member_id, member_type}}`. So a token's application is `client_id` (never a portal's
`CODE`, an application code that need not equal it), the portal is `install.member_id`, and the app's
status (F/D/T/P/L/S) is `install.status`; it has no PAYMENT_EXPIRED or LICENSE (the portal's app.info
does), so those stored values are left as they are. The status is stored with lifecycle.set_app_info,
which records a change as a PortalEvent. A batch runs against one portal only, so one app.info
request per portal is already the fewest possible.
"""

from django.core.management.base import BaseCommand, CommandError

from portals import maintenance
from portals.maintenance import BLOCKED, CHANGED, FAILED, SKIPPED, SYNCED, BadAppInfo, parse_app_info  # noqa: F401
from portals.models import Portal


class Command(BaseCommand):
    help = (
        "Call app.info for every active portal at the OAuth server's REST (with the portal's tokens, "
        "refreshed on expired_token) and "
        "store the app's status (F/D/T/P/L/S, the answer's install.status); a changed status is "
        "recorded in the portal's history. One request per portal: a batch cannot span portals. "
        "A portal whose token refresh is refused is blocked (an expected outcome); any other error "
        "is counted as failed with its code and makes the command exit with status 1."
    )

    def add_arguments(self, parser):
        maintenance.add_arguments(parser, verb="asked")
        parser.add_argument("--dry-run", action="store_true", help="list the portals that would be asked; call nothing")

    def handle(self, *args, **options):
        maintenance.check_options(options)

        candidates = Portal.objects.filter(status=Portal.Status.ACTIVE)
        total = candidates.count()
        if options["limit"] is not None:
            total = min(total, options["limit"])
        if options["dry_run"]:
            rows = candidates.order_by("pk").only("member_id", "domain", "app_status")
            rows = rows[: options["limit"]] if options["limit"] is not None else rows
            for portal in rows.iterator(chunk_size=options["batch_size"]):
                self.stdout.write(
                    f"would ask {portal.member_id} ({portal.domain}), stored status {portal.app_status or '-'}"
                )
            self.stdout.write(f"{SYNCED}=0 {CHANGED}=0 {BLOCKED}=0 {FAILED}=0 {SKIPPED}=0 due={total} (dry run)")
            return

        self.stdout.write(f"active: {total} portal(s); asking with {options['workers']} worker(s)")
        self.budget = maintenance.Budget(options["limit"])
        # `changed` portals are also synced: the summary counts them in both.
        tally = maintenance.Tally(
            self, (SYNCED, CHANGED, BLOCKED, FAILED, SKIPPED), every=options["progress_every"], total=total
        )
        maintenance.run(
            maintenance.ids_in_pages(candidates, options["batch_size"]),
            self._sync_one,
            workers=options["workers"],
            tally=tally,
            budget=self.budget,
        )
        self.stdout.write(tally.summary())
        if tally.counts[FAILED]:
            raise CommandError(f"{tally.counts[FAILED]} portal(s) could not be synced")

    def _sync_one(self, pk: int):
        return maintenance.sync_portal(pk, budget=self.budget)
