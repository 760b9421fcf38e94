"""SETTING_CONNECTOR (the connector's settings page in the Contact Center), its actions, the channel API.

The settings page opens through placements' one entry point (placements/registry.py names this view);
the page's actions come back here with the frame's signed widget token, and each change is believed only
once Bitrix24 confirms, now, that the user administers the portal (placements.auth.recheck_admin).
"""
import logging
import re

from django.http import JsonResponse
from django.shortcuts import render
from django.utils import translation
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from bitrix24.addresses import portal_origin
from bitrix24.frames import BadFramePost, frame_origin, framed_by
from bitrix24.responses import frame_error, json_error, json_refusal
from placements import auth, widget_token
from placements import request as placement_request
from placements.pages import refusal_text, verify_or_refuse
from portals.models import Portal

from . import inbound, lifecycle, outbound, registry, tasks
from .models import Channel

log = logging.getLogger(__name__)
_LINE = re.compile(r"^[0-9]{1,10}$")


def setting_connector(request, parsed):
    """Bitrix24 opens this for one connector and line: the connect form, or the connected channel's settings."""
    post = parsed.post
    options = post.placement_options
    connector = registry.get(options.get("CONNECTOR", ""))
    line = str(options.get("LINE", ""))
    with translation.override(post.language):
        if connector is None or not _LINE.match(line):
            return frame_error(request, status=400, title=_("Bad request"),
                               message=_("Bitrix24 opened the settings of an unknown connector or line."),
                               origin=frame_origin(post.domain, post.protocol))
        portal, verdict, refusal = verify_or_refuse(request, post)
        if refusal is not None:
            return refusal
        channel = Channel.objects.defer("secret").filter(portal=portal, connector_id=connector.id,
                                                         line_id=line).first()
        response = render(request, "openlines/setting_connector.html", {
            "portal": portal, "verdict": verdict, "connector": connector, "line": line, "channel": channel,
            "inbound_url": lifecycle.inbound_url(channel) if channel else "",
            "state": {k: options.get(k) is True for k in ("ACTIVE_STATUS", "CONNECTION_STATUS", "REGISTER_STATUS",
                                                          "ERROR_STATUS")},
            "widget_token": widget_token.issue(portal, verdict), "language": post.language,
        })
    return framed_by(response, portal_origin(portal))


_error = json_error


def _frame_portal(form):
    """(portal, token) named by the page's signed widget token, or (None, a JsonResponse refusal)."""
    try:
        token = widget_token.read(form.get("widget_token", ""))
    except widget_token.BadWidgetToken as exc:
        message = {
            "missing": _("The request carries no widget token."),
            "expired": _("The widget was open too long. Close it and open it again."),
        }.get(exc.reason, _("The widget token is not valid."))
        return None, _error(f"token_{exc.reason}", message, 403)
    portal = Portal.objects.filter(pk=token.portal_id, member_id=token.member_id).first()
    if portal is not None and portal.status == Portal.Status.BLOCKED:
        return None, _error("blocked", refusal_text("blocked")[1], 403)
    if portal is None or not portal.is_serving or widget_token.install_epoch(portal) != token.installed:
        # Uninstalled, or installed again since the page was opened: that token is void.
        return None, _error("not_installed", _("The app is not installed on this portal."), 403)
    return (portal, token), None


def _administrator(form):
    """(portal, user_id) of a genuine administrator's request from the frame, or a JsonResponse refusal."""
    found, refusal = _frame_portal(form)
    if refusal is not None:
        return None, refusal
    portal, token = found
    if not token.is_admin:
        return None, _error("not_admin", _("Only portal administrators may change the channel."), 403)
    try:
        # A change is not believed from the verdict cached at open: Bitrix24 is asked again, now.
        still_admin = auth.recheck_admin(portal, form.get("AUTH_ID", ""), token.user_id)
    except auth.Refused as exc:
        if exc.reason in ("busy", "bitrix24_unreachable", "bitrix24_error"):
            return None, _error(exc.reason, _("Bitrix24 did not answer. Please try again."), exc.status,
                                exc.retry_after)
        return None, _error("reopen", _("Your authorization could not be confirmed. Close the page and open it "
                                        "again."), 403)
    if not still_admin:
        return None, _error("not_admin", _("Only portal administrators may change the channel."), 403)
    return (portal, token.user_id), None


def _channel_json(channel: Channel) -> dict:
    return {"id": str(channel.public_id), "state": channel.state, "line": channel.line_id, "name": channel.name,
            "webhook_url": channel.webhook_url, "endpoint": lifecycle.inbound_url(channel)}


def _list(form, connector) -> JsonResponse:
    """The channel's state per line, for the Contact Center overview: read-only, any user of the portal."""
    found, refusal = _frame_portal(form)
    if refusal is not None:
        return refusal
    portal, _token = found
    try:
        lines = lifecycle.open_lines(portal)
    except lifecycle.ConnectFailed as exc:
        if exc.retry_after:  # the portal's REST budget is spent for now
            return _error("busy", _("Too many requests for this portal are being checked right now. Please try "
                                    "again in a moment."), 429, exc.retry_after)
        return _error("bitrix24_unavailable", _("The Open Lines of this portal could not be loaded."), 502
                      if exc.code not in ("insufficient_scope", "ACCESS_DENIED") else 403)
    channels = Channel.objects.defer("secret").filter(portal=portal, connector_id=connector.id)
    return JsonResponse({"connector": connector.id, "lines": lines, "channels": {
        c.line_id: {"state": c.state, "last_activity_at": c.last_activity_at.isoformat(timespec="seconds")
                    if c.last_activity_at else None, "name": c.name,
                    # Whether replies have somewhere to go; the address itself is for administrators only.
                    "has_webhook": bool(c.webhook_url)} for c in channels}})


