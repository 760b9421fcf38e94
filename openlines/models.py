"""A channel per portal and Open Line, the messages it relayed (with their ids on both sides), deliveries.

History stays when a channel is disconnected or its portal uninstalls: only the credentials go.
"""

import secrets
import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from inbox.models import RetentionRun
from portals.models import Portal
from vault.fields import EncryptedTextField


class Channel(models.Model):
    """Our connector on one Open Line of one portal, and the outside system's credentials for it.

    `public_id` names the channel in the channel API's URLs; `secret` (the HMAC key both ways) is made
    here, shown once, stored only encrypted (vault.fields) and replaced on rotation.
    """

    VAULT_LABEL_FIELDS = ("public_id", "connector_id", "line_id")  # how key rotation names a row

    class State(models.TextChoices):
        CONNECTED = "connected", _("connected")
        DISCONNECTED = "disconnected", _("disconnected")
        REVOKED = "revoked", _("revoked")  # the line, the connector or the app is gone

    portal = models.ForeignKey(Portal, on_delete=models.CASCADE, related_name="channels")
    connector_id = models.CharField(max_length=64)
    line_id = models.CharField(max_length=16, help_text="Bitrix24 Open Line id.")
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    state = models.CharField(max_length=16, choices=State.choices, default=State.CONNECTED, db_index=True)
    name = models.CharField(max_length=128, blank=True, help_text="Shown in Bitrix24 (connector.data.set NAME).")
    webhook_url = models.CharField(max_length=500, blank=True, help_text="Where operator replies are POSTed.")
    secret = EncryptedTextField(blank=True)
    secret_rotated_at = models.DateTimeField(null=True, blank=True)
    connected_by = models.CharField(max_length=32, blank=True, help_text="Bitrix24 user id.")
    created_at = models.DateTimeField(default=timezone.now)
    connected_at = models.DateTimeField(null=True, blank=True)
    disconnected_at = models.DateTimeField(null=True, blank=True)
    last_activity_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=255, blank=True)
    # One worker at a time delivers a channel's messages each way (so they keep their order); a lease,
    # not a lock, so a crashed worker's channel is taken over once it ends.
    # The lease is short and renewed by the running delivery's heartbeat; its owner (a random id per run)
    # is the token, so only the run that holds it renews or releases it (openlines/tasks.py).
    inbound_lease_until = models.DateTimeField(null=True, blank=True, editable=False)
    outbound_lease_until = models.DateTimeField(null=True, blank=True, editable=False)
    inbound_lease_owner = models.CharField(max_length=32, blank=True, editable=False)
    outbound_lease_owner = models.CharField(max_length=32, blank=True, editable=False)
    # A delivery task was sent and has not started yet (from when it may start): at most one waits per
    # channel and direction (openlines.tasks.queue_channel).
    inbound_queued_at = models.DateTimeField(null=True, blank=True, editable=False)
    outbound_queued_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["portal_id", "line_id"]
        constraints = [
            models.UniqueConstraint(fields=["portal", "connector_id", "line_id"], name="channel_per_line"),
        ]

    def __str__(self):
        return f"{self.connector_id} on line {self.line_id} of {self.portal_id}"

    def __repr__(self):
        return f"<Channel {self.public_id} {self.state}>"  # never the secret

    @property
    def is_connected(self) -> bool:
        return self.state == self.State.CONNECTED

    def new_secret(self) -> str:
        """Make (or rotate) the channel's secret; the caller saves and shows it once."""
        self.secret = secrets.token_urlsafe(32)
        self.secret_rotated_at = timezone.now()
        return self.secret


class Delivery(models.TextChoices):
    PENDING = "pending", _("pending")
    SENT = "sent", _("sent")
    FAILED = "failed", _("failed")  # retried later
    DEAD = "dead", _("dead letter")  # given up; an administrator may replay it
    # An operator reply on a connected line that has no webhook URL yet: not due until one is saved
    # (openlines.tasks.release_parked); a dead letter after OPENLINES_RETRY_HOURS like any other.
    PARKED = "parked", _("parked (no webhook URL)")


# Rows a worker may still send (a PARKED row waits for a webhook URL first).
UNSENT = (Delivery.PENDING, Delivery.FAILED)


class InboundMessage(models.Model):
    """A message (or its edit or deletion) from the outside system, to be sent to Bitrix24.

    `key` makes the channel API idempotent: the same message id (or the same edit) is accepted once.
    """

    class Action(models.TextChoices):
        ADD = "add", "imconnector.send.messages"
        UPDATE = "update", "imconnector.update.messages"
        DELETE = "delete", "imconnector.delete.messages"
        READ = "read", "imconnector.send.status.reading"  # the customer read an operator's message

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="inbound")
    action = models.CharField(max_length=8, choices=Action.choices, default=Action.ADD)
    key = models.CharField(max_length=200)
    external_chat_id = models.CharField(max_length=128)
    external_message_id = models.CharField(max_length=128)
    payload = models.JSONField(help_text="The MESSAGES element sent to Bitrix24 (user, message, chat).")
    state = models.CharField(max_length=8, choices=Delivery.choices, default=Delivery.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.CharField(max_length=255, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    # What Bitrix24 answered (send.messages RESULT[].session): the Open Lines chat and session.
    im_chat_id = models.CharField(max_length=32, blank=True)
    session_id = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["channel", "key"], name="inbound_once")]
        indexes = [
            models.Index(fields=["channel", "state", "id"], name="inbound_queue"),
            # openlines.confirm: is this Open Lines chat one of the channel's conversations, and its sessions.
            models.Index(fields=["channel", "im_chat_id"], name="inbound_chat"),
            # The sweep's question "which channels have due rows": due rows only, by when they are due.
            models.Index(fields=["next_attempt_at"], name="inbound_due", condition=Q(state__in=UNSENT)),
        ]

    def __str__(self):
        return f"{self.action} {self.external_message_id}"


