"""The install steps: what `install.bind` runs, in order, at every install, ONAPPUPDATE and re-bind.

`portals` never imports the apps built on it; each registers its steps from AppConfig.ready():

    install_steps.register("placements", bind_placements, order=10)

A step is `step(portal, client) -> Bound | list[str] | None`: it runs with the install's `PortalClient`,
returns what it bound (a `Bound`, or a list of event codes), and raises `bitrix24.errors.RestError` when
Bitrix24 refuses (the failure is recorded with the step's name and the install is not complete). Steps
must be idempotent; a refusal for a scope the portal did not grant is a `MissingScope` (a RestError naming
the scope, which the install page shows). The order: placements (10; `placement.bind` is for administrators
only, so an install that cannot show its square must not look complete), the app's own events (20), the rest
(50 by default).
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from bitrix24.errors import RestError

from .models import Portal
from .tokens import PortalClient


@dataclass(frozen=True)
class Bound:
    """What a step bound: placement codes and event codes (recorded in the portal's history)."""

    placements: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


class MissingScope(RestError):
    """A step's refusal that means the app lacks a scope on this portal (insufficient_scope, ACCESS_DENIED, or
    placement.bind's ERROR_PLACEMENT_NOT_FOUND for a placement whose scope was not granted): `scopes` names
    what the refused call needs, `placement` the placement it was binding (or "")."""

    def __init__(self, code: str, description: str = "", *, scopes: list[str], placement: str = "", method: str = ""):
        super().__init__(code, description, method=method)
        self.scopes = list(scopes)
        self.placement = placement


Step = Callable[[Portal, PortalClient], "Bound | list[str] | None"]
_steps: dict[str, tuple[int, Step]] = {}


def register(name: str, step: Step, *, order: int = 50) -> None:
    """Add (or replace, by name: ready() may run twice) a step."""
    _steps[name] = (order, step)


def unregister(name: str) -> None:
    _steps.pop(name, None)


def steps() -> list[tuple[str, Step]]:
    """The registered steps, by order, then in registration order."""
    ranked = sorted(enumerate(_steps.items()), key=lambda entry: (entry[1][1][0], entry[0]))
    return [(name, step) for _index, (name, (_order, step)) in ranked]


def bound(result: "Bound | list[str] | None") -> Bound:
    """A step's answer as a Bound."""
    if isinstance(result, Bound):
        return result
    return Bound(events=list(result or []))
