"""SETTING_CONNECTOR (the connector's settings page in the Contact Center), its actions, the channel API.

The settings page opens through placements' one entry point (placements/registry.py names this view);
the page's actions come back here with the frame's signed widget token, and each change is believed only
once Bitrix24 confirms, now, that the user administers the portal (placements.auth.recheck_admin).
"""

import logging
import re

from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import translation
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from bitrix24.addresses import portal_origin
from bitrix24.errors import Bitrix24Error
from bitrix24.frames import BadFramePost, frame_origin, framed_by
from bitrix24.responses import frame_error, json_error, json_refusal
from inbox import handoff
from placements import auth, widget_token
from placements import request as placement_request
from placements.pages import refusal_text, verify_or_refuse
from portals.models import Portal

from . import channels, inbound, lifecycle, registry, tasks, waiting
from .forms import ConnectorActionForm
from .models import Channel

log = logging.getLogger(__name__)
_LINE = re.compile(r"^[0-9]{1,10}$")  # SETTING_CONNECTOR's PLACEMENT_OPTIONS LINE


def setting_connector(request, parsed):
    """Bitrix24 opens this for one connector and line: the connect form, or the connected channel's settings."""
    post = parsed.post
    options = post.placement_options
    connector = registry.get(options.get("CONNECTOR", ""))
    line = str(options.get("LINE", ""))
    with translation.override(post.language):
        if connector is None or not _LINE.match(line):
            return frame_error(
                request,
                status=400,
                title=_("Bad request"),
                message=_("Bitrix24 opened the settings of an unknown connector or line."),
                origin=frame_origin(post.domain, post.protocol),
            )
        portal, verdict, refusal = verify_or_refuse(request, post)
        if refusal is not None:
            return refusal
        channel = Channel.objects.defer("secret").filter(portal=portal, connector_id=connector.id, line_id=line).first()
        response = render(
            request,
            "openlines/setting_connector.html",
            {
                "portal": portal,
                "verdict": verdict,
                "connector": connector,
                "line": line,
                "line_name": _line_name(portal, line),
                "default_name": f"{connector.name} ({line})",
                "icon_uri": registry.svg_data_uri(connector.icon.svg),
                "channel": channel,
                "inbound_url": lifecycle.inbound_url(channel) if channel else "",
                "state": {
                    k: options.get(k) is True
                    for k in ("ACTIVE_STATUS", "CONNECTION_STATUS", "REGISTER_STATUS", "ERROR_STATUS")
                },
                "widget_token": widget_token.issue(portal, verdict),
                "language": post.language,
            },
        )
    return framed_by(response, portal_origin(portal))


def _line_name(portal: Portal, line: str) -> str:
    """The line's name as the portal shows it (the list of lines is read at most once a minute), or ""."""
    try:
        lines = lifecycle.open_lines(portal)
    except (lifecycle.ConnectFailed, Bitrix24Error):
        return ""  # the page names the line by its number instead
    return next((entry["name"] for entry in lines if entry["id"] == line), "")


def _frame_portal(form):
    """(portal, token) named by the page's signed widget token, or (None, a JsonResponse refusal)."""
    try:
        token = widget_token.read(form.get("widget_token", ""))
    except widget_token.BadWidgetToken as exc:
        message = {
            "missing": _("The request carries no widget token."),
            "expired": _("The widget was open too long. Close it and open it again."),
        }.get(exc.reason, _("The widget token is not valid."))
        return None, json_error(f"token_{exc.reason}", message, 403)
    portal = Portal.objects.filter(pk=token.portal_id, member_id=token.member_id).first()
    if portal is not None and portal.status == Portal.Status.BLOCKED:
        return None, json_error("blocked", refusal_text("blocked")[1], 403)
    if portal is None or not portal.is_serving or widget_token.install_epoch(portal) != token.installed:
        # Uninstalled, or installed again since the page was opened: that token is void.
        return None, json_error("not_installed", _("The app is not installed on this portal."), 403)
    return (portal, token), None


