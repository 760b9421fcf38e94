"""Connector declarations. Install registers each with `imconnector.register` and binds its events.

Adding a connector is one entry here (and, for a new kind of channel, its inbound/outbound modules).
Facts: api-reference/imopenlines/imconnector/imconnector-register.md (ID: digits, lowercase letters and
`_`, no `.`; ICON.DATA_IMAGE an SVG data URI; the flags and their defaults), widgets/setting-connector.md
(PLACEMENT_HANDLER opens SETTING_CONNECTOR; no placement.bind for it).
"""

import re
from dataclasses import dataclass, field
from urllib.parse import quote

from placements import registry as placements

# The events a connector app receives (api-reference/imopenlines/imconnector/events/), bound to /events/.
CONNECTOR_EVENTS = (
    "ONIMCONNECTORMESSAGEADD",
    "ONIMCONNECTORMESSAGEUPDATE",
    "ONIMCONNECTORMESSAGEDELETE",
    "ONIMCONNECTORSTATUSDELETE",
    "ONIMCONNECTORLINEDELETE",
)
_ID = re.compile(r"^[a-z0-9_]{1,50}$")


def svg_data_uri(svg: str) -> str:
    """An SVG as the `data:image/svg+xml,` URI imconnector.register wants (URL-encoded)."""
    return "data:image/svg+xml," + quote(svg.strip(), safe="")


@dataclass(frozen=True)
class Icon:
    svg: str
    color: str = ""
    size: str = "90%"
    position: str = "center"

    def params(self) -> dict:
        out = {"DATA_IMAGE": svg_data_uri(self.svg), "SIZE": self.size, "POSITION": self.position}
        if self.color:
            out["COLOR"] = self.color
        return out


@dataclass(frozen=True)
class Connector:
    id: str
    name: str
    icon: Icon
    icon_disabled: Icon
    # imconnector.register's flags, named as there; the defaults there are all true except CHAT_GROUP.
    flags: dict = field(default_factory=dict)

    def __post_init__(self):
        if not _ID.match(self.id):
            raise ValueError(f"connector id {self.id!r}: digits, lowercase letters and _ only")

    def register_params(self) -> dict:
        return {
            "ID": self.id,
            "NAME": self.name,
            "ICON": self.icon.params(),
            "ICON_DISABLED": self.icon_disabled.params(),
            "PLACEMENT_HANDLER": handler_url(),
            **{k: bool(v) for k, v in self.flags.items()},
        }


_BUBBLE = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64"><path fill="{fill}" '
    'd="M12 10h40a6 6 0 0 1 6 6v24a6 6 0 0 1-6 6H28l-12 10v-10h-4a6 6 0 0 1-6-6V16a6 6 0 0 1 6-6z"/>'
    '<path fill="#fff" d="M18 24h28v4H18zm0 8h20v4H18z"/></svg>'
)

# The built-in channel: any outside system over HTTP (inbound API + signed webhook).
HTTP = Connector(
    id="b24widget_http",
    name="b24widget HTTP channel",
    icon=Icon(_BUBBLE.format(fill="#2fc6f6"), color="#2fc6f6"),
    icon_disabled=Icon(_BUBBLE.format(fill="#a8adb4"), color="#a8adb4"),
    flags={"CHAT_GROUP": False, "NEWSLETTER": False, "NEED_SYSTEM_MESSAGES": False},
)

REGISTRY = {c.id: c for c in (HTTP,)}


def get(connector_id: str) -> Connector | None:
    # imconnector.register lower-cases ID; PLACEMENT_OPTIONS carries the lowered value.
    return REGISTRY.get(str(connector_id).lower())


def handler_url() -> str:
    """SETTING_CONNECTOR opens at the one placement entry point (placements dispatch by PLACEMENT)."""
    return placements.handler_url()
