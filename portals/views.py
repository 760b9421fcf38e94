"""The app's install page: Bitrix24 POSTs it into a frame when an administrator installs the app."""

import logging

from django.shortcuts import render
from django.utils import translation
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from bitrix24.addresses import portal_origin
from bitrix24.frames import BadFramePost, frame_origin, framed_by, language_of, parse_frame_post
from bitrix24.responses import frame_error

from . import install as installer

log = logging.getLogger(__name__)


@sensitive_post_parameters("AUTH_ID", "REFRESH_ID", "APPLICATION_TOKEN")
@csrf_exempt
@require_http_methods(["GET", "POST"])
def install_view(request):
    """The app's install URL: Bitrix24 opens it in a frame with a POST when the app is installed."""
    with translation.override(language_of(request)):
        if request.method == "GET":
            return frame_error(
                request,
                status=200,
                title=_("Install from Bitrix24"),
                message=_("This page is opened by Bitrix24 while the app is being installed."),
                origin=None,
            )
        try:
            post = parse_frame_post(request, require_placement=False)
        except BadFramePost as exc:
            return frame_error(
                request,
                status=400,
                title=_("Bad install request"),
                message=_("The install request is malformed (%(field)s).") % {"field": exc.field},
                origin=None,
            )
        origin = frame_origin(post.domain, post.protocol)
        with translation.override(post.language):
            if not post.refresh_id:
                return frame_error(
                    request,
                    status=400,
                    title=_("Bad install request"),
                    message=_("The install request carries no refresh token."),
                    origin=origin,
                )
            try:
                portal = installer.install(post)
            except installer.InstallRefused as exc:
                title, message = _install_refusal(exc.reason)
                return frame_error(
                    request, status=exc.status, title=title, message=message, origin=origin, retry_after=exc.retry_after
                )
            except installer.InstallUnavailable as exc:
                if exc.scopes:  # Bitrix24 refused a call for a scope this portal did not grant the app
                    return frame_error(
                        request,
                        status=403,
                        title=_("Installation incomplete"),
                        message=_missing_scope_text(exc),
                        origin=origin,
                    )
                if exc.code in ("ACCESS_DENIED", "insufficient_scope"):
                    return frame_error(
                        request,
                        status=403,
                        title=_("Installation incomplete"),
                        message=_(
                            "Bitrix24 refused to register the widget: the installing user "
                            "must be a portal administrator and the app needs the "
                            "placement scope."
                        ),
                        origin=origin,
                    )
                return frame_error(
                    request,
                    status=503,
                    title=_("Bitrix24 is not reachable"),
                    message=_(
                        "The installation could not be completed because Bitrix24 did not "
                        "answer. Please try again in a few minutes."
                    ),
                    origin=origin,
                    retry_after=30,
                )
            response = render(
                request,
                "install/finish.html",
                {
                    "portal": portal,
                },
            )
            return framed_by(response, portal_origin(portal))


def _missing_scope_text(exc) -> str:
    """What to do when Bitrix24 refused the install for a scope: the scope(s) by name, and who adds them."""
    scopes = ", ".join(exc.scopes)
    if exc.placement:
        text = _(
            "Bitrix24 refused to add the app to %(placement)s: it needs the permission (scope) %(scopes)s, "
            "which this portal has not granted the app."
        ) % {"placement": exc.placement, "scopes": scopes}
    else:
        text = _(
            "Bitrix24 refused the installation: the app needs the permission (scope) %(scopes)s, which this "
            "portal has not granted it."
        ) % {"scopes": scopes}
    if exc.code == "ACCESS_DENIED":
        text += " " + _("The installing user must also be a portal administrator.")
    return (
        text
        + " "
        + _(
            "Add the permission to the app (a local app: its settings in Bitrix24, “Assign permissions”; a Market "
            "app: its vendor publishes a version that asks for it), then install the app again."
        )
    )


def _install_refusal(reason: str):
    """(title, message) for a refused install, in the active language."""
    if reason == "not_admin":
        return (
            _("An administrator must install the app"),
            _(
                "Only a Bitrix24 administrator can install this app. Please ask an administrator of your "
                "portal to install it; nothing was changed."
            ),
        )
    if reason == "throttled":
        return (
            _("Too many attempts"),
            _("Too many installation attempts for this portal. Please wait a minute and start the installation again."),
        )
    if reason in ("oauth_unavailable", "bitrix24_unavailable", "deployment_misconfigured"):
        return (
            _("Bitrix24 is not reachable"),
            _(
                "The installation could not be completed because Bitrix24 did not answer. Please try "
                "again in a few minutes."
            ),
        )
    return (
        _("Installation not confirmed"),
        _("Bitrix24 did not confirm this installation. Please start the installation again from your Bitrix24."),
    )
