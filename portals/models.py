"""A portal that installed the app (one row per member_id) and its audit trail."""
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .crypto import EncryptedTextField


class AppStatus(models.TextChoices):
    """The app's licence type on the portal, as Bitrix24 reports it."""

    FREE = "F", _("free")
    DEMO = "D", _("demo")
    TRIAL = "T", _("trial")
    PAID = "P", _("paid")
    LOCAL = "L", _("local")
    SUBSCRIPTION = "S", _("subscription")


class Portal(models.Model):
    class Status(models.TextChoices):
        NEW = "new", _("new")
        ACTIVE = "active", _("active")
        BLOCKED = "blocked", _("blocked")
        UNINSTALLED = "uninstalled", _("uninstalled")

    member_id = models.CharField(max_length=64, unique=True)
    domain = models.CharField(max_length=255, db_index=True, help_text="Current address, as the OAuth server reports it.")
    client_endpoint = models.CharField(max_length=255, help_text="The portal's REST base, from the OAuth server.")
    server_endpoint = models.CharField(max_length=255, blank=True, help_text="The OAuth server's REST base.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NEW, db_index=True)
    app_status = models.CharField(max_length=1, choices=AppStatus.choices, blank=True, db_index=True)
    payment_expired = models.BooleanField(null=True, blank=True)
    license = models.CharField(max_length=64, blank=True)
    language = models.CharField(max_length=16, blank=True)
    scope = models.TextField(blank=True)
    app_version = models.CharField(max_length=32, blank=True)
    installed_by = models.CharField(max_length=32, blank=True, help_text="Bitrix24 user id of the installer.")

    access_token = EncryptedTextField(blank=True)
    refresh_token = EncryptedTextField(blank=True)
    access_expires_at = models.DateTimeField(null=True, blank=True)
    refresh_renewed_at = models.DateTimeField(null=True, blank=True)
    application_token = EncryptedTextField(blank=True)

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

    @property
    def is_serving(self) -> bool:
        return self.status in (self.Status.NEW, self.Status.ACTIVE)

    @property
    def has_tokens(self) -> bool:
        return bool(self.access_token and self.refresh_token)

    def access_token_expired(self, leeway: int = 30) -> bool:
        if not self.access_expires_at:
            return True
        return self.access_expires_at <= timezone.now() + timezone.timedelta(seconds=leeway)


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

    portal = models.ForeignKey(Portal, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["portal", "-created_at"])]

    def __str__(self):
        return f"{self.get_kind_display()} @ {self.created_at:%Y-%m-%d %H:%M:%S}"
