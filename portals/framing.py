"""Responses shown inside a portal's frame: framable by that portal's origin only, never cached."""
from django.conf import settings
from django.utils.cache import add_never_cache_headers


def frame_origin(domain: str, protocol: int | None = None) -> str:
    """The origin allowed to frame a page for `domain`; plain HTTP only where the deployment allows it."""
    scheme = "http" if protocol == 0 and settings.B24_ALLOW_HTTP_PORTALS else "https"
    return f"{scheme}://{domain}"


def framed_by(response, origin: str | None):
    """Allow `origin` (and nobody else) to frame the response; without an origin, nobody."""
    if origin:
        response["Content-Security-Policy"] = f"frame-ancestors {origin}"
        response.xframe_options_exempt = True
    else:
        response["Content-Security-Policy"] = "frame-ancestors 'none'"
    add_never_cache_headers(response)
    return response
