"""How every refusal is answered: one renderer for JSON callers, one for pages inside a portal's frame.

A refusal is a `bitrix24.errors.Refusal` (reason, status, retry_after): JSON callers get
`{"error": <code>, "error_description": <text>}` with the status; frame callers get a readable, localized
page that only the given origin may frame. Both carry `Retry-After` when the refusal says when to try
again. No other module renders a refusal or a Retry-After header.
"""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from .errors import Refusal
from .frames import framed_by
from .wire import retry_after_header


def _retry_after(response: HttpResponse, seconds: float | None) -> HttpResponse:
    value = retry_after_header(seconds)
    if value is not None:
        response["Retry-After"] = value
    return response


def json_error(code: str, description: str, status: int, retry_after: float | None = None) -> JsonResponse:
    """The JSON answer to a refused request: a stable `error` code and a human `error_description`."""
    response = JsonResponse({"error": code, "error_description": description}, status=status)
    _retry_after(response, retry_after)
    return response


def json_refusal(refusal: Refusal, *, code: str | None = None, description: str | None = None) -> JsonResponse:
    """`json_error` for a Refusal: its reason is the code unless `code` names the family (e.g. "refused")."""
    return json_error(
        code or refusal.reason,
        refusal.reason if description is None else description,
        refusal.status,
        refusal.retry_after,
    )


def frame_error(
    request: HttpRequest, *, status: int, title: str, message: str, origin: str | None, retry_after: float | None = None
) -> HttpResponse:
    """A readable error page for inside the portal's frame (already localized by the caller); framable by
    `origin` only (nobody when None)."""
    response = render(
        request, "errors/frame_error.html", {"title": title, "message": message, "status": status}, status=status
    )
    _retry_after(response, retry_after)
    return framed_by(response, origin)


def frame_refusal(
    request: HttpRequest, refusal: Refusal, *, title: str, message: str, origin: str | None
) -> HttpResponse:
    """`frame_error` for a Refusal (its status and Retry-After)."""
    return frame_error(
        request, status=refusal.status, title=title, message=message, origin=origin, retry_after=refusal.retry_after
    )
