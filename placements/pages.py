"""Pages shown inside a portal's frame: the refusal of an open (verified first), and the rendered-page cache.

Used by every app whose page opens as a placement (placements' own views, openlines' SETTING_CONNECTOR).
"""

import hashlib
import json

from django.core.cache.backends.locmem import LocMemCache
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils import translation
from django.utils.translation import gettext as _

from bitrix24.addresses import portal_origin
from bitrix24.frames import FramePost, frame_origin
from bitrix24.responses import frame_refusal
from portals.models import Portal

from . import auth, metrics


def refusal_text(reason: str) -> tuple[str, str]:
    """(title, message) for a refused open, in the active language."""
    return {
        "not_installed": (_("App not installed"), _("The app is not installed on this portal.")),
        "uninstalled": (_("App not installed"), _("The app is not installed on this portal.")),
        "blocked": (
            _("An administrator is needed"),
            _(
                "The app lost its connection to this portal. Please ask a portal administrator to "
                "open the app once; that restores it."
            ),
        ),
        "needs_admin": (
            _("An administrator is needed"),
            _(
                "The app needs a portal administrator to open it once (its connection to this portal "
                "was lost or its installation changed). Please ask an administrator, then try again."
            ),
        ),
        "busy": (
            _("Please try again in a moment"),
            _("Too many requests for this portal are being checked right now. Please try again in a moment."),
        ),
        "domain_mismatch": (
            _("Unknown portal address"),
            _(
                "This portal's address does not match the one Bitrix24 confirmed for it. If the "
                "portal's address was changed, reload Bitrix24 and open the widget again."
            ),
        ),
        "no_auth": (_("Not signed in"), _("Bitrix24 did not send the user's authorization. Open the widget again.")),
        "no_access": (
            _("No access to this app"),
            _(
                "Your Bitrix24 administrator has given access to this app to some users only. Ask an "
                "administrator to give you access."
            ),
        ),
        "plan_required": (
            _("Not available on this plan"),
            _(
                "Bitrix24 offers apps like this one on its commercial plans only. A portal "
                "administrator can change the plan in Bitrix24."
            ),
        ),
        "bitrix24_blocked": (
            _("Bitrix24 has paused this portal's apps"),
            _(
                "Bitrix24 has paused apps' access to this portal for overload. A portal "
                "administrator can ask Bitrix24 support to lift it."
            ),
        ),
        "bad_token": (
            _("Access denied"),
            _("Bitrix24 did not confirm your authorization. Close the widget and open it again."),
        ),
        "bitrix24_unreachable": (
            _("Bitrix24 is not reachable"),
            _("Bitrix24 did not answer. Please try again in a few minutes."),
        ),
        "bitrix24_error": (_("Bitrix24 error"), _("Bitrix24 gave an answer we could not use. Please try again.")),
        "payment_required": (
            _("Payment required"),
            _("The app's paid period has expired. Please renew the subscription in Bitrix24 Market to keep using it."),
        ),
    }.get(reason, (_("Access denied"), _("The request was refused.")))


def verify_or_refuse(
    request: HttpRequest, post: FramePost
) -> tuple[Portal, auth.Verdict, None] | tuple[None, None, HttpResponse]:
    """(portal, verdict, None) for a genuine open, else (None, None, the refusal page) in the active language."""
    try:
        portal, verdict = auth.verify(post, sender=request.META.get("REMOTE_ADDR", ""))
    except auth.Refused as exc:
        metrics.widget_open(exc.reason)
        title, message = refusal_text(exc.reason)
        # The stored portal's origin, when one is known; else the posted one, for a page that holds
        # nothing but this message (so the user sees it instead of a blocked frame).
        origin = portal_origin(exc.portal) if exc.portal else frame_origin(post.domain, post.protocol)
        return None, None, frame_refusal(request, exc, title=title, message=message, origin=origin)
    return portal, verdict, None


# Rendered widget pages, per process, keyed by everything they are rendered from (the portal row, the
# verdict, the language ...) except the widget token, which is put in fresh each time:
# a re-opened widget skips the template, and any change to what it shows makes a new key.
_pages = LocMemCache("b24widget-pages", {"TIMEOUT": 600, "OPTIONS": {"MAX_ENTRIES": 2000}})  # ~6 KB each
TOKEN_SLOT = "@@b24widget-token@@"


def render_page(request: HttpRequest, template: str, context: dict[str, object]) -> str:
    """The page for `context`, rendered once per distinct content (the widget token goes in at TOKEN_SLOT)."""
    portal = context["portal"]
    facts = (
        template,
        translation.get_language(),
        tuple(getattr(portal, f.attname) for f in Portal._meta.concrete_fields if f.attname not in auth.SECRETS),
        repr(context["verdict"]),
        json.dumps(context["options"], sort_keys=True),
    )
    key = hashlib.sha256(repr(facts).encode()).hexdigest()
    html = _pages.get(key)
    if html is None:
        html = render_to_string(template, {**context, "widget_token": TOKEN_SLOT}, request)
        _pages.set(key, html)
    return html
