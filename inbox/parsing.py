"""An event POST as Bitrix24 sends it to `/events/` (api-reference/events/index.md), parsed and validated.

Events arrive form-encoded (`event`, `data[...]`, `ts`, `auth[...]`, `event_handler_id`) or as JSON.
Nothing here is believed yet: it is only well-formed. Which events exist is the registry's business.
"""

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import unquote

from django.conf import settings
from django.core.exceptions import TooManyFieldsSent
from django.http import HttpRequest

from bitrix24 import wire
from bitrix24.wire import JSON

from .models import InboxItem
from .registry import Refused, registration

_BRACKETS = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PARTS = re.compile(r"\[([^\[\]]*)\]")
_SECRET_MAX = wire.MAX_TOKEN
# The longest string an event's data may hold (Bitrix24's own texts, a message's among them, are far shorter).
_TEXT_MAX = 65536


class BadEvent(ValueError):
    """A malformed event body (HTTP 400)."""


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class Event:
    """One event delivery: its code (upper-cased, aliases resolved), whose portal, and what it carried."""

    name: str
    member_id: str
    data: dict[str, JSON]
    auth: dict[str, JSON] = field(repr=False)
    ts: str = ""
    event_handler_id: str = ""
    # Pulled from the portal's offline queue with the app's own tokens (inbox/offline.py): `data` holds the
    # object's ids only and `auth` is empty, but the sender is the portal itself.
    offline: bool = False

    @property
    def application_token(self) -> str:
        return _str(self.auth.get("application_token"))

    @classmethod
    def of(cls, item: InboxItem) -> "Event":
        """The event an inbox row stored."""
        return cls(
            name=item.event,
            member_id=item.member_id,
            data=item.data,
            auth=item.auth,
            ts=item.ts,
            event_handler_id=item.event_handler_id,
            offline=getattr(item, "source", "online") == "offline",
        )


@lru_cache(maxsize=1024)
def _path(key: str) -> tuple[str, ...] | None:
    """A PHP-style field name's parts (`data[A][B]` -> data, A, B), or None when it is not one; remembered, as the
    same few names come in every event."""
    match = _BRACKETS.match(key)
    if not match:
        return None
    return (match.group(1), *_PARTS.findall(match.group(2)))


def _nest(pairs) -> dict:
    """Turn PHP-style keys (`auth[member_id]`, `data[A][B]`) into nested dicts."""
    out: dict = {}
    for key, value in pairs:
        path = _path(key)
        if path is None:
            raise BadEvent(f"malformed field name {key[:40]!r}")
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise BadEvent(f"conflicting field {key[:40]!r}")
            node = child
        if isinstance(node.get(path[-1]), dict):
            raise BadEvent(f"conflicting field {key[:40]!r}")
        node[path[-1]] = value
    return out


def _unquote(raw: str) -> str:
    """One name or value of a form as parse_qsl decodes it ('+' a space, %XX UTF-8, bad bytes replaced)."""
    if "%" not in raw and "+" not in raw:
        return raw
    return unquote(raw.replace("+", " "), encoding="utf-8", errors="replace")


_unquote_name = lru_cache(maxsize=1024)(_unquote)  # (the same few names come in every event)


def _form_fields(request: HttpRequest) -> list[tuple[str, str]]:
    """A form-encoded body's fields exactly as `request.POST.items()` gives them (each name once, at its first
    place, with its last value), read as Django reads it (UTF-8, else ISO-8859-1; blank values kept; past
    DATA_UPLOAD_MAX_NUMBER_FIELDS a 400; the body's size limit applies in `request.body`) but without building
    the QueryDict, and split as parse_qsl splits it (on "&"; a pair without "=" is a blank value) with the names'
    decoding remembered: parse_qsl's decoding of each name (all of them hold %5B and %5D) was most of the parse's
    CPU (bench/RESULTS.md, "the dispatcher").
    """
    raw = request.body
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("iso-8859-1")
    limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
    if limit is not None and text and text.count("&") + 1 > limit:
        raise TooManyFieldsSent("The number of POST parameters exceeded DATA_UPLOAD_MAX_NUMBER_FIELDS.")
    fields: dict[str, str] = {}
    for pair in text.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            fields[_unquote_name(name)] = _unquote(value)
    return list(fields.items())


def _digits(value: object, max_length: int) -> str | None:
    """`value` as ASCII digits ('' when absent), or None when it is anything else."""
    if value == "":
        return ""
    text = wire.digits_or_empty(value, max_length=max_length)
    return text or None


def parse(request: HttpRequest) -> Event:
    """Parse an event POST (form-encoded or JSON) into an Event; BadEvent, or Refused for an unknown event."""
    if request.content_type == "application/json":
        try:
            body = json.loads(request.body or b"null")
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            raise BadEvent("body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadEvent("body is not a JSON object")
    elif (
        request.content_type == "application/x-www-form-urlencoded" and (request.encoding or "utf-8").lower() == "utf-8"
    ):
        body = _nest(_form_fields(request))
    else:
        body = _nest(request.POST.items())
    name = body.get("event")
    if not isinstance(name, str) or not name:
        raise BadEvent("event is missing")
    entry = registration(name)
    if entry is None:
        raise Refused(f"unknown event {name[:40]}", status=400)
    auth = body.get("auth")
    data = body.get("data", {})
    if not isinstance(auth, dict):
        raise BadEvent("auth is missing")
    if isinstance(data, list) and not data:
        data = {}
    if isinstance(data, (str, int)) and not isinstance(data, bool) and len(str(data)) <= 64:
        # A bare value: ONIMCONNECTORLINEDELETE's data is the line id (events/on-im-connector-line-delete.md).
        data = {"VALUE": str(data)}
    if not isinstance(data, dict):
        raise BadEvent("data is not an object")
    # Nothing is stored that the database cannot keep or a handler would choke on (NUL, a lone surrogate).
    problem = wire.bad_text_in(data, max_length=_TEXT_MAX, where="data")
    if problem:
        raise BadEvent(problem)
    member_id = _str(auth.get("member_id"))
    if not wire.is_member_id(member_id):
        raise BadEvent("auth[member_id] is missing or malformed")
    if wire.bad_text_in(auth, max_length=_SECRET_MAX):
        raise BadEvent("auth is malformed")
    for key, value in auth.items():
        if isinstance(value, bool) or not isinstance(value, (str, int)) or len(str(value)) > _SECRET_MAX:
            raise BadEvent(f"auth[{str(key)[:40]}] is malformed")
    ts = _digits(body.get("ts", ""), 20)
    if ts is None:
        raise BadEvent("ts is malformed")
    handler_id = _digits(body.get("event_handler_id", ""), 20)
    if handler_id is None:
        raise BadEvent("event_handler_id is malformed")
    return Event(name=entry.event_code, member_id=member_id, data=data, auth=auth, ts=ts, event_handler_id=handler_id)
