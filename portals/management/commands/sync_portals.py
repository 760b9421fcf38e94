"""Ask Bitrix24 what it says about the app on every active portal (app.info) and store it.

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
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from portals import lifecycle
from portals.models import AppStatus, Portal
from portals.rest import PortalClient, RestError, TokenRefreshFailed

from . import _pool
from ._pool import BLOCKED, FAILED, OVER_LIMIT, SKIPPED, Outcome

SYNCED = "synced"
CHANGED = "changed"


class BadAppInfo(Exception):
    """The OAuth server's app.info answer does not vouch for our app on this portal."""

    def __init__(self, code: str, description: str):
        super().__init__(description)
        self.code = code
        self.description = description


def parse_app_info(info, *, client_id: str, member_id: str) -> dict:
    """The facts of the OAuth server's app.info result for our app on that portal, or BadAppInfo."""
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
        _pool.add_arguments(parser, verb="asked")
        parser.add_argument("--dry-run", action="store_true", help="list the portals that would be asked; call nothing")

    def handle(self, *args, **options):
        _pool.check_options(options)

        candidates = Portal.objects.filter(status=Portal.Status.ACTIVE)
        total = candidates.count()
        if options["limit"] is not None:
            total = min(total, options["limit"])
        if options["dry_run"]:
            rows = candidates.order_by("pk").only("member_id", "domain", "app_status")
            rows = rows[: options["limit"]] if options["limit"] is not None else rows
            for portal in rows.iterator(chunk_size=options["batch_size"]):
                self.stdout.write(f"would ask {portal.member_id} ({portal.domain}), stored status "
                                  f"{portal.app_status or '-'}")
            self.stdout.write(f"{SYNCED}=0 {CHANGED}=0 {BLOCKED}=0 {FAILED}=0 {SKIPPED}=0 due={total} (dry run)")
            return

        self.stdout.write(f"active: {total} portal(s); asking with {options['workers']} worker(s)")
        self.budget = _pool.Budget(options["limit"])
        # `changed` portals are also synced: the summary counts them in both.
        tally = _Tally(self, (SYNCED, CHANGED, BLOCKED, FAILED, SKIPPED), every=options["progress_every"], total=total)
        _pool.run(_pool.ids_in_pages(candidates, options["batch_size"]), self._sync_one,
                  workers=options["workers"], tally=tally, budget=self.budget)
        self.stdout.write(tally.summary())
        if tally.counts[FAILED]:
            raise CommandError(f"{tally.counts[FAILED]} portal(s) could not be synced")

    def _sync_one(self, pk: int) -> Outcome:
        portal = Portal.objects.filter(pk=pk, status=Portal.Status.ACTIVE).first()
        if portal is None:
            return Outcome(SKIPPED)
        if not self.budget.take():
            return Outcome(OVER_LIMIT)
        label = f"{portal.member_id} ({portal.domain})"
        # The OAuth server's app.info is the trusted word on licence and payment (the portal's is not).
        client = PortalClient(portal, oauth_server=True)
        try:
            answer = client.call("app.info")
        except TokenRefreshFailed as exc:
            # PortalClient refreshed on expired_token through oauth.refresh_portal, which blocks
            # the portal when the OAuth server refuses.
            status = Portal.objects.filter(pk=pk).values_list("status", flat=True).first()
            if status == Portal.Status.BLOCKED:
                return Outcome(BLOCKED, label, exc.code, exc.description)
            if exc.code == "portal_not_serving":
                return Outcome(SKIPPED, label)
            return Outcome(FAILED, label, exc.code, exc.description)
        except RestError as exc:
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


class _Tally(_pool.Tally):
    """A changed portal is a synced portal too."""

    def add(self, outcome: Outcome) -> None:
        if outcome.kind == CHANGED:
            with self._lock:
                self.counts[SYNCED] += 1
        super().add(outcome)