class OutboundMessage(models.Model):
    """An operator's message from Bitrix24 (OnImConnectorMessageAdd/Update/Delete) for the outside system.

    Sent in order per outside chat (`external_chat_id`). Once sent, a message (`add`) still owes Bitrix24
    its delivery status while `status_reported_at` is empty; `next_attempt_at` then says when that report
    is tried again (the webhook is never POSTed again for it).
    """

    class Action(models.TextChoices):
        ADD = "add", "OnImConnectorMessageAdd"
        UPDATE = "update", "OnImConnectorMessageUpdate"
        DELETE = "delete", "OnImConnectorMessageDelete"

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="outbound")
    action = models.CharField(max_length=8, choices=Action.choices, default=Action.ADD)
    key = models.CharField(max_length=200, help_text="action:im.message_id (events may be delivered again).")
    im_chat_id = models.CharField(max_length=32)
    im_message_id = models.CharField(max_length=32)
    external_chat_id = models.CharField(max_length=128)
    payload = models.JSONField(help_text="The webhook body sent to the outside system.")
    state = models.CharField(max_length=8, choices=Delivery.choices, default=Delivery.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    status_reported_at = models.DateTimeField(null=True, blank=True, help_text="send.status.delivery done.")
    external_message_id = models.CharField(
        max_length=128,
        blank=True,
        help_text="The outside system's id of the message (its webhook answer), for send.status.delivery.",
    )
    im_session_id = models.CharField(
        max_length=32,
        blank=True,
        help_text="The Open Lines session the portal showed the message in (openlines.confirm).",
    )

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["channel", "key"], name="outbound_once")]
        indexes = [
            models.Index(fields=["channel", "state", "id"], name="outbound_queue"),
            # openlines.confirm and events: what was relayed of one Bitrix24 message.
            models.Index(fields=["channel", "im_message_id"], name="outbound_message"),
            models.Index(fields=["next_attempt_at"], name="outbound_due", condition=Q(state__in=UNSENT)),
            # Sent messages whose delivery status Bitrix24 has not taken yet, by when they were sent: the
            # sweep asks for the last OPENLINES_RETRY_HOURS only (older ones are given up, and stay here).
            models.Index(
                fields=["sent_at"],
                name="outbound_status_due",
                condition=Q(state=Delivery.SENT, action="add", status_reported_at__isnull=True),
            ),
        ]

    def __str__(self):
        return f"{self.action} {self.im_message_id}"


class WaitingReply(models.Model):
    """An operator's message (or its edit or deletion) that nobody the app can ask may read yet.

    `imopenlines.session.history.get` answered ACCESS_DENIED to the app's tokens (the installing
    administrator lost access to the line), by session too, and the event brought no token of its own that
    could read it (openlines.confirm). It is never relayed unconfirmed and never dropped: it waits here,
    shown in the admin and the Contact Center overview, and `openlines.reconcile.recheck_waiting` asks again
    until the portal shows it. Later messages of the same outside chat wait behind it, so order holds.
    """

    class State(models.TextChoices):
        WAITING = "waiting", _("waiting for someone who may read the conversation")
        RELAYED = "relayed", _("confirmed and queued for the webhook")
        REFUSED = "refused", _("not confirmed by the portal (deleted or changed meanwhile)")

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="waiting")
    action = models.CharField(max_length=8, choices=OutboundMessage.Action.choices)
    im_chat_id = models.CharField(max_length=32)
    im_message_id = models.CharField(max_length=32)
    external_chat_id = models.CharField(max_length=128)
    state = models.CharField(max_length=8, choices=State.choices, default=State.WAITING, db_index=True)
    reason = models.CharField(max_length=255, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    next_check_at = models.DateTimeField(default=timezone.now)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "action", "im_message_id"],
                condition=Q(state="waiting"),
                name="waiting_reply_once",
            )
        ]
        indexes = [models.Index(fields=["channel", "state", "id"], name="waiting_queue")]

    def __str__(self):
        return f"{self.action} {self.im_message_id} ({self.state})"


class MessagePruneRun(RetentionRun):
    """One pass of the relay's retention (openlines/retention.py, beat): what was deleted, and why.
    Read-only in the admin."""

    DELETED_FIELDS = ("inbound_deleted", "outbound_deleted", "waiting_deleted")

    reason = models.CharField(max_length=255, help_text="The retention rule that applied, with its setting.")
    before = models.DateTimeField(help_text="Messages relayed (and replies settled) before this were deleted.")
    inbound_deleted = models.PositiveIntegerField(default=0)
    outbound_deleted = models.PositiveIntegerField(default=0)
    waiting_deleted = models.PositiveIntegerField(default=0)
