"""Re-encrypt every stored secret with the first TOKEN_ENCRYPTION_KEYS key, so old keys can be retired."""

from django.core.management.base import BaseCommand, CommandError

from vault import rotation


class Command(BaseCommand):
    help = (
        "Re-encrypt every encrypted field of every model (portals' tokens, stored events' auth, Open Lines "
        "channel secrets, and any added later; and the tokens held during a database outage) with the first key of "
        "TOKEN_ENCRYPTION_KEYS (all keys "
        "decrypt). Run it after putting a new key first; once it finishes without errors, the old keys can "
        "be removed. Each row is locked while it is rewritten, so a token refresh running at the same time "
        "is never overwritten. --dry-run only reads."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="decrypt every stored secret with the configured keys and report; write nothing",
        )

    def handle(self, *args, dry_run=False, **options):
        self.stdout.write("checking every stored secret" if dry_run else "re-encrypting every stored secret")
        unreadable = []
        counts = []
        for outcome in rotation.rotate(dry_run=dry_run, progress=self.stdout.write):
            counts.append(f"{outcome.name} {outcome.done}")
            unreadable += outcome.unreadable
        for name, done, lost in rotation.rotate_spools(dry_run=dry_run):
            counts.append(f"held {name} {done}")
            unreadable += lost
        verb = "checked (dry run: nothing written)" if dry_run else "re-encrypted with the first key"
        self.stdout.write(f"{verb}: {', '.join(counts)}")
        if unreadable:
            names = "\n".join(f"  - {label}" for label in unreadable)
            raise CommandError(
                f"{len(unreadable)} row(s) hold secrets that no key in TOKEN_ENCRYPTION_KEYS decrypts:\n{names}\n"
                "Put the key they were encrypted with back into TOKEN_ENCRYPTION_KEYS (after the new first key) "
                "and run rotate_token_keys again. Do not remove any old key until this command reports no "
                "errors. If that key is lost, those secrets cannot be recovered: a portal's administrator must "
                "reinstall the app; a channel's administrator must rotate its secret (SETTING_CONNECTOR); a "
                "stored event's tokens are only needed if it is replayed."
            )
