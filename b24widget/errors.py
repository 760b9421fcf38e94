"""Pages for failures no view handled: a 500, and a database that does not answer (503).

Inside Bitrix24 the user sees these in the portal's frame, so they are framed like any other frame
page (by the posted portal's origin: they hold nothing but the message), localized, and say what to
do next. `/events/` and other JSON callers get JSON.
"""

import logging

from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.utils import translation
from django.utils.translation import gettext as _

from bitrix24.addresses import BadAddress, normalize_domain
from bitrix24.frames import frame_origin, framed_by, language_of

log = logging.getLogger(__name__)

_FRAME_PATHS = ("/placement/", "/install/")


def _origin(request):
    """The posted portal's origin for a frame page, or None (nobody may frame it)."""
    if not request.path.startswith(_FRAME_PATHS):
        return None
    try:
        raw = request.POST.get("DOMAIN") or request.GET.get("DOMAIN") or ""
        protocol = request.POST.get("PROTOCOL") or request.GET.get("PROTOCOL") or "1"
        return frame_origin(normalize_domain(raw), 0 if protocol == "0" else 1)
    except (BadAddress, Exception):  # an unreadable body must not turn this page into another 500
        return None


def _language(request) -> str:
    try:
        return language_of(request)
    except Exception:
        return "en"


def error_page(request, *, status: int, title: str, message: str, retry_after: int | None = None):
    if request.path.startswith("/events/") or "application/json" in request.headers.get("Accept", ""):
        response: HttpResponse = JsonResponse(
            {"error": "unavailable" if status == 503 else "server_error", "error_description": message}, status=status
        )
    else:
        html = render_to_string("errors/frame_error.html", {"title": title, "message": message})
        response = HttpResponse(html, status=status)
    if retry_after:
        response["Retry-After"] = str(retry_after)
    return framed_by(response, _origin(request))


def server_error(request):
    """handler500."""
    with translation.override(_language(request)):
        return error_page(
            request,
            status=500,
            title=_("Something went wrong"),
            message=_(
                "The app could not complete this request. Please try again in a few minutes; "
                "if it keeps happening, tell the app's vendor."
            ),
        )


class DatabaseUnavailableMiddleware:
    """A database that does not answer (connect or statement timeout) is a fast 503, not a 500 or a hang."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, (OperationalError, InterfaceError)) or not isinstance(exception, DatabaseError):
            return None
        log.error("database unavailable", extra={"error": type(exception).__name__, "path": request.path})
        with translation.override(_language(request)):
            return error_page(
                request,
                status=503,
                title=_("Temporarily unavailable"),
                message=_("The app cannot reach its database right now. Please try again in a minute."),
                retry_after=10,
            )
