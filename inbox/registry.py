"""What the inbox knows of the apps above it, all of it registered: event handlers, and the portal directory.

Apps call these from their AppConfig.ready():

    register(event_code, handler, *, needs_application_token=True, ordered=True, precheck=None)
    handler(item: InboxItem) -> str        # idempotent; raise Retry(reason), Later(reason, after) or Reject(reason)
    set_directory(directory)               # portals: which stored portal an event names, and (for the pull of
                                           # offline events, inbox/offline.py) which portals to pull with what

Per portal and lane (proven or unproven, inbox/queue.py), an `ordered` event is not processed while an older
ordered one of its lane is unfinished (install before uninstall). `precheck(portal, auth, data)` adds cheap
request-time checks (raise Refused).

A handler's outcomes: a short string (done); `Reject` (final: the event is dropped, recorded on the row);
`Retry` (a failed attempt: retried with back-off, the last of B24_INBOX_MAX_ATTEMPTS leaves a dead letter);
`Later` (not a failure: the row waits `after` seconds and is tried again, no attempt counted, never a dead
letter). Raising either of the last two ends the task's chain (inbox/queue.py `process`).
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from bitrix24.client import Client
from bitrix24.errors import Refusal
from bitrix24.wire import JSON

from .models import InboxItem


class Retry(Exception):
    """Transient trouble (Bitrix24 or the OAuth server unreachable, limits): try again later.

    `after` (seconds) is a lower bound for the next attempt, e.g. a Retry-After the platform gave.
    """

    def __init__(self, reason: str, after: float | None = None):
        self.reason = reason
        self.after = after
        super().__init__(reason)


class Later(Exception):
    """Not now, and no failure: the platform said when to come back (a Bitrix24 limit: the portal's request
    bucket is full, a method's operating time is spent), and nothing is wrong with the event or with us.

    The row waits `after` seconds (at least 1 s, at most B24_INBOX_BACKOFF_MAX) and is tried again: the attempt
    the claim counted is given back, the back-off does not double, and it never becomes a dead letter because
    of this. So raise it only for a wait that ends by itself; anything that may be our fault or the event's is
    a Retry (bounded) or a Reject.
    """

    def __init__(self, reason: str, after: float):
        self.reason = reason
        self.after = after
        super().__init__(reason)


class Reject(Exception):
    """The event is not believable or not applicable: final, recorded on the row."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class Refused(Refusal):
    """A cheap check failed in the request: nothing stored; `status` is the HTTP answer."""


# handler(item) -> a short outcome; precheck(portal | None, auth, data) -> None, raises Refused.
Handler = Callable[[InboxItem], str]
Precheck = Callable[["StoredPortal | None", dict[str, JSON], dict[str, JSON]], None]


@dataclass(frozen=True)
class Registration:
    event_code: str
    handler: Handler
    needs_application_token: bool = True
    ordered: bool = True
    precheck: Precheck | None = None


_registry: dict[str, Registration] = {}
_aliases: dict[str, str] = {}  # another spelling Bitrix24 uses -> the registered code


def register(
    event_code: str,
    handler: Handler,
    *,
    needs_application_token: bool = True,
    ordered: bool = True,
    precheck: Precheck | None = None,
    aliases: tuple[str, ...] = (),
) -> None:
    """Route events `event_code` (Bitrix24's name, any case) to `handler(item) -> str` in a worker.

    `needs_application_token`: the request is refused unless the portal is known and the event's
    `application_token` matches (constant time). `ordered`: wait for the portal's older ordered
    events. `precheck(portal, auth, data)` adds cheap request-time checks (raise Refused). `aliases`: other
    spellings of the code that Bitrix24 (or its docs) use.
    """
    code = event_code.upper()
    _registry[code] = Registration(code, handler, needs_application_token, ordered, precheck)
    for alias in aliases:
        _aliases[alias.upper()] = code


def registration(event_code: str) -> Registration | None:
    """The registration for `event_code` (any case, or a registered alias), or None."""
    code = event_code.upper()
    return _registry.get(_aliases.get(code, code))


def ordered_codes() -> list[str]:
    """The codes whose events wait for their portal's older ones."""
    return [code for code, entry in _registry.items() if entry.ordered]


def registered_codes() -> list[str]:
    return list(_registry)


class StoredPortal(Protocol):
    """What the inbox needs of a stored portal (portals.models.Portal is one)."""

    pk: int
    application_token_digest: str

    def application_token_is(self, presented: str) -> bool: ...


class Directory(Protocol):
    """The stored portals, as the inbox may see them (portals registers one)."""

    def find(self, member_id: str, *, fresh: bool = False) -> StoredPortal | None:
        """The stored portal with this member_id, or None; as this process last read it unless `fresh`."""

    def unchanged(self, portal: StoredPortal) -> tuple[str, list]:
        """A SELECT (SQL, parameters) that finds a row while `portal` is as `find` gave it (its token unchanged)."""

    def refused(self, member_id: str, *, source: str, reason: str) -> None:
        """Count a refused event of a sender nobody verified (never one row per refusal)."""

    def offline_client(self, member_id: str) -> Client | None:
        """The app's REST client for a serving portal whose offline events are bound, or None (nothing to pull)."""

    def offline_portals(self) -> Iterable[str]:
        """The member_ids of the serving portals whose offline events are bound (the beat's pull)."""

    def offline_failed(self, member_id: str, *, code: str, description: str) -> None:
        """The portal answered the pull with an error (`code` as Bitrix24 or the client gave it): the portals
        app judges what it means (the app uninstalled, offline events no longer allowed, or nothing)."""


class _NoPortals:
    def find(self, member_id: str, *, fresh: bool = False) -> None:
        return None

    def unchanged(self, portal: StoredPortal) -> tuple[str, list]:
        raise LookupError("no portals are registered")

    def refused(self, member_id: str, *, source: str, reason: str) -> None:
        return None

    def offline_client(self, member_id: str) -> None:
        return None

    def offline_portals(self) -> list[str]:
        return []

    def offline_failed(self, member_id: str, *, code: str, description: str) -> None:
        return None


_directory: list[Directory] = [_NoPortals()]


def set_directory(directory: Directory) -> None:
    _directory[0] = directory


def directory() -> Directory:
    return _directory[0]
