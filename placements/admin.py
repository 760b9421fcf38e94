from django.contrib import admin

from .models import WidgetSettings


@admin.register(WidgetSettings)
class WidgetSettingsAdmin(admin.ModelAdmin):
    list_display = ("portal", "enabled", "open_line_id", "updated_at", "updated_by")
    list_filter = ("enabled",)
    search_fields = ("portal__domain", "portal__member_id")
    list_select_related = ("portal",)
    readonly_fields = ("portal", "updated_at", "updated_by")

    def has_add_permission(self, request):
        return False  # settings are saved from the widget
