"""Staff view of channels and relayed messages: state, counts, failures with replay. Never a secret."""

from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from . import tasks
from .models import Channel, Delivery, InboundMessage, MessagePruneRun, OutboundMessage, WaitingReply


def _count(model, states=None):
    """The number of the outer channel's rows of `model` (in `states`), as a correlated subquery."""
    rows = model.objects.filter(channel=OuterRef("pk"))
    if states:
        rows = rows.filter(state__in=states)
    return Coalesce(Subquery(rows.order_by().values("channel").annotate(n=Count("pk")).values("n")[:1]), 0)


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    list_display = (
        "portal",
        "line_id",
        "connector_id",
        "state",
        "inbound_count",
        "outbound_count",
        "failures",
        "waiting_count",
        "last_activity_at",
    )
    list_filter = ("state", "connector_id")
    search_fields = ("portal__domain", "portal__member_id", "line_id", "public_id")
    list_select_related = ("portal",)
    show_full_result_count = False
    fields = (
        "portal",
        "connector_id",
        "line_id",
        "public_id",
        "state",
        "name",
        "webhook_url",
        "credentials",
        "secret_rotated_at",
        "connected_by",
        "connected_at",
        "disconnected_at",
        "last_activity_at",
        "last_error",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        # The secret is never loaded (nor decrypted) here. Each count is its own subquery per channel (an
        # index range of that channel's rows): joining both message tables would multiply their rows.
        failed = (Delivery.FAILED, Delivery.DEAD)
        return (
            super()
            .get_queryset(request)
            .defer("secret")
            .annotate(
                _inbound=_count(InboundMessage),
                _outbound=_count(OutboundMessage),
                _failed_in=_count(InboundMessage, failed),
                _failed_out=_count(OutboundMessage, failed),
                _waiting=_count(WaitingReply, [WaitingReply.State.WAITING]),
            )
        )

    def has_add_permission(self, request):
        return False  # channels are connected from the portal

    def has_delete_permission(self, request, obj=None):
        return False  # history stays

    @admin.display(description=_("credentials"))
    def credentials(self, obj):
        return _("issued") if obj.secret_rotated_at and obj.state == Channel.State.CONNECTED else _("none")

    @admin.display(description=_("in"), ordering="_inbound")
    def inbound_count(self, obj):
        return obj._inbound

    @admin.display(description=_("out"), ordering="_outbound")
    def outbound_count(self, obj):
        return obj._outbound

    @admin.display(description=_("failures"))
    def failures(self, obj):
        return obj._failed_in + obj._failed_out

    @admin.display(description=_("replies waiting for a reader"), ordering="_waiting")
    def waiting_count(self, obj):
        return obj._waiting


class _ReadOnly(admin.ModelAdmin):
    """Rows the relay writes: staff read them (and act through the actions), never add, edit or delete them."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class _MessageAdmin(_ReadOnly):
    list_filter = ("state", "action")
    list_select_related = ("channel", "channel__portal")
    show_full_result_count = False
    actions = ["replay"]

    def has_replay_permission(self, request):
        # Replaying changes rows and sends again: the change permission, as the inbox admin's replay asks.
        opts = self.model._meta
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")

    @admin.action(description=_("Replay (deliver again now)"), permissions=["replay"])
    def replay(self, request, queryset):
        count = queryset.filter(state__in=[Delivery.FAILED, Delivery.DEAD]).update(
            state=Delivery.PENDING, next_attempt_at=timezone.now(), attempts=0, last_error=""
        )
        for channel_id in set(queryset.values_list("channel_id", flat=True)):
            tasks.enqueue_channel(self.model, channel_id)
        self.message_user(request, _("%(count)d message(s) queued again.") % {"count": count}, messages.SUCCESS)


@admin.register(InboundMessage)
class InboundMessageAdmin(_MessageAdmin):
    list_display = (
        "channel",
        "action",
        "external_chat_id",
        "external_message_id",
        "state",
        "attempts",
        "received_at",
        "sent_at",
        "last_error",
    )
    search_fields = ("external_chat_id", "external_message_id", "im_chat_id")


@admin.register(OutboundMessage)
class OutboundMessageAdmin(_MessageAdmin):
    list_display = (
        "channel",
        "action",
        "im_chat_id",
        "im_message_id",
        "state",
        "attempts",
        "created_at",
        "sent_at",
        "last_error",
    )
    search_fields = ("im_chat_id", "im_message_id", "external_chat_id")


@admin.register(WaitingReply)
class WaitingReplyAdmin(_ReadOnly):
    """Operator messages nobody the app can ask may read yet: they wait (openlines.reconcile re-checks them)."""

    list_display = (
        "channel",
        "action",
        "external_chat_id",
        "im_message_id",
        "state",
        "reason",
        "attempts",
        "created_at",
        "next_check_at",
        "settled_at",
    )
    list_filter = ("state", "action")
    list_select_related = ("channel", "channel__portal")
    search_fields = ("external_chat_id", "im_message_id", "im_chat_id")
    show_full_result_count = False


@admin.register(MessagePruneRun)
class MessagePruneRunAdmin(_ReadOnly):
    """What the relay's retention deleted, when and why (read-only)."""

    list_display = ("started_at", "inbound_deleted", "outbound_deleted", "waiting_deleted", "before", "reason")
    fields = ("started_at", "finished_at", "reason", "before", "inbound_deleted", "outbound_deleted", "waiting_deleted")
    readonly_fields = fields
    show_full_result_count = False
