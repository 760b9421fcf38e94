"""Staff view of every install: status, history, actions. Never shows a secret."""

from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from bitrix24 import oauth

from . import install, tokens
from .models import Portal, PortalEvent, Rejection

HISTORY_ROWS = 100


@admin.register(Portal)
class PortalAdmin(admin.ModelAdmin):
    list_display = ("domain", "member_id", "status", "app_status", "installed_at", "last_seen_at", "access_expires_at")
    list_filter = ("status", "app_status", "offline_events")
    search_fields = ("domain", "member_id")
    show_full_result_count = False  # one COUNT per page, however many portals
    list_per_page = 50
    actions = ["refresh_tokens_now", "bind_placements_again"]
    fieldsets = (
        (None, {"fields": ("member_id", "domain", "client_endpoint", "server_endpoint", "status", "last_error")}),
        (
            _("App on the portal"),
            {
                "fields": (
                    "app_status",
                    "payment_expired",
                    "license",
                    "rest_plan",
                    "offline_events_state",
                    "app_version",
                    "language",
                    "scope",
                    "installed_by",
                )
            },
        ),
        (
            _("Tokens"),
            {
                "fields": (
                    "token_state",
                    "refresh_renewed_at",
                    "refresh_lease_until",
                    "bound_at",
                    "application_token_state",
                )
            },
        ),
        (_("Dates"), {"fields": ("created_at", "installed_at", "uninstalled_at", "last_seen_at")}),
        (_("History"), {"fields": ("history", "refusals")}),
    )
    readonly_fields = (
        "member_id",
        "domain",
        "client_endpoint",
        "server_endpoint",
        "status",
        "last_error",
        "app_status",
        "payment_expired",
        "license",
        "rest_plan",
        "offline_events_state",
        "app_version",
        "language",
        "scope",
        "installed_by",
        "token_state",
        "refresh_renewed_at",
        "refresh_lease_until",
        "bound_at",
        "application_token_state",
        "created_at",
        "installed_at",
        "uninstalled_at",
        "last_seen_at",
        "history",
        "refusals",
    )

    def changelist_view(self, request, extra_context=None):
        self._warn_about_credentials(request)
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        self._warn_about_credentials(request)
        return super().change_view(request, object_id, form_url, extra_context)

    def _warn_about_credentials(self, request):
        rejected = oauth.client_rejected()
        if rejected:
            self.message_user(
                request,
                _(
                    "The Bitrix24 OAuth server refused this deployment's credentials "
                    "(%(what)s): check B24_CLIENT_ID and B24_CLIENT_SECRET. No portal is "
                    "blocked for it."
                )
                % {"what": rejected},
                messages.ERROR,
            )

    def get_queryset(self, request):
        # The list never shows a secret: leave them unloaded (and undecrypted). The change page's
        # token state loads them when it needs to.
        return super().get_queryset(request).defer("access_token", "refresh_token", "application_token")

    def has_add_permission(self, request):
        return False  # portals come from installs

    def has_delete_permission(self, request, obj=None):
        return False  # uninstall keeps the row and its history

    @admin.display(description=_("access token"))
    def token_state(self, obj):
        if not obj.access_token:
            return _("not set")
        expires = obj.access_expires_at.strftime("%Y-%m-%d %H:%M:%S UTC") if obj.access_expires_at else "?"
        state = _("expired") if obj.access_token_expired(leeway=0) else _("valid")
        refresh = _("refresh token set") if obj.refresh_token else _("no refresh token")
        return format_html("{} ({} {}), {}", _("set"), state, expires, refresh)

    @admin.display(description=_("offline events"))
    def offline_events_state(self, obj):
        """Whether what Bitrix24 could not deliver (our server down or failing) still reaches the app: it is kept
        in the portal's offline queue, which the app pulls (inbox/offline.py), only when they are bound."""
        state = obj.offline_events
        if state == Portal.OfflineEvents.BOUND:
            text = _("bound: an event Bitrix24 cannot deliver is kept in the portal's queue and pulled")
        elif state == Portal.OfflineEvents.UNAVAILABLE:
            text = _(
                "not available on this portal's plan (feature.get rest_offline_extended): an event Bitrix24 "
                "cannot deliver while the app is unreachable is lost"
            )
        elif state == Portal.OfflineEvents.FAILED:
            text = _("refused by Bitrix24 (see the history); bound again at the next update or re-bind")
        else:
            text = _("not bound yet: bound at the next install, update or re-bind")
        return format_html('<span id="offline-events" data-state="{}">{}</span>', state or "unknown", text)

    @admin.display(description=_("application token"))
    def application_token_state(self, obj):
        return _("set") if obj.application_token else _("not set")

    @admin.display(description=_("history"))
    def history(self, obj):
        rows = obj.events.all()[:HISTORY_ROWS]
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    e.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                    e.get_kind_display(),
                    ", ".join(f"{k}={v}" for k, v in sorted(e.detail.items())),
                )
                for e in rows
            ),
        )
        return format_html(
            '<table id="portal-history"><thead><tr><th>{}</th><th>{}</th><th>{}</th></tr></thead>'
            "<tbody>{}</tbody></table>",
            _("when"),
            _("what"),
            _("detail"),
            body,
        )

    @admin.display(description=_("refused requests (unverified senders, per hour)"))
    def refusals(self, obj):
        rows = obj.rejections.all()[:HISTORY_ROWS]
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (r.window_start.strftime("%Y-%m-%d %H:00"), r.source, r.reason, r.count, r.last_at.strftime("%H:%M:%S"))
                for r in rows
            ),
        )
        return format_html(
            '<table id="portal-refusals"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th>'
            "<th>{}</th></tr></thead><tbody>{}</tbody></table>",
            _("hour"),
            _("where"),
            _("reason"),
            _("count"),
            _("last"),
            body,
        )

    @admin.action(description=_("Refresh tokens now"))
    def refresh_tokens_now(self, request, queryset):
        done = failed = 0
        for portal in queryset:
            try:
                tokens.refresh_portal(portal, force=True, allow_blocked=True)
                done += 1
            except oauth.OAuthError as exc:
                failed += 1
                self.message_user(request, f"{portal.domain}: {exc.code}", messages.ERROR)
        self.message_user(
            request,
            _("Tokens refreshed: %(done)d, failed: %(failed)d") % {"done": done, "failed": failed},
            messages.SUCCESS if not failed else messages.WARNING,
        )

    @admin.action(description=_("Bind placements again"))
    def bind_placements_again(self, request, queryset):
        done = failed = 0
        for portal in queryset:
            if not portal.is_serving:
                failed += 1
                self.message_user(request, f"{portal.domain}: {portal.status}", messages.ERROR)
                continue
            try:
                install.bind(portal)
                done += 1
            except install.InstallUnavailable as exc:
                failed += 1
                self.message_user(request, f"{portal.domain}: {exc.code}", messages.ERROR)
        self.message_user(
            request,
            _("Bound: %(done)d, failed: %(failed)d") % {"done": done, "failed": failed},
            messages.SUCCESS if not failed else messages.WARNING,
        )


@admin.register(Rejection)
class RejectionAdmin(admin.ModelAdmin):
    """Refused requests from unverified senders, counted: a flood shows as one growing row, not thousands."""

    list_display = ("window_start", "portal", "source", "reason", "count", "last_at")
    list_filter = ("source",)
    search_fields = ("portal__domain", "portal__member_id", "reason")
    list_select_related = ("portal",)
    show_full_result_count = False
    readonly_fields = ("portal", "source", "reason", "window_start", "count", "last_at")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(PortalEvent)
class PortalEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "portal", "kind")
    list_filter = ("kind",)
    search_fields = ("portal__domain", "portal__member_id")
    list_select_related = ("portal",)
    show_full_result_count = False
    readonly_fields = ("portal", "kind", "created_at", "detail")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
