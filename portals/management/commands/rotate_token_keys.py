"""Re-encrypt every stored secret with the first TOKEN_ENCRYPTION_KEYS key, so old keys can be retired."""
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from portals.crypto import DecryptionError
from portals.models import InboxItem, Portal

SECRETS = ["access_token", "refresh_token", "application_token"]
PROGRESS_EVERY = 500


class Command(BaseCommand):
    help = (
        "Re-encrypt the tokens and application_token of every portal with the first key of "
        "TOKEN_ENCRYPTION_KEYS (all keys decrypt). Run it after putting a new key first; once it "
        "finishes without errors, the old keys can be removed. Each row is locked while it is rewritten, "
        "so a token refresh running at the same time is never overwritten. --dry-run only reads."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true",
                            help="decrypt every portal's secrets with the configured keys and report; write nothing")

    def handle(self, *args, dry_run=False, **options):
        total = Portal.objects.count()
        verb = "checked" if dry_run else "re-encrypted"
        self.stdout.write(f"{'checking' if dry_run else 're-encrypting'} the secrets of {total} portal(s)")
        done, unreadable = 0, []
        for position, pk in enumerate(
                Portal.objects.order_by("pk").values_list("pk", flat=True).iterator(chunk_size=500), start=1):
            try:
                with transaction.atomic():
                    rows = Portal.objects.filter(pk=pk)
                    portal = (rows if dry_run else rows.select_for_update()).first()
                    if portal is not None:
                        if not dry_run:
                            # Loading decrypted with whichever key fits; saving encrypts with the first one.
                            portal.save(update_fields=SECRETS)
                        done += 1
            except DecryptionError:
                unreadable.append(Portal.objects.filter(pk=pk).values("member_id", "domain").first())
            if position % PROGRESS_EVERY == 0:
                self.stdout.write(f"  {position}/{total} ...")
        events, unreadable_events = self._inbox(dry_run)
        summary = (f"{verb} {done} portal(s) and {events} stored event(s)"
                   + (" (dry run: nothing written)" if dry_run else " with the first key"))
        if unreadable_events:
            unreadable.append({"domain": f"{unreadable_events} stored event(s) in the inbox", "member_id": "-"})
        if unreadable:
            self.stdout.write(summary)
            names = "\n".join(f"  - {row['domain']} (member_id {row['member_id']})" for row in unreadable if row)
            raise CommandError(
                f"{len(unreadable)} portal(s) have secrets that no key in TOKEN_ENCRYPTION_KEYS decrypts:\n{names}\n"
                "Put the key they were encrypted with back into TOKEN_ENCRYPTION_KEYS (after the new first key) "
                "and run rotate_token_keys again. Do not remove any old key until this command reports no "
                "errors. If that key is lost, those tokens cannot be recovered: the portal's administrator "
                "must reinstall the app.")
        self.stdout.write(summary)

    def _inbox(self, dry_run: bool) -> tuple[int, int]:
        """The inbox's stored `auth` blocks (unfinished and failed events keep theirs), row by row."""
        done = unreadable = 0
        ids = InboxItem.objects.exclude(sealed_auth="").order_by("pk").values_list("pk", flat=True)
        for pk in ids.iterator(chunk_size=500):
            try:
                with transaction.atomic():
                    rows = InboxItem.objects.filter(pk=pk)
                    item = (rows if dry_run else rows.select_for_update()).first()
                    if item is not None:
                        if not dry_run:
                            item.save(update_fields=["sealed_auth"])
                        done += 1
            except DecryptionError:
                unreadable += 1
        return done, unreadable