def _administrator(form):
    """(portal, user_id) of a genuine administrator's request from the frame, or a JsonResponse refusal."""
    found, refusal = _frame_portal(form)
    if refusal is not None:
        return None, refusal
    portal, token = found
    if not token.is_admin:
        return None, json_error("not_admin", _("Only portal administrators may change the channel."), 403)
    try:
        # A change is not believed from the verdict cached at open: Bitrix24 is asked again, now.
        still_admin = auth.recheck_admin(portal, form.get("AUTH_ID", ""), token.user_id)
    except auth.Refused as exc:
        if exc.reason in ("busy", "bitrix24_unreachable", "bitrix24_error"):
            return None, json_error(
                exc.reason, _("Bitrix24 did not answer. Please try again."), exc.status, exc.retry_after
            )
        return None, json_error(
            "reopen", _("Your authorization could not be confirmed. Close the page and open it again."), 403
        )
    if not still_admin:
        return None, json_error("not_admin", _("Only portal administrators may change the channel."), 403)
    return (portal, token.user_id), None


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
            return json_error(
                "busy",
                _("Too many requests for this portal are being checked right now. Please try again in a moment."),
                429,
                exc.retry_after,
            )
        return json_error(
            "bitrix24_unavailable",
            _("The Open Lines of this portal could not be loaded."),
            502 if exc.code not in ("insufficient_scope", "ACCESS_DENIED") else 403,
        )
    channels = list(Channel.objects.defer("secret").filter(portal=portal, connector_id=connector.id))
    unread = waiting.counts(channels)
    return JsonResponse(
        {
            "connector": connector.id,
            "lines": lines,
            "channels": {
                c.line_id: {
                    "state": c.state,
                    "last_activity_at": c.last_activity_at.isoformat(timespec="seconds")
                    if c.last_activity_at
                    else None,
                    "name": c.name,
                    # Whether replies have somewhere to go; the address itself is for administrators only.
                    "has_webhook": bool(c.webhook_url),
                    # Operator messages nobody the app can ask may read yet (openlines.waiting): they wait.
                    "waiting_replies": unread.get(c.pk, 0),
                }
                for c in channels
            },
        }
    )


@sensitive_post_parameters("widget_token", "AUTH_ID")
@csrf_exempt
@never_cache
@require_POST
def connector_action_view(request):
    """list / connect / disconnect / rotate / save, from the SETTING_CONNECTOR page or the Contact Center overview."""
    try:
        data = placement_request.form(request)
    except BadFramePost:
        return json_error("bad_request", "malformed form", 400)
    with translation.override(placement_request.language(request)):
        form = ConnectorActionForm(data)
        if not form.is_valid():
            return json_error(*form.refusal(), 400)
        action, connector = form.cleaned_data["action"], form.cleaned_data["connector"]
        if action == "list":
            return _list(data, connector)
        who, refusal = _administrator(data)
        if refusal is not None:
            return refusal
        portal, user_id = who
        try:
            answer = channels.act(
                action,
                portal,
                connector,
                form.cleaned_data["line"],
                user_id=user_id,
                name=form.cleaned_data["name"],
                webhook_url=form.cleaned_data["webhook_url"],
            )
        except channels.ActionRefused as exc:
            if exc.reason in ("busy", "bitrix24_refused"):
                log.info(
                    "connector action refused by Bitrix24", extra={"member_id": portal.member_id, "code": exc.reason}
                )
            return json_refusal(exc, description=exc.description)
        return JsonResponse(answer)


def _method_not_allowed(allowed: str) -> JsonResponse:
    response = json_error("method_not_allowed", f"use {allowed}", 405)
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
        try:
            row = inbound.accept(channel, action, element)
        except inbound.Stale:  # the channel changed since this process read it: checked again as it is now
            channel = inbound.find_channel(channel_id, fresh=True)
            inbound.check_signature(channel, request, body)
            row = inbound.accept(channel, action, element)
    except inbound.Refused as exc:
        return json_refusal(exc, description=exc.description)
    except inbound.Stale:  # changed again in between: as a disconnected channel
        return json_error("channel_disconnected", "the channel is not connected to an Open Line", 409)
    if not handoff.by_dispatcher():  # (else the worker's dispatcher queues it: inbox/handoff.py)
        tasks.after_commit(tasks.deliver_inbound, channel.pk)
    # (the answer's JSON written out: JsonResponse's encoder is a visible share of this path's CPU)
    return HttpResponse(b'{"result": "accepted", "id": %d}' % row.pk, content_type="application/json", status=202)


@csrf_exempt  # it changes nothing and refuses every unsafe method with the channel API's JSON 405
def channel_view(request, channel_id):
    """The channel's link in Bitrix24 (connector.data.set URL): what it is and where messages go; no secret."""
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed("GET")
    channel = Channel.objects.defer("secret").filter(public_id=channel_id).first()
    if channel is None:
        return json_error("unknown_channel", "no such channel", 404)
    return JsonResponse(
        {
            "channel": str(channel.public_id),
            "connector": channel.connector_id,
            "state": channel.state,
            "messages": lifecycle.inbound_url(channel),
        }
    )


@csrf_exempt
def unknown_channel_view(request, rest):
    """Any other address under /channels/: the channel API's own JSON error, not an HTML page."""
    return json_error("unknown_channel", "no such channel (the address is /channels/<channel id>/messages)", 404)
