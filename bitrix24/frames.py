"""The form Bitrix24 POSTs into an app frame (install page, placements), parsed and validated; and who
may frame our answer.

A real portal puts DOMAIN, PROTOCOL, LANG and APP_SID in the handler URL's query string and the rest
in the body; the docs show them all in the body. Each field is read from the body first, then from
the query. Nothing here is trusted yet: it is only well-formed.

Responses shown inside a portal's frame are framable by that portal's origin only and never cached
(`framed_by`).
"""

import json
import re
from dataclasses import dataclass, field
from typing import TypeVar

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.cache import add_never_cache_headers

from . import wire
from .addresses import BadAddress, normalize_domain
from .wire import JSON

MAX_TOKEN = wire.MAX_TOKEN
MAX_OPTIONS = 16 * 1024

_LANG = re.compile(r"^[A-Za-z]{2}(?:[_-][A-Za-z]{2,4})?$")
_APP_SID = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_PLACEMENT = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")

# Bitrix24 interface languages mapped to the languages this app is translated into.
_LANGUAGE_MAP = {"ru": "ru", "ua": "ru", "uk": "ru", "by": "ru", "kz": "ru", "de": "de", "en": "en"}


class BadFramePost(ValueError):
    """A field that is missing or malformed; `field` names it, the message says what is wrong."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


def django_language(lang: str) -> str:
    """Map a Bitrix24 LANG (en, ru, de, ua, la, ...) to one of settings.LANGUAGES, English by default."""
    return _LANGUAGE_MAP.get((lang or "").lower()[:2], "en")


@dataclass(frozen=True)
class FramePost:
    domain: str
    protocol: int
    lang: str
    member_id: str
    placement: str
    app_sid: str = ""
    auth_id: str = field(default="", repr=False)
    auth_expires: int | None = None
    refresh_id: str = field(default="", repr=False)
    application_token: str = field(default="", repr=False)
    status: str = ""
    placement_options: dict[str, JSON] = field(default_factory=dict)

    @property
    def language(self) -> str:
        return django_language(self.lang)


def language_of(request: HttpRequest) -> str:
    """Best-effort language of a frame request, for pages that explain why the POST was refused."""
    raw = request.POST.get("LANG") or request.GET.get("LANG") or ""
    return django_language(raw if isinstance(raw, str) and _LANG.match(raw) else "")


def _value(request: HttpRequest, name: str, *, limit: int) -> str:
    value = request.POST.get(name)
    if value is None:
        value = request.GET.get(name)
    if value is None:
        return ""
    if len(value) > limit:
        raise BadFramePost(name, f"longer than {limit} characters")
    return value.strip()


def _required(request: HttpRequest, name: str, *, limit: int = 255) -> str:
    value = _value(request, name, limit=limit)
    if not value:
        raise BadFramePost(name, "is required")
    return value


def _options(raw: str) -> dict[str, JSON]:
    if raw in ("", "undefined", "null"):
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise BadFramePost("PLACEMENT_OPTIONS", "is not valid JSON") from None
    # Bitrix24 sometimes sends a non-object (a bare string, a number): that carries no options.
    if not isinstance(value, dict):
        return {}
    # JSON escapes (\u0000, \ud800) make text that cannot be shown or stored: refused before any verification.
    if wire.bad_text_in(value, max_length=MAX_OPTIONS):
        raise BadFramePost("PLACEMENT_OPTIONS", "holds malformed text")
    return value


def parse_frame_post(request: HttpRequest, *, require_placement: bool = True) -> FramePost:
    """Parse and validate the frame POST; raises BadFramePost naming the first bad field."""
    try:
        domain = normalize_domain(_required(request, "DOMAIN"))
    except BadAddress as exc:
        raise BadFramePost("DOMAIN", str(exc)) from None

    protocol = _required(request, "PROTOCOL", limit=1)
    if protocol not in ("0", "1"):
        raise BadFramePost("PROTOCOL", "must be 0 or 1")
    if protocol == "0" and not settings.B24_ALLOW_HTTP_PORTALS:
        raise BadFramePost("PROTOCOL", "plain-HTTP portals are not allowed by this deployment")

    lang = _required(request, "LANG", limit=8)
    if not _LANG.match(lang):
        raise BadFramePost("LANG", "is not a language code")

    member_id = _required(request, "member_id", limit=64)
    if not wire.is_member_id(member_id):
        raise BadFramePost("member_id", "has characters a member_id never has")

    placement = _value(request, "PLACEMENT", limit=64)
    if require_placement and not placement:
        raise BadFramePost("PLACEMENT", "is required")
    if placement and not _PLACEMENT.match(placement):
        raise BadFramePost("PLACEMENT", "is not a placement code")

    app_sid = _value(request, "APP_SID", limit=128)
    if app_sid and not _APP_SID.match(app_sid):
        raise BadFramePost("APP_SID", "is malformed")

    auth_id = _value(request, "AUTH_ID", limit=MAX_TOKEN)
    refresh_id = _value(request, "REFRESH_ID", limit=MAX_TOKEN)
    for name, token in (("AUTH_ID", auth_id), ("REFRESH_ID", refresh_id)):
        if token and not wire.is_token(token):
            raise BadFramePost(name, "is not a token")

    application_token = _value(request, "APPLICATION_TOKEN", limit=255)
    if application_token and not wire.is_token(application_token):
        raise BadFramePost("APPLICATION_TOKEN", "is not a token")

    auth_expires = None
    raw_expires = _value(request, "AUTH_EXPIRES", limit=10)
    if raw_expires:
        if not wire.is_digits(raw_expires, max_length=10):
            raise BadFramePost("AUTH_EXPIRES", "must be a whole number of seconds")
        auth_expires = int(raw_expires)

    status = _value(request, "status", limit=1)
    if status and status not in wire.APP_STATUSES:
        raise BadFramePost("status", "must be one of F, D, T, P, L, S")

    return FramePost(
        domain=domain,
        protocol=int(protocol),
        lang=lang.lower(),
        member_id=member_id,
        placement=placement,
        app_sid=app_sid,
        auth_id=auth_id,
        auth_expires=auth_expires,
        refresh_id=refresh_id,
        application_token=application_token,
        status=status,
        placement_options=_options(_value(request, "PLACEMENT_OPTIONS", limit=MAX_OPTIONS)),
    )


def frame_origin(domain: str, protocol: int | None = None) -> str:
    """The origin allowed to frame a page for `domain`; plain HTTP only where the deployment allows it."""
    scheme = "http" if protocol == 0 and settings.B24_ALLOW_HTTP_PORTALS else "https"
    return f"{scheme}://{domain}"


# The response keeps its own type (a JsonResponse stays one).
Response = TypeVar("Response", bound=HttpResponse)


def framed_by(response: Response, origin: str | None) -> Response:
    """Allow `origin` (and nobody else) to frame the response; without an origin, nobody."""
    if origin:
        response["Content-Security-Policy"] = f"frame-ancestors {origin}"
        response.xframe_options_exempt = True
    else:
        response["Content-Security-Policy"] = "frame-ancestors 'none'"
    add_never_cache_headers(response)
    return response