@sensitive_post_parameters("widget_token", "AUTH_ID")
@csrf_exempt
@never_cache
@require_POST
def connector_action_view(request):
    """connect / disconnect / rotate / save, from the SETTING_CONNECTOR page or the Contact Center overview."""
    try:
        form = placement_request.form(request)
    except BadFramePost:
        return _error("bad_request", "malformed form", 400)
    with translation.override(placement_request.language(request)):
        action = form.get("action", "")
        # The overview's first list names no connector: the answer tells the page which one it shows.
        connector_id = form.get("connector", "") or (registry.HTTP.id if action == "list" else "")
        connector = registry.get(connector_id)
        if action == "list" and connector is not None:
            return _list(form, connector)
        line = form.get("line", "")
        if action not in ("connect", "disconnect", "rotate", "save") or connector is None or not _LINE.match(line):
            return _error("bad_request", _("The request is malformed."), 400)
        webhook_url = form.get("webhook_url", "").strip()
        if webhook_url:
            try:
                webhook_url = outbound.check_webhook_url(webhook_url)
            except outbound.BadWebhookUrl as exc:
                return _error("bad_webhook_url", _("The webhook address is not allowed: %(why)s") % {"why": exc}, 400)
        who, refusal = _administrator(form)
        if refusal is not None:
            return refusal
        portal, user_id = who
        channel = Channel.objects.filter(portal=portal, connector_id=connector.id, line_id=line).first()
        try:
            if action == "connect":
                channel, secret = lifecycle.connect(portal, connector, line, user_id=user_id,
                                                    name=form.get("name", "").strip(), webhook_url=webhook_url)
                return JsonResponse({"result": "connected", "channel": _channel_json(channel), "secret": secret,
                                     "message": _("Connected. Copy the secret now: it is shown only once.")})
            if channel is None or not channel.is_connected:
                return _error("not_connected", _("This channel is not connected."), 409)
            if action == "disconnect":
                refused = lifecycle.disconnect(portal, channel, user_id=user_id)
                message = _("Disconnected. The channel's credentials no longer work.")
                if refused:
                    message += " " + _("Bitrix24 refused to deactivate the connector on the line (%(code)s); it "
                                       "may still show there, but relays nothing.") % {"code": refused}
                return JsonResponse({"result": "disconnected", "channel": _channel_json(channel),
                                     "bitrix24_error": refused, "message": message})
            if action == "rotate":
                secret = lifecycle.rotate_secret(channel)
                return JsonResponse({"result": "rotated", "channel": _channel_json(channel), "secret": secret,
                                     "message": _("New secret made. The old one no longer works.")})
            Channel.objects.filter(pk=channel.pk).update(webhook_url=webhook_url)
            channel.webhook_url = webhook_url
            if webhook_url:
                tasks.release_parked(channel.pk)  # replies that waited for an address go now
            return JsonResponse({"result": "saved", "channel": _channel_json(channel), "message": _("Saved.")})
        except lifecycle.ConnectFailed as exc:
            log.info("connector action refused by Bitrix24", extra={"member_id": portal.member_id, "code": exc.code})
            if exc.retry_after:
                return _error("busy", _("Bitrix24 did not answer. Please try again."), 429, exc.retry_after)
            return _error("bitrix24_refused", _("Bitrix24 refused: %(code)s") % {"code": exc.code}, 502)


def _method_not_allowed(allowed: str) -> JsonResponse:
    response = _error("method_not_allowed", f"use {allowed}", 405)
    response["Allow"] = allowed
    return response


@csrf_exempt
def channel_messages_view(request, channel_id):
    """The channel API in: checked, stored, 202 at once; delivery to Bitrix24 runs in the background."""
    if request.method != "POST":
        return _method_not_allowed("POST")
    try:
        channel = inbound.find_channel(channel_id)
        body = inbound.read_body(request)
        inbound.check_signature(channel, request, body)
        inbound.take_quota(channel)
        action, element = inbound.parse(body)
        row = inbound.accept(channel, action, element)
    except inbound.Refused as exc:
        return json_refusal(exc, description=exc.description)
    tasks.after_commit(tasks.deliver_inbound, channel.pk)
    return JsonResponse({"result": "accepted", "id": row.pk}, status=202)


def channel_view(request, channel_id):
    """The channel's link in Bitrix24 (connector.data.set URL): what it is and where messages go; no secret."""
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed("GET")
    channel = Channel.objects.defer("secret").filter(public_id=channel_id).first()
    if channel is None:
        return _error("unknown_channel", "no such channel", 404)
    return JsonResponse({"channel": str(channel.public_id), "connector": channel.connector_id,
                         "state": channel.state, "messages": lifecycle.inbound_url(channel)})


@csrf_exempt
def unknown_channel_view(request, rest):
    """Any other address under /channels/: the channel API's own JSON error, not an HTML page."""
    return _error("unknown_channel", "no such channel (the address is /channels/<channel id>/messages)", 404)
