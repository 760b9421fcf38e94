"""One entry point for every placement, dispatched by PLACEMENT."""

from django.http import HttpResponse
from django.utils import translation
from django.utils.functional import Promise
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from bitrix24.addresses import portal_origin
from bitrix24.frames import BadFramePost, framed_by
from bitrix24.responses import frame_error
from portals.models import AppStatus

from . import metrics, pages, widget_token
from . import request as placement_request


def _app_status_label(code: str) -> str | Promise:  # a choice's label is lazy: rendered in the page's language
    return AppStatus(code).label if code in AppStatus.values else _("unknown")


@sensitive_post_parameters("AUTH_ID", "REFRESH_ID", "APPLICATION_TOKEN")
@csrf_exempt
@require_http_methods(["GET", "POST"])
def placement_view(request):
    """Bitrix24 opens every placement here with a cross-site POST into an iframe."""
    if request.method == "GET":
        with translation.override(placement_request.language(request)):
            return frame_error(
                request,
                status=200,
                title=_("Open from Bitrix24"),
                message=_("This widget opens from inside Bitrix24, in the Contact Center."),
                origin=None,
            )
    try:
        parsed = placement_request.parse(request)
    except placement_request.UnknownPlacement:
        with translation.override(placement_request.language(request)):
            return frame_error(
                request,
                status=400,
                title=_("Unknown placement"),
                message=_("This app has no handler for that placement."),
                origin=None,
            )
    except BadFramePost as exc:
        with translation.override(placement_request.language(request)):
            return frame_error(
                request,
                status=400,
                title=_("Bad request"),
                message=_("The request from Bitrix24 is malformed (%(field)s).") % {"field": exc.field},
                origin=None,
            )
    post = parsed.post
    if parsed.placement.view is not None:  # another app's page (e.g. openlines' SETTING_CONNECTOR)
        return parsed.placement.view(request, parsed)
    with translation.override(post.language):
        portal, verdict, refusal = pages.verify_or_refuse(request, post)
        if refusal is not None:
            return refusal
        context = {
            "portal": portal,
            "verdict": verdict,
            "language": post.language,
            "placement": parsed.placement,
            "app_status_label": _app_status_label(verdict.app_info.get("status", "")),
            "options": post.placement_options,
        }
        page = pages.render_page(request, parsed.placement.template, context)
        response = HttpResponse(page.replace(pages.TOKEN_SLOT, widget_token.issue(portal, verdict)))
        metrics.widget_open("shown")
    return framed_by(response, portal_origin(portal))
