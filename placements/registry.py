"""Placement code -> page. Every app that shows a page inside a portal registers it here.

    registry.register(Placement(code="CONTACT_CENTER", template=..., titles=..., descriptions=...))

Placements with `bind=True` are bound with `placement.bind` by this app's install step (`bind_placements`,
registered with portals' install steps in PlacementsConfig.ready()). Another app's page is registered with
its `view` (a callable `(request, PlacementRequest) -> response`), e.g. openlines' SETTING_CONNECTOR.
Adding a placement is one `register` call and one template.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from django.http import HttpRequest, HttpResponse

from bitrix24.errors import RestError
from bitrix24.frames import FramePost
from bitrix24.wire import Command, Params
from portals import install, install_steps
from portals.models import Portal
from portals.tokens import PortalClient


class Opened(Protocol):
    """What a placement's `view` gets besides the request: a placements.request.PlacementRequest (which
    imports this module, hence a protocol)."""

    @property
    def post(self) -> FramePost: ...

    @property
    def placement(self) -> "Placement": ...


@dataclass(frozen=True)
class Placement:
    code: str
    template: str
    # Titles and descriptions shown in the portal, per Bitrix24 interface language.
    titles: dict[str, str] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    # Bound with placement.bind at install. DEFAULT (the app's own page, opened from the portal's menu
    # at the "handler path" of the app's registration) exists without binding.
    bind: bool = True
    # Renders this placement instead of `template` (another app's page; placements never import it).
    view: Callable[[HttpRequest, Opened], HttpResponse] | None = None
    # The scope the placement needs besides `placement` (placement-bind.md: "depending on the placement
    # location"); empty: read from the code's prefix (scope_of).
    scope: str = ""


_registry: dict[str, Placement] = {}


def register(placement: Placement) -> None:
    """Add (or replace, by code: ready() may run twice) a placement."""
    _registry[placement.code] = placement


def get(code: str) -> Placement | None:
    return _registry.get(code)


def registered() -> list[Placement]:
    return list(_registry.values())


# The scope of a placement family, as the placement pages list them (api-reference/widgets/*).
_PREFIX_SCOPES = (("CONTACT_CENTER", "contact_center"), ("CRM_", "crm"), ("TASK_", "task"), ("CALENDAR_", "calendar"))
# Bitrix24's answers to a placement.bind the app's scopes do not allow: the method's scope missing, no right,
# or (the stand-in, a portal without the placement's own scope) a placement it does not offer this app.
SCOPE_REFUSALS = frozenset({"insufficient_scope", "ACCESS_DENIED", "ERROR_PLACEMENT_NOT_FOUND"})


def scope_of(placement: Placement) -> str:
    """The scope a placement needs besides `placement`, or "" when none is known."""
    if placement.scope:
        return placement.scope
    return next((scope for prefix, scope in _PREFIX_SCOPES if placement.code.startswith(prefix)), "")


CONTACT_CENTER = Placement(
    code="CONTACT_CENTER",
    template="placements/contact_center.html",
    titles={"en": "b24widget", "ru": "b24widget", "de": "b24widget"},
    descriptions={
        "en": "Connect your Open Lines to b24widget",
        "ru": "Подключите открытые линии к b24widget",
        "de": "Verbinden Sie Ihre Kommunikationskanäle mit b24widget",
    },
)

# The app opened from the portal's menu shows the same page: status and settings.
DEFAULT = Placement(code="DEFAULT", template="placements/contact_center.html", bind=False)

register(CONTACT_CENTER)
register(DEFAULT)


def handler_url() -> str:
    """Where Bitrix24 opens every placement of ours."""
    return install.app_url("placement")


def bindings() -> list[Params]:
    """The `placement.bind` parameters for every registered placement that is bound."""
    out = []
    for placement in _registry.values():
        if not placement.bind:
            continue
        out.append(
            {
                "PLACEMENT": placement.code,
                "HANDLER": handler_url(),
                "TITLE": placement.titles["en"],
                "DESCRIPTION": placement.descriptions["en"],
                "LANG_ALL": {
                    lang: {"TITLE": placement.titles[lang], "DESCRIPTION": placement.descriptions[lang]}
                    for lang in placement.titles
                },
            }
        )
    return out


def bind_placements(portal: Portal, client: PortalClient) -> install_steps.Bound:
    """Install step (order 10): unbind and bind every bound placement (api-reference/widgets/placement-bind.md)."""
    handlers = bindings()
    commands: dict[str, Command] = {}
    for i, binding in enumerate(handlers):
        commands[f"unbind_placement_{i}"] = (
            "placement.unbind",
            {"PLACEMENT": binding["PLACEMENT"], "HANDLER": binding["HANDLER"]},
        )
        commands[f"bind_placement_{i}"] = ("placement.bind", binding)
    if commands:
        try:
            install.run_bindings(client, commands)
        except RestError as exc:
            if exc.code not in SCOPE_REFUSALS:
                raise
            # run_bindings names the refused command first ("bind_placement_<i>: ...").
            key = exc.description.split(":", 1)[0]
            index = int(key.rsplit("_", 1)[1]) if key.startswith("bind_placement_") else -1
            code = handlers[index]["PLACEMENT"] if 0 <= index < len(handlers) else ""
            placement = _registry.get(code)
            scopes = ["placement"] if exc.code == "insufficient_scope" else []
            if placement is not None and scope_of(placement):
                scopes.append(scope_of(placement))
            raise install_steps.MissingScope(
                exc.code, exc.description, scopes=scopes or ["placement"], placement=code, method=exc.method
            ) from None
    return install_steps.Bound(placements=[b["PLACEMENT"] for b in handlers])
