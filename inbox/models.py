"""The inbox's one table: every Bitrix24 event we accepted, until it is applied (and for a while after)."""

import json

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from vault.fields import EncryptedTextField


class InboxItem(models.Model):
    """One Bitrix24 event, stored durably when it arrived and processed later by a worker (inbox/queue.py).

    `auth` is kept encrypted at rest (it holds `application_token` and, for some events, tokens) and is
    never shown; `idempotency_key` is a keyed digest of what a duplicate delivery repeats; not unique: a key is taken
    only by a row that was applied (inbox/queue.py idempotency_key says why).
    """

    class State(models.TextChoices):
        PENDING = "pending", _("pending")
        PROCESSING = "processing", _("processing")
        DONE = "done", _("done")
        REJECTED = "rejected", _("rejected")
        FAILED = "failed", _("failed")

    class Source(models.TextChoices):
        ONLINE = "online", _("online (POSTed to /events/)")
        OFFLINE = "offline", _("offline (pulled from the portal's queue)")

    class Lane(models.TextChoices):
        PROVEN = "proven", _("proven (the portal's application_token, or pulled with our tokens)")
        UNPROVEN = "unproven", _("unproven (no stored portal vouches for it)")

    UNFINISHED = (State.PENDING, State.PROCESSING)

    VAULT_LABEL_FIELDS = ("event", "member_id")  # how key rotation names a row

    # By name: the inbox imports no app above it (docs/architecture.md); the row predates its portal at times.
    portal = models.ForeignKey("portals.Portal", on_delete=models.CASCADE, null=True, blank=True, related_name="inbox")
    member_id = models.CharField(max_length=64, help_text="As the event named it (the portal may not exist yet).")
    event = models.CharField(max_length=64, help_text="Bitrix24's event code, upper-cased.")
    event_handler_id = models.CharField(max_length=32, blank=True)
    # How it came: POSTed by Bitrix24 (checked by its application_token), or pulled by us from the portal's
    # offline queue with the app's own tokens (inbox/offline.py). Only the pull sets `offline`.
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.ONLINE)
    # Whether the sender proved itself at accept: its application_token matched the stored portal's, or the row
    # was pulled offline with our own tokens (proven); or nothing vouched for it (unproven). A portal's order
    # holds within a lane only, so a stranger's flood never holds back the portal's genuine events.
    lane = models.CharField(max_length=8, choices=Lane.choices, default=Lane.PROVEN)
    data = models.JSONField(default=dict, blank=True)
    sealed_auth = EncryptedTextField(blank=True, editable=False)
    ts = models.CharField(
        max_length=32, blank=True, help_text="The event's `ts` as Bitrix24 sent it (offline: the record's TIMESTAMP_X)."
    )
    idempotency_key = models.CharField(max_length=64, db_index=True, editable=False)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    received_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # When a task for it was last sent to the broker: the sweeper re-sends what looks lost.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # A worker's claim while it runs the handler; an expired claim means the worker died.
    lease_owner = models.CharField(max_length=32, blank=True, editable=False)
    lease_until = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=255, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        # The table of its first home (portals), kept: a deploy with old and new workers loses nothing.
        db_table = "portals_inboxitem"
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"], name="inbox_due"),
            models.Index(fields=["member_id", "lane", "state", "id"], name="inbox_lane_order"),
            models.Index(fields=["lane", "state"], name="inbox_lane_waiting"),
            models.Index(fields=["state", "finished_at"], name="inbox_finished"),
        ]

    def __str__(self):
        return f"{self.event} #{self.pk} ({self.member_id}, {self.state})"

    def __repr__(self):
        return f"<InboxItem {self.pk} {self.event} {self.member_id} {self.state}>"

    @property
    def auth(self) -> dict:
        """The event's `auth` block (secrets included: never log or show it)."""
        if not self.sealed_auth:
            return {}
        return json.loads(self.sealed_auth)

    @property
    def finished(self) -> bool:
        return self.state not in self.UNFINISHED


class RetentionRun(models.Model):
    """One pass of a retention sweep (beat): when, under which rule, and how many rows of each kind it deleted.
    Read-only in the admin. The inbox's `PruneRun` and the relay's `openlines.MessagePruneRun` are its two kinds;
    each names its counters in DELETED_FIELDS."""

    DELETED_FIELDS: tuple[str, ...] = ()

    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=255, help_text="The retention rule that applied, with its settings.")

    class Meta:
        abstract = True
        ordering = ["-started_at", "-id"]

    def __str__(self):
        return f"prune {self.started_at:%Y-%m-%d %H:%M}: {self.deleted} row(s)"

    @property
    def deleted(self) -> int:
        return sum(getattr(self, name) for name in self.DELETED_FIELDS)


class PruneRun(RetentionRun):
    """One pass of the retention (inbox/queue.py prune, beat): what was deleted, and why. Read-only in the admin."""

    DELETED_FIELDS = ("done_deleted", "rejected_deleted", "failed_deleted")

    finished_before = models.DateTimeField(help_text="Done and rejected rows finished before this were deleted.")
    failed_before = models.DateTimeField(
        null=True, blank=True, help_text="Failed rows finished before this were deleted (empty: failed rows are kept)."
    )
    done_deleted = models.PositiveIntegerField(default=0)
    rejected_deleted = models.PositiveIntegerField(default=0)
    failed_deleted = models.PositiveIntegerField(default=0)
