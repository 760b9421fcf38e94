"""One entry point for every placement, dispatched by PLACEMENT."""
import hashlib
import json

from django.core.cache.backends.locmem import LocMemCache
from django.http import HttpResponse
from django.template.loader import render_to_string
from django.utils import translation
from django.utils.module_loading import import_string
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from . import metrics

from bitrix24.addresses import portal_origin
from bitrix24.frames import frame_origin, framed_by
from bitrix24.frames import BadFramePost
from portals.models import AppStatus, Portal
from portals.views import frame_error

from . import auth, request as placement_request, widget_token


def refusal_text(reason: str):
    """(title, message) for a refused open, in the active language."""
    return {
        "not_installed": (_("App not installed"), _("The app is not installed on this portal.")),
        "uninstalled": (_("App not installed"), _("The app is not installed on this portal.")),
        "blocked": (_("An administrator is needed"),
                    _("The app lost its connection to this portal. Please ask a portal administrator to "
                      "open the app once; that restores it.")),
        "needs_admin": (_("An administrator is needed"),
                        _("The app needs a portal administrator to open it once (its connection to this portal "
                          "was lost or its installation changed). Please ask an administrator, then try again.")),
        "busy": (_("Please try again in a moment"),
                 _("Too many requests for this portal are being checked right now. Please try again in a "
                   "moment.")),
        "domain_mismatch": (_("Unknown portal address"),
                            _("This portal's address does not match the one Bitrix24 confirmed for it. If the "
                              "portal's address was changed, reload Bitrix24 and open the widget again.")),
        "no_auth": (_("Not signed in"), _("Bitrix24 did not send the user's authorization. Open the widget again.")),
        "no_access": (_("No access to this app"),
                      _("Your Bitrix24 administrator has given access to this app to some users only. Ask an "
                        "administrator to give you access.")),
        "plan_required": (_("Not available on this plan"),
                          _("Bitrix24 offers apps like this one on its commercial plans only. A portal "
                            "administrator can change the plan in Bitrix24.")),
        "bitrix24_blocked": (_("Bitrix24 has paused this portal's apps"),
                             _("Bitrix24 has paused apps' access to this portal for overload. A portal "
                               "administrator can ask Bitrix24 support to lift it.")),
        "bad_token": (_("Access denied"),
                      _("Bitrix24 did not confirm your authorization. Close the widget and open it again.")),
        "bitrix24_unreachable": (_("Bitrix24 is not reachable"),
                                 _("Bitrix24 did not answer. Please try again in a few minutes.")),
        "bitrix24_error": (_("Bitrix24 error"), _("Bitrix24 gave an answer we could not use. Please try again.")),
        "payment_required": (_("Payment required"),
                             _("The app's paid period has expired. Please renew the subscription in Bitrix24 "
                               "Market to keep using it.")),
    }.get(reason, (_("Access denied"), _("The request was refused.")))


def _app_status_label(code: str) -> str:
    return AppStatus(code).label if code in AppStatus.values else _("unknown")


@sensitive_post_parameters("AUTH_ID", "REFRESH_ID", "APPLICATION_TOKEN")
@csrf_exempt
@require_http_methods(["GET", "POST"])
def placement_view(request):
    """Bitrix24 opens every placement here with a cross-site POST into an iframe."""
    if request.method == "GET":
        with translation.override(placement_request.language(request)):
            return frame_error(request, status=200, title=_("Open from Bitrix24"),
                               message=_("This widget opens from inside Bitrix24, in the Contact Center."),
                               origin=None)
    try:
        parsed = placement_request.parse(request)
    except placement_request.UnknownPlacement:
        with translation.override(placement_request.language(request)):
            return frame_error(request, status=400, title=_("Unknown placement"),
                               message=_("This app has no handler for that placement."), origin=None)
    except BadFramePost as exc:
        with translation.override(placement_request.language(request)):
            return frame_error(request, status=400, title=_("Bad request"),
                               message=_("The request from Bitrix24 is malformed (%(field)s).") % {"field": exc.field},
                               origin=None)
    post = parsed.post
    if parsed.placement.view:  # another app's page (e.g. openlines' SETTING_CONNECTOR)
        return import_string(parsed.placement.view)(request, parsed)
    with translation.override(post.language):
        portal, verdict, refusal = verify_or_refuse(request, post)
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
        page = _page(request, parsed.placement.template, context)
        response = HttpResponse(page.replace(_TOKEN_SLOT, widget_token.issue(portal, verdict)))
        metrics.widget_open("shown")
    return framed_by(response, portal_origin(portal))


def verify_or_refuse(request, post):
    """(portal, verdict, None) for a genuine open, else (None, None, the refusal page) in the active language."""
    try:
        portal, verdict = auth.verify(post)
    except auth.Refused as exc:
        metrics.widget_open(exc.reason)
        title, message = refusal_text(exc.reason)
        # The stored portal's origin, when one is known; else the posted one, for a page that holds
        # nothing but this message (so the user sees it instead of a blocked frame).
        origin = portal_origin(exc.portal) if exc.portal else frame_origin(post.domain, post.protocol)
        return None, None, frame_error(request, status=exc.status, title=title, message=message, origin=origin,
                                       retry_after=exc.retry_after)
    return portal, verdict, None


# Rendered widget pages, per process, keyed by everything they are rendered from (the portal row, the
# verdict, the language ...) except the widget token, which is put in fresh each time:
# a re-opened widget skips the template, and any change to what it shows makes a new key.
_pages = LocMemCache("b24widget-pages", {"TIMEOUT": 600, "OPTIONS": {"MAX_ENTRIES": 2000}})  # ~6 KB each
_TOKEN_SLOT = "@@b24widget-token@@"


def _page(request, template: str, context: dict) -> str:
    portal = context["portal"]
    facts = (
        template, translation.get_language(),
        tuple(getattr(portal, f.attname) for f in Portal._meta.concrete_fields if f.attname not in auth.SECRETS),
        repr(context["verdict"]), json.dumps(context["options"], sort_keys=True),
    )
    key = hashlib.sha256(repr(facts).encode()).hexdigest()
    page = _pages.get(key)
    if page is None:
        page = render_to_string(template, {**context, "widget_token": _TOKEN_SLOT}, request)
        _pages.set(key, page)
    return page
