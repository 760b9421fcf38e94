"""Re-encrypt every stored secret with the first TOKEN_ENCRYPTION_KEYS key, so old keys can be retired."""
from django.core.management.base import BaseCommand
from django.db import transaction

from portals.models import Portal

SECRETS = ["access_token", "refresh_token", "application_token"]


class Command(BaseCommand):
    help = (
        "Re-encrypt the tokens and application_token of every portal with the first key of "
        "TOKEN_ENCRYPTION_KEYS (all keys decrypt). Run it after putting a new key first; once it "
        "finishes, the old keys can be removed. Each row is locked while it is rewritten, so a token "
        "refresh running at the same time is never overwritten."
    )

    def handle(self, *args, **options):
        done = 0
        for pk in Portal.objects.order_by("pk").values_list("pk", flat=True).iterator(chunk_size=500):
            with transaction.atomic():
                portal = Portal.objects.select_for_update().filter(pk=pk).first()
                if portal is None:
                    continue
                # Loading decrypted with whichever key fits; saving encrypts with the first one.
                portal.save(update_fields=SECRETS)
            done += 1
        self.stdout.write(f"re-encrypted the secrets of {done} portal(s) with the first key")
