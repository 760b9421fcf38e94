"""PlacementRequest: the POST Bitrix24 sends when a user opens a placement, validated."""
from dataclasses import dataclass

from portals.frame_post import BadFramePost, FramePost, parse_frame_post

from . import registry


class UnknownPlacement(BadFramePost):
    def __init__(self, code: str):
        super().__init__("PLACEMENT", f"no handler for placement {code}")
        self.code = code


@dataclass(frozen=True)
class PlacementRequest:
    post: FramePost
    placement: registry.Placement


def parse(request) -> PlacementRequest:
    """Validate the POST and find its handler; raises BadFramePost (or UnknownPlacement)."""
    post = parse_frame_post(request, require_placement=True)
    placement = registry.get(post.placement)
    if placement is None:
        raise UnknownPlacement(post.placement)
    return PlacementRequest(post=post, placement=placement)
