"""Staff view of the event inbox. Never shows a secret."""

from django.contrib import admin, messages
from django.utils.translation import gettext_lazy as _

from . import queue
from .models import InboxItem, PruneRun


@admin.register(InboxItem)
class InboxItemAdmin(admin.ModelAdmin):
    """The event inbox: what arrived, its state and attempts, why it failed; replay dead letters.

    `auth` (tokens, application_token) is never shown; the idempotency key is left out too."""

    list_display = (
        "id",
        "received_at",
        "member_id",
        "portal",
        "event",
        "source",
        "lane",
        "state",
        "attempts",
        "next_attempt_at",
        "short_error",
    )
    list_filter = ("state", "lane", "event", "source")
    search_fields = ("member_id", "portal__domain")
    list_select_related = ("portal",)
    show_full_result_count = False
    list_per_page = 50
    actions = ["replay"]
    fields = (
        "portal",
        "member_id",
        "event",
        "source",
        "lane",
        "event_handler_id",
        "ts",
        "data",
        "state",
        "attempts",
        "received_at",
        "next_attempt_at",
        "enqueued_at",
        "lease_until",
        "finished_at",
        "outcome",
        "last_error",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).defer("sealed_auth")

    def has_add_permission(self, request):
        return False  # events come from Bitrix24

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description=_("last error"))
    def short_error(self, obj):
        return (obj.last_error[:80] + "...") if len(obj.last_error) > 80 else obj.last_error

    def has_replay_permission(self, request):
        return request.user.has_perm("inbox.change_inboxitem")

    @admin.action(description=_("Replay (failed or rejected events)"), permissions=["replay"])
    def replay(self, request, queryset):
        count = queue.replay(queryset)
        self.message_user(
            request, _("Sent again: %(count)d") % {"count": count}, messages.SUCCESS if count else messages.WARNING
        )


@admin.register(PruneRun)
class PruneRunAdmin(admin.ModelAdmin):
    """What the retention deleted from the inbox, when and why (read-only)."""

    list_display = ("started_at", "done_deleted", "rejected_deleted", "failed_deleted", "finished_before", "reason")
    fields = (
        "started_at",
        "finished_at",
        "reason",
        "finished_before",
        "failed_before",
        "done_deleted",
        "rejected_deleted",
        "failed_deleted",
    )
    readonly_fields = fields
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
