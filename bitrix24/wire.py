"""The wire vocabulary: what Bitrix24's identifiers, tokens and answers look like, in one place.

Every check of a value that comes from Bitrix24 (or claims to) uses these, so one rule is never spelled
two ways: ASCII digits only (`str.isdigit()` also admits "²", which `int()` and Bitrix24 reject).
"""

import re
from typing import Any, TypeGuard

# A value decoded from JSON that comes from outside (Bitrix24's answers, event payloads, placement options)
# or goes out as is (a caller's REST parameters): its shape is checked where it is read, never assumed, so
# it is typed Any on purpose, under this one name.
JSON = Any
# REST parameters (nested objects and lists, as Bitrix24 reads them) and a batch command: (method, params).
Params = dict[str, JSON]
Command = tuple[str, Params]

# settings/oauth/index.md: member_id is a 32-character hex string on cloud portals; on-premise and test
# portals use other ASCII identifiers, so the check is on characters and length, not the exact shape.
MEMBER_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_TOKEN = 1024
TOKEN = re.compile(rf"^[A-Za-z0-9_.\-]{{1,{MAX_TOKEN}}}$")

# The app's licence status on a portal (settings/oauth/index.md, `status` of a token answer and of the
# frame POST): F free, D demo, T trial, P paid, L local, S subscription.
APP_STATUSES = ("F", "D", "T", "P", "L", "S")

# settings/how-to-call-rest-api/batch.md: at most 50 commands in one batch; list methods answer 50 items a page.
BATCH_LIMIT = 50
PAGE_SIZE = 50

# Bitrix24's error codes are short identifiers; descriptions are text. Both are clipped before they are
# stored or logged, so an absurd answer never becomes an absurd row or log line.
CODE_LIMIT = 64
DESCRIPTION_LIMIT = 255


def is_member_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and MEMBER_ID.fullmatch(value) is not None


def is_token(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and TOKEN.fullmatch(value) is not None


def is_digits(value: object, *, max_length: int = 20) -> TypeGuard[str]:
    """Whether `value` is a string of 1..max_length ASCII digits (ids, counts, timestamps, lengths)."""
    return isinstance(value, str) and 0 < len(value) <= max_length and value.isascii() and value.isdigit()


def digits_or_empty(value: object, *, max_length: int = 20) -> str:
    """`value` (a str or int) as ASCII digits, or '' for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return value if is_digits(value, max_length=max_length) else ""


def is_storable_text(value: str) -> bool:
    """Whether `value` can be stored and sent as it is: no NUL (PostgreSQL keeps none in text or JSON) and no
    lone surrogate (it has no UTF-8 form: "\\ud800" in a JSON body decodes to one)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def bad_text_in(value: object, *, max_length: int, max_depth: int = 32, where: str = "") -> str | None:
    """Where a JSON value (dicts, lists, scalars) holds a string (value or key) that is not storable text or
    longer than `max_length`, or nests deeper than `max_depth`: a short description, or None when it holds none."""
    if isinstance(value, str):
        if len(value) > max_length:
            return f"{where or 'a value'} is longer than {max_length} characters"
        return None if is_storable_text(value) else f"{where or 'a value'} holds a NUL or an invalid character"
    if isinstance(value, (dict, list)):
        if max_depth <= 0:
            return f"{where or 'a value'} nests too deep"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            label = str(key)[:40] if str(key)[:40].isprintable() and is_storable_text(str(key)[:40]) else "?"
            name = f"{where}[{label}]" if where else label
            if isinstance(key, str) and (len(key) > max_length or not is_storable_text(key)):
                return f"a key in {where or 'the object'} is malformed"
            problem = bad_text_in(item, max_length=max_length, max_depth=max_depth - 1, where=name)
            if problem:
                return problem
    return None


def clip(value: object, limit: int = DESCRIPTION_LIMIT) -> str:
    """A value from outside as text of at most `limit` characters ('' for None)."""
    return "" if value is None else str(value)[:limit]


def error_of(answer: object) -> tuple[str, str] | None:
    """(code, description) of a Bitrix24 error answer (`{"error": ..., "error_description": ...}`), clipped;
    None when `answer` is not an error."""
    if not isinstance(answer, dict) or not answer.get("error"):
        return None
    return clip(answer["error"], CODE_LIMIT), clip(answer.get("error_description") or "")


def retry_after_header(seconds: float | None) -> str | None:
    """The Retry-After value (whole seconds, at least 1) for `seconds`, or None."""
    return None if seconds is None else str(max(int(seconds + 0.999), 1))


def rebind_commands(
    events: list[str] | tuple[str, ...],
    handler: str,
    *,
    event_type: str = "online",
    options: dict[str, Any] | None = None,
) -> dict[str, Command]:
    """Batch commands that bind `events` to `handler` afresh: an `event.unbind` before each `event.bind`
    (api-reference/events/event-bind.md: a repeated bind is refused, not ignored).

    `event_type="offline"` binds into the portal's offline queue instead (api-reference/events/offline-events.md:
    `event_type=offline` and no handler; keys `unbind_offline_<event>`, `bind_offline_<event>`). `options` go
    with each bind (event-bind.md; ONOFFLINEEVENT's `minTimeout`)."""
    commands: dict[str, Command] = {}
    for event in events:
        if event_type == "offline":
            params: dict[str, Any] = {"event": event, "event_type": "offline"}
            commands[f"unbind_offline_{event}"] = ("event.unbind", dict(params))
            commands[f"bind_offline_{event}"] = ("event.bind", params)
            continue
        commands[f"unbind_{event}"] = ("event.unbind", {"event": event, "handler": handler})
        bind: dict[str, Any] = {"event": event, "handler": handler}
        if options:
            bind["options"] = dict(options)
        commands[f"bind_{event}"] = ("event.bind", bind)
    return commands


def already_bound(code: str, description: str) -> bool:
    """Whether a refused bind means "already there" (placement.bind and event.bind answer these)."""
    if code == "ERROR_PLACEMENT_HANDLER_ALREADY_BINDED":
        return True
    return code == "ERROR_CORE" and "already binded" in description.lower()
