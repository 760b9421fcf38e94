"""Per-portal widget settings."""
from django.db import models
from django.utils import timezone

from portals.models import Portal


class WidgetSettings(models.Model):
    portal = models.OneToOneField(Portal, on_delete=models.CASCADE, related_name="widget_settings")
    enabled = models.BooleanField(default=False)
    open_line_id = models.CharField(max_length=16, blank=True, help_text="ID of the Open Line the app works with.")
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.CharField(max_length=32, blank=True, help_text="Bitrix24 user id of the last editor.")

    class Meta:
        verbose_name = "widget settings"
        verbose_name_plural = "widget settings"

    def __str__(self):
        return f"settings of {self.portal}"
