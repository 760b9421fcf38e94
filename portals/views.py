"""Entry points Bitrix24 POSTs to: the UI install page and the app events."""
import logging

from django.http import JsonResponse
from django.shortcuts import render
from django.utils import translation
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from bitrix24.wire import retry_after_header
from . import events, install as installer
from bitrix24.addresses import portal_origin
from bitrix24.frames import frame_origin, framed_by
from bitrix24.frames import BadFramePost, language_of, parse_frame_post

log = logging.getLogger(__name__)


def frame_error(request, *, status: int, title: str, message: str, origin: str | None,
                retry_after: float | None = None):
    """A readable error page for inside the portal's frame (already localized by the caller)."""
    response = render(request, "errors/frame_error.html", {"title": title, "message": message, "status": status}, status=status)
    if retry_after is not None:
        response["Retry-After"] = retry_after_header(retry_after)
    return framed_by(response, origin)


@sensitive_post_parameters("AUTH_ID", "REFRESH_ID", "APPLICATION_TOKEN")
@csrf_exempt
@require_http_methods(["GET", "POST"])
def install_view(request):
    """The app's install URL: Bitrix24 opens it in a frame with a POST when the app is installed."""
    with translation.override(language_of(request)):
        if request.method == "GET":
            return frame_error(request, status=200, title=_("Install from Bitrix24"),
                               message=_("This page is opened by Bitrix24 while the app is being installed."),
                               origin=None)
        try:
            post = parse_frame_post(request, require_placement=False)
        except BadFramePost as exc:
            return frame_error(request, status=400, title=_("Bad install request"),
                               message=_("The install request is malformed (%(field)s).") % {"field": exc.field},
                               origin=None)
        origin = frame_origin(post.domain, post.protocol)
        with translation.override(post.language):
            if not post.refresh_id:
                return frame_error(request, status=400, title=_("Bad install request"),
                                   message=_("The install request carries no refresh token."), origin=origin)
            try:
                portal = installer.install(post)
            except installer.InstallRefused as exc:
                title, message = _install_refusal(exc.reason)
                return frame_error(request, status=exc.status, title=title, message=message, origin=origin,
                                   retry_after=exc.retry_after)
            except installer.InstallUnavailable as exc:
                if exc.code in ("ACCESS_DENIED", "insufficient_scope"):
                    return frame_error(request, status=403, title=_("Installation incomplete"),
                                       message=_("Bitrix24 refused to register the widget: the installing user "
                                                 "must be a portal administrator and the app needs the "
                                                 "placement scope."), origin=origin)
                return frame_error(request, status=503, title=_("Bitrix24 is not reachable"),
                                   message=_("The installation could not be completed because Bitrix24 did not "
                                             "answer. Please try again in a few minutes."), origin=origin,
                                   retry_after=30)
            response = render(request, "install/finish.html", {
                "portal": portal,
            })
            return framed_by(response, portal_origin(portal))


def _install_refusal(reason: str):
    """(title, message) for a refused install, in the active language."""
    if reason == "not_admin":
        return (_("An administrator must install the app"),
                _("Only a Bitrix24 administrator can install this app. Please ask an administrator of your "
                  "portal to install it; nothing was changed."))
    if reason == "throttled":
        return (_("Too many attempts"), _("Too many installation attempts for this portal. Please wait a "
                                          "minute and start the installation again."))
    if reason in ("oauth_unavailable", "bitrix24_unavailable", "deployment_misconfigured"):
        return (_("Bitrix24 is not reachable"),
                _("The installation could not be completed because Bitrix24 did not answer. Please try "
                  "again in a few minutes."))
    return (_("Installation not confirmed"),
            _("Bitrix24 did not confirm this installation. Please start the installation again from your "
              "Bitrix24."))


@sensitive_post_parameters()
@csrf_exempt
@require_http_methods(["POST"])
def events_view(request):
    """Every bound Bitrix24 event: cheap checks, stored in the inbox, answered at once (no outbound call).

    A refused event changes nothing and gets a 4xx; a repeated delivery is answered 200 and changes nothing.
    """
    try:
        event = events.parse(request)
        item, created = events.accept(event)
    except events.BadEvent as exc:
        return JsonResponse({"error": "bad_request", "error_description": str(exc)}, status=400)
    except events.EventRefused as exc:
        response = JsonResponse({"error": "refused", "error_description": exc.reason}, status=exc.status)
        if exc.retry_after is not None:
            response["Retry-After"] = retry_after_header(exc.retry_after)
        return response
    return JsonResponse({"result": "accepted" if created else "duplicate", "id": item.pk})
