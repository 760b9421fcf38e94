"""PlacementRequest: the POST Bitrix24 sends when a user opens a placement, validated."""

from dataclasses import dataclass

from django.core.exceptions import SuspiciousOperation
from django.http.multipartparser import MultiPartParserError

from bitrix24.frames import BadFramePost, FramePost, django_language, language_of, parse_frame_post

from . import registry

# What Django raises for a body it refuses to read: too large, too many fields, broken multipart.
_REFUSED_BODY = (SuspiciousOperation, MultiPartParserError)


class UnknownPlacement(BadFramePost):
    def __init__(self, code: str):
        super().__init__("PLACEMENT", f"no handler for placement {code}")
        self.code = code


@dataclass(frozen=True)
class PlacementRequest:
    post: FramePost
    placement: registry.Placement


def form(request):
    """The request's form body; raises BadFramePost("body") for one Django refuses to read."""
    try:
        return request.POST
    except _REFUSED_BODY:
        raise BadFramePost("body", "too large or malformed") from None


def language(request) -> str:
    """The language for a page about this request: LANG from the body or, if that is unreadable, the query."""
    try:
        return language_of(request)
    except _REFUSED_BODY:
        return django_language(request.GET.get("LANG", ""))


def parse(request) -> PlacementRequest:
    """Validate the POST and find its handler; raises BadFramePost (or UnknownPlacement)."""
    form(request)
    post = parse_frame_post(request, require_placement=True)
    placement = registry.get(post.placement)
    if placement is None:
        raise UnknownPlacement(post.placement)
    return PlacementRequest(post=post, placement=placement)
