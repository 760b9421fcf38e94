"""Install steps other apps add to `install.bind` (the seam for connectors, like placements' registry).

`portals` never imports the apps built on it; an app registers a step from its AppConfig.ready():

    install_steps.register("openlines.connectors", register_connectors)

A step is `step(portal, client) -> list[str]`: it runs after the placements and app events are bound,
with the same `PortalClient`, returns the event codes it bound (recorded in the portal's history), and
raises `portals.rest.RestError` when Bitrix24 refuses (the binding failure is recorded and the install
is not complete). Steps must be idempotent: they run at every install, ONAPPUPDATE and re-bind.
"""
from collections.abc import Callable

_steps: dict[str, Callable] = {}


def register(name: str, step: Callable) -> None:
    """Add (or replace, by name: ready() may run twice) a step."""
    _steps[name] = step


def unregister(name: str) -> None:
    _steps.pop(name, None)


def steps() -> list[tuple[str, Callable]]:
    """The registered steps, in registration order."""
    return list(_steps.items())
