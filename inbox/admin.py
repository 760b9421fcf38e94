"""Staff view of the event inbox. Never shows a secret."""

from django.contrib import admin, messages
from django.utils.translation import gettext_lazy as _

from . import queue
from .models import InboxItem, PruneRun


@admin.register(InboxItem)
class InboxItemAdmin(admin.ModelAdmin):
    """The event inbox: what arrived, its state and attempts, why it failed; replay dead letters.

    `auth` (tokens, application_token) is never shown; the idempotency key is left out too."""

    # Readable at 1,280 px beside the navigation and the filters: the state second, one column for the portal
    # (its address, or the member_id no stored portal has); source, attempts and next attempt are on the item.
    list_display = ("id", "state", "event", "sender", "received_at", "short_error")
    list_filter = ("state", "lane", "event", "source")
    search_fields = ("member_id", "portal__domain")
    list_select_related = ("portal",)
    show_full_result_count = False
    list_per_page = 50
    actions = ["replay"]

    class Media:
        css = {"all": ("inbox/admin.css",)}  # long error words break inside their cell

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

    def changelist_view(self, request, extra_context=None):
        # The widest list of the admin: its columns take the navigation sidebar's room (the breadcrumbs stay).
        return super().changelist_view(request, {"is_nav_sidebar_enabled": False, **(extra_context or {})})

    @admin.display(description=_("portal"), ordering="member_id")
    def sender(self, obj):
        return obj.portal.domain if obj.portal else obj.member_id

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
