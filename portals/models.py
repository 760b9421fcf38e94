"""A portal that installed the app (one row per member_id) and its audit trail."""

import hashlib
import hmac
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from vault.fields import EncryptedTextField


def token_digest(value: str) -> str:
    """HMAC-SHA256 of a secret under SECRET_KEY ('' for ''): comparable, not reversible."""
    if not value:
        return ""
    return hmac.new(settings.SECRET_KEY.encode(), value.encode(), hashlib.sha256).hexdigest()


class AppStatus(models.TextChoices):
    """The app's licence type on the portal, as Bitrix24 reports it."""

    FREE = "F", _("free")
    DEMO = "D", _("demo")
    TRIAL = "T", _("trial")
    PAID = "P", _("paid")
    LOCAL = "L", _("local")
    SUBSCRIPTION = "S", _("subscription")


class Portal(models.Model):
    VAULT_LABEL_FIELDS = ("domain", "member_id")  # how key rotation names a row it cannot decrypt

    class Status(models.TextChoices):
        NEW = "new", _("new")
        ACTIVE = "active", _("active")
        BLOCKED = "blocked", _("blocked")
        UNINSTALLED = "uninstalled", _("uninstalled")

    # The statuses in which the app serves the portal (its channels carry messages, its events are applied).
    SERVING = (Status.NEW, Status.ACTIVE)

    member_id = models.CharField(max_length=64, unique=True)
    domain = models.CharField(
        max_length=255, db_index=True, help_text="Current address, as the OAuth server reports it."
    )
    client_endpoint = models.CharField(max_length=255, help_text="The portal's REST base, from the OAuth server.")
    server_endpoint = models.CharField(max_length=255, blank=True, help_text="The OAuth server's REST base.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NEW, db_index=True)
    app_status = models.CharField(max_length=1, choices=AppStatus.choices, blank=True, db_index=True)
    payment_expired = models.BooleanField(null=True, blank=True)
    license = models.CharField(max_length=64, blank=True)
    # The request-rate bucket Bitrix24 gives the portal, from its LICENSE (portals.limits.plan_of).
    rest_plan = models.CharField(
        max_length=16,
        choices=[("standard", _("standard (50, then 2/s)")), ("enterprise", _("Enterprise (250, then 5/s)"))],
        default="standard",
    )
    language = models.CharField(max_length=16, blank=True)
    scope = models.TextField(blank=True)
    app_version = models.CharField(max_length=32, blank=True)
    installed_by = models.CharField(max_length=32, blank=True, help_text="Bitrix24 user id of the installer.")

    access_token = EncryptedTextField(blank=True)
    refresh_token = EncryptedTextField(blank=True)
    access_expires_at = models.DateTimeField(null=True, blank=True)
    refresh_renewed_at = models.DateTimeField(null=True, blank=True)
    application_token = EncryptedTextField(blank=True)
    # A keyed digest of application_token (HMAC with SECRET_KEY), kept beside it so a placement POST's
    # APPLICATION_TOKEN is checked from the hot path's one query, without loading the secret.
    application_token_digest = models.CharField(max_length=64, blank=True, editable=False)
    # The single-flight refresh's lease (tokens.refresh_portal): who refreshes, and until when at most.
    refresh_lease_owner = models.CharField(max_length=32, blank=True, editable=False)
    refresh_lease_until = models.DateTimeField(null=True, blank=True, editable=False)
    # When the placements and events were last bound: an install is complete only once they are.
    bound_at = models.DateTimeField(null=True, blank=True)
    # Not a field: set (True) only on the row tokens.refresh_portal returns when that call did the refresh.
    refreshed_now: bool

    class OfflineEvents(models.TextChoices):
        """Whether Bitrix24 keeps, for this portal, what it could not deliver (inbox/offline.py)."""

        UNKNOWN = "", _("not bound yet")
        BOUND = "bound", _("bound")
        UNAVAILABLE = "unavailable", _("not on the portal's plan")
        FAILED = "failed", _("refused by Bitrix24")

    # Offline events (api-reference/events/offline-events.md): bound beside the online ones at every bind, when
    # the plan has them (feature.get rest_offline_extended); the pull reads only portals where they are bound.
    offline_events = models.CharField(max_length=16, choices=OfflineEvents.choices, blank=True, default="")

    created_at = models.DateTimeField(default=timezone.now)
    installed_at = models.DateTimeField(null=True, blank=True)
    uninstalled_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-installed_at", "-id"]
        # The admin's list is sorted this way: deep pages read the index instead of sorting the table.
        indexes = [models.Index(fields=["-installed_at", "-id"], name="portal_installed_order")]

    def __str__(self):
        return self.domain or self.member_id

    def __repr__(self):
        # Never include secrets.
        return f"<Portal {self.member_id} {self.domain} {self.status}>"

    def save(self, *args, **kwargs):
        # Keep the digest in step with the token whenever the token was loaded or set.
        if "application_token" in self.__dict__:
            self.application_token_digest = token_digest(self.application_token)
            fields = kwargs.get("update_fields")
            if fields is not None and "application_token" in fields:
                kwargs["update_fields"] = {*fields, "application_token_digest"}
        super().save(*args, **kwargs)

    def application_token_is(self, presented: str) -> bool:
        """Constant-time check of a presented application_token against the stored one."""
        if not self.application_token_digest or not presented:
            return False
        return hmac.compare_digest(self.application_token_digest, token_digest(presented))

    @property
    def is_serving(self) -> bool:
        return self.status in self.SERVING

    @property
    def has_tokens(self) -> bool:
        return bool(self.access_token and self.refresh_token)

    def access_token_expired(self, leeway: int = 30) -> bool:
        if not self.access_expires_at:
            return True
        return self.access_expires_at <= timezone.now() + timedelta(seconds=leeway)


class PortalEvent(models.Model):
    """One line of a portal's history. `detail` is non-secret by construction (see lifecycle.record)."""

    class Kind(models.TextChoices):
        INSTALLED = "installed", _("installed")
        REINSTALLED = "reinstalled", _("reinstalled")
        INSTALL_FAILED = "install_failed", _("install failed")
        APPLICATION_TOKEN_SAVED = "application_token_saved", _("application token saved")
        ACTIVATED = "activated", _("activated")
        PLACEMENT_BOUND = "placement_bound", _("placements bound")
        EVENTS_BOUND = "events_bound", _("events bound")
        TOKEN_REFRESHED = "token_refreshed", _("token refreshed")
        REFRESH_FAILED = "refresh_failed", _("refresh failed")
        BLOCKED = "blocked", _("blocked")
        UNBLOCKED = "unblocked", _("unblocked")
        UNINSTALLED = "uninstalled", _("uninstalled")
        DATA_CLEANED = "data_cleaned", _("data cleaned")
        UPDATED = "updated", _("app updated")
        DOMAIN_CHANGED = "domain_changed", _("domain changed")
        APP_STATUS_CHANGED = "app_status_changed", _("app status changed")
        EVENT_REJECTED = "event_rejected", _("event rejected")
        RECOVERED = "recovered", _("recovered")
        OFFLINE_EVENTS = "offline_events", _("offline events")

    portal = models.ForeignKey(Portal, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["portal", "-created_at"])]

    def __str__(self):
        return f"{self.get_kind_display()} @ {self.created_at:%Y-%m-%d %H:%M:%S}"


class Rejection(models.Model):
    """Refused requests from unverified senders, counted per portal, source, reason and hour.

    A stranger can send any number of forged installs or events; each adds one to a counter here
    instead of a history row, so the genuine history stays readable and the table stays small.
    """

    portal = models.ForeignKey(Portal, on_delete=models.CASCADE, related_name="rejections")
    source = models.CharField(max_length=32, help_text="install, ONAPPINSTALL, ONAPPUNINSTALL, widget, ...")
    reason = models.CharField(max_length=128)
    window_start = models.DateTimeField(help_text="Start of the hour counted.")
    count = models.PositiveIntegerField(default=0)
    last_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-window_start", "-last_at"]
        constraints = [
            models.UniqueConstraint(fields=["portal", "source", "reason", "window_start"], name="rejection_window"),
        ]

    def __str__(self):
        return f"{self.source}: {self.reason} x{self.count}"
