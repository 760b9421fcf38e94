"""Placement code -> handler. The install step binds every entry (portals.install.bind reads `bindings`).

Adding a placement is one entry here and one template.
"""
from dataclasses import dataclass, field

from django.conf import settings


@dataclass(frozen=True)
class Placement:
    code: str
    template: str
    # Titles and descriptions shown in the portal, per Bitrix24 interface language.
    titles: dict = field(default_factory=dict)
    descriptions: dict = field(default_factory=dict)
    # Bound with placement.bind at install. DEFAULT (the app's own page, opened from the portal's menu
    # at the "handler path" of the app's registration) exists without binding.
    bind: bool = True
    # Dotted path of a view `(request, PlacementRequest) -> response` that renders this placement
    # instead of `template` (another app's page; placements never import it).
    view: str = ""


CONTACT_CENTER = Placement(
    code="CONTACT_CENTER",
    template="placements/contact_center.html",
    titles={"en": "b24widget", "ru": "b24widget", "de": "b24widget"},
    descriptions={
        "en": "Connect your Open Lines to b24widget",
        "ru": "Подключите открытые линии к b24widget",
        "de": "Verbinden Sie Ihre offenen Kanäle mit b24widget",
    },
)

# The app opened from the portal's menu shows the same page: status and settings.
DEFAULT = Placement(code="DEFAULT", template="placements/contact_center.html", bind=False)

# An Open Lines connector's settings page (api-reference/widgets/setting-connector.md). Bitrix24 binds it
# itself when the connector is registered (imconnector.register's PLACEMENT_HANDLER), never placement.bind.
SETTING_CONNECTOR = Placement(code="SETTING_CONNECTOR", template="openlines/setting_connector.html", bind=False,
                              view="openlines.views.setting_connector")

REGISTRY = {p.code: p for p in (CONTACT_CENTER, DEFAULT, SETTING_CONNECTOR)}


def get(code: str) -> Placement | None:
    return REGISTRY.get(code)


def handler_url() -> str:
    return f"{settings.B24_APP_URL}/placement/"


def bindings() -> list[dict]:
    """The `placement.bind` parameters for every registered placement."""
    out = []
    for placement in REGISTRY.values():
        if not placement.bind:
            continue
        out.append({
            "PLACEMENT": placement.code,
            "HANDLER": handler_url(),
            "TITLE": placement.titles["en"],
            "DESCRIPTION": placement.descriptions["en"],
            "LANG_ALL": {
                lang: {"TITLE": placement.titles[lang], "DESCRIPTION": placement.descriptions[lang]}
                for lang in placement.titles
            },
        })
    return out
