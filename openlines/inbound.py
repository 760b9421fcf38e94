"""The channel API in: `POST /channels/<id>/messages` from the outside system, checked, stored, queued.

Checks, cheapest first, each with its own error code and nothing sent to Bitrix24 for any of them:
unknown channel (404 unknown_channel), disconnected (409 channel_disconnected), body over
OPENLINES_INBOUND_MAX_BYTES (413 body_too_large), timestamp missing or outside OPENLINES_SIGNATURE_WINDOW
(401 stale_timestamp), signature (401 bad_signature), the channel's budget of signed requests (429
rate_limited, with Retry-After), shape (400 bad_request), a message id already accepted in the same outside
chat (409 duplicate_message), a "read" report naming no operator message of the channel (404 unknown_message,
checked before the duplicate). The signature (version 2, `X-B24Widget-Signature-Version: 2`) is HMAC-SHA256
with the channel's secret over "v2.inbound.<timestamp>." + body, sent as `X-B24Widget-Signature:
sha256=<hex>` with `X-B24Widget-Timestamp`; version 1 (no version header, "<timestamp>." + body, the string
our webhooks were signed with too) is accepted until OPENLINES_SIGNATURE_V1_UNTIL.
"""

import hashlib
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from uuid import UUID

from django.conf import settings
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS, DatabaseError, IntegrityError, connection, connections, transaction
from django.http import HttpRequest
from django.utils import timezone

from bitrix24 import limits, wire
from bitrix24.errors import Refusal
from bitrix24.wire import JSON
from inbox import rows
from portals.models import Portal

from . import outbound
from .models import Channel, InboundMessage, OutboundMessage
from .outbound import INBOUND, SIGNATURE_HEADER, TIMESTAMP_HEADER, VERSION_HEADER, sign, sign_v1

log = logging.getLogger(__name__)

_ID_MAX = 128
_TEXT_MAX = 20000
_FILES_MAX = 10
# imconnector-send-messages.md: name and last_name "can contain letters, spaces, hyphens, and apostrophes",
# "numbers and other special characters are not allowed", at most 25 characters; anything else is dropped
# here (a name Bitrix24 refuses would fail the delivery). Letters: str.isalpha (so no "²" or "Ⅻ" either).
_NAME_MAX = 25
_NAME_MARKS = frozenset("'\u2019-")
# C0 controls (NUL above all: PostgreSQL stores no NUL in text or JSON) are refused; tab and line breaks are text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A channel's last_activity_at is written at most once per this interval: it is shown to the minute and read
# in hours (openlines.reconcile), so under a stream of messages one UPDATE a minute, not one per message.
ACTIVITY_RESOLUTION = timedelta(seconds=60)
ACTIVITY_SECONDS = ACTIVITY_RESOLUTION.total_seconds()


class Refused(Refusal):
    """A refused channel API request: `reason` (the JSON `error` code), a `description` for the integrator."""

    def __init__(self, code: str, description: str, status: int, *, retry_after: float | None = None):
        super().__init__(code, status, retry_after)
        self.description = description

    @property
    def code(self) -> str:
        return self.reason


def _header(request, name: str) -> str:
    """A request header by name, read from the WSGI environ: `request.headers` would parse every header of the
    request into a dict first, a tenth of the channel API's CPU (bench/RESULTS.md, "the dispatcher")."""
    return request.META.get(_meta_key(name), "")


@lru_cache(maxsize=16)
def _meta_key(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


@dataclass(frozen=True, slots=True)
class Addressed:
    """The channel a request names, as far as the request reads it: its pk, public id and secret, and whether
    its last activity is due to be written. Not a model instance: building the channel's and its portal's from
    the row cost a tenth of a request's CPU (bench/RESULTS.md, "the floor of their required work")."""

    pk: int
    public_id: UUID
    secret: str = field(repr=False)
    sealed: str = field(repr=False)


@lru_cache(maxsize=1)
def _find_sql() -> str:
    """The channel's pk, sealed secret and state and its portal's status, joined, built once from the models'
    metadata (so it follows migrations): a raw query skips the ORM's per-call SQL compilation."""
    channel, portal = Channel._meta, Portal._meta
    column = {f.attname: f.column for f in channel.concrete_fields}
    return (
        f"SELECT c.{column['id']}, c.{column['secret']}, c.{column['state']}, p.{portal.get_field('status').column} "
        f"FROM {channel.db_table} c JOIN {portal.db_table} p ON p.{portal.pk.column} = c.{column['portal_id']} "
        f"WHERE c.{column['public_id']} = %s"
    )


@lru_cache(maxsize=1)
def _serving_sql() -> str:
    """The INSERT's condition: the channel, as the request read it (its pk and sealed secret), is still connected
    and its portal still serving, checked in the INSERT's own statement."""
    channel, portal = Channel._meta, Portal._meta
    column = {f.attname: f.column for f in channel.concrete_fields}
    serving = ", ".join(["%s"] * len(Portal.SERVING))
    return (
        f"WHERE EXISTS (SELECT 1 FROM {channel.db_table} c JOIN {portal.db_table} p "
        f"ON p.{portal.pk.column} = c.{column['portal_id']} WHERE c.{column['id']} = %s AND c.{column['secret']} = %s "
        f"AND c.{column['state']} = %s AND p.{portal.get_field('status').column} IN ({serving}))"
    )


# The connected channels this process read, by public id: (pk, sealed secret). Only a hint: every INSERT checks
# the row as read against the table (`_serving_sql`), and a row that changed is read again (`accept`).
_known: dict[UUID, tuple[int, str]] = {}
_KNOWN_MAX = 10_000


def find_channel(public_id: UUID, *, fresh: bool = False) -> Addressed:
    known = None if fresh else _known.get(public_id)
    if known is not None:
        pk, sealed = known
        return Addressed(pk=pk, public_id=public_id, secret=_unseal(sealed), sealed=sealed)
    db = connections[DEFAULT_DB_ALIAS]
    key = Channel._meta.get_field("public_id").get_db_prep_value(public_id, db)
    with db.cursor() as cursor:
        cursor.execute(_find_sql(), [key])
        found = cursor.fetchone()
    if found is None:
        _known.pop(public_id, None)
        raise Refused("unknown_channel", "no such channel", 404)
    pk, sealed, state, portal_status = found
    secret = _unseal(sealed)
    if state != Channel.State.CONNECTED or not secret or portal_status not in Portal.SERVING:
        _known.pop(public_id, None)
        raise Refused("channel_disconnected", "the channel is not connected to an Open Line", 409)
    if len(_known) >= _KNOWN_MAX:
        _known.clear()
    _known[public_id] = (pk, sealed)
    return Addressed(pk=pk, public_id=public_id, secret=secret, sealed=sealed)


@lru_cache(maxsize=4096)
def _unseal(sealed: str | None) -> str:
    """A channel's secret from its sealed (Fernet) column, as the field would decrypt it, remembered by the
    sealed text: the row is read on every request, so a rotated secret or a re-sealed one (new keys) is new
    text and decrypted anew; nothing here can outlive a change of the row. Decrypting cost a tenth of a
    request's CPU (bench/ingest.py); this process holds the keys that open every secret anyway."""
    return Channel._meta.get_field("secret").from_db_value(sealed, None, connection)


def _forget_unsealed(*, setting: str, **kwargs: object) -> None:
    if setting == "TOKEN_ENCRYPTION_KEYS":  # (tests; a process with new keys is a new process)
        _unseal.cache_clear()


setting_changed.connect(_forget_unsealed)


def read_body(request: HttpRequest) -> bytes:
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if not (declared.isascii() and declared.isdigit()) or int(declared) > settings.OPENLINES_INBOUND_MAX_BYTES:
        raise Refused("body_too_large", f"the body must be at most {settings.OPENLINES_INBOUND_MAX_BYTES} bytes", 413)
    body = request.read(settings.OPENLINES_INBOUND_MAX_BYTES + 1)
    if len(body) > settings.OPENLINES_INBOUND_MAX_BYTES:
        raise Refused("body_too_large", f"the body must be at most {settings.OPENLINES_INBOUND_MAX_BYTES} bytes", 413)
    return body


def check_signature(channel: Addressed, request: HttpRequest, body: bytes) -> None:
    timestamp = _header(request, TIMESTAMP_HEADER)
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        raise Refused("stale_timestamp", f"{TIMESTAMP_HEADER} must be the Unix time of the request", 401)
    if abs(time.time() - int(timestamp)) > settings.OPENLINES_SIGNATURE_WINDOW:
        raise Refused(
            "stale_timestamp",
            f"{TIMESTAMP_HEADER} is outside the {settings.OPENLINES_SIGNATURE_WINDOW}s window (check the clock)",
            401,
        )
    version = _header(request, VERSION_HEADER) or "1"
    if version == "2":
        expected = sign(channel.secret, timestamp, body, INBOUND)
    elif version == "1" and v1_accepted():
        expected = sign_v1(channel.secret, timestamp, body)
    elif version == "1":
        raise Refused("bad_signature", f"version 1 signatures are no longer accepted: send {VERSION_HEADER}: 2", 401)
    else:
        raise Refused("bad_signature", f"{VERSION_HEADER} must be 2 (or 1, while it is accepted)", 401)
    presented = _header(request, SIGNATURE_HEADER)
    if not hmac.compare_digest(presented.encode("utf-8", "replace"), expected.encode()):
        raise Refused("bad_signature", f"{SIGNATURE_HEADER} does not match the body", 401)


def v1_accepted() -> bool:
    """Whether version-1 signatures (no direction) are still accepted: up to OPENLINES_SIGNATURE_V1_UNTIL (UTC)."""
    until = settings.OPENLINES_SIGNATURE_V1_UNTIL
    return until is not None and timezone.now().date() <= until


def take_quota(channel: Addressed) -> None:
    """One unit of the channel's budget (OPENLINES_INBOUND_PER_MINUTE, bursts of OPENLINES_INBOUND_BURST), taken
    only by signed requests: a stranger's unsigned ones never spend the holder's budget."""
    wait = limits.refused_for(
        f"openlines:inbound:{channel.public_id}",
        per_minute=settings.OPENLINES_INBOUND_PER_MINUTE,
        burst=settings.OPENLINES_INBOUND_BURST,
    )
    if wait is not None:
        raise Refused(
            "rate_limited",
            f"the channel takes at most {settings.OPENLINES_INBOUND_PER_MINUTE:g} requests "
            "a minute; retry after the Retry-After seconds",
            429,
            retry_after=wait,
        )


def _text(value, name: str, limit: int, *, required: bool = False) -> str:
    if value is None or value == "":
        if required:
            raise Refused("bad_request", f"{name} is required", 400)
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Refused("bad_request", f"{name} must be a string", 400)
    value = str(value)
    if len(value) > limit:
        raise Refused("bad_request", f"{name} is longer than {limit} characters", 400)
    if _CONTROL.search(value):
        raise Refused("bad_request", f"{name} holds a control character", 400)
    if not wire.is_storable_text(value):  # a lone surrogate ("\ud800" in the JSON) has no UTF-8 form
        raise Refused("bad_request", f"{name} is not valid text", 400)
    return value


def _person_name(value, name: str) -> str:
    """Letters, spaces, hyphens and apostrophes only, at most _NAME_MAX characters (see _NAME_MARKS)."""
    kept = "".join(c for c in _text(value, name, 200) if c.isalpha() or c.isspace() or c in _NAME_MARKS)
    return " ".join(kept.split())[:_NAME_MAX].strip()


def _url(value, name: str) -> str:
    value = _text(value, name, 2000)
    if value:
        try:
            outbound.check_message_url(value)
        except outbound.BadWebhookUrl as exc:
            raise Refused("bad_request", f"{name} must be a public http(s) URL ({exc})", 400) from None
    return value


def parse(body: bytes) -> tuple[str, dict[str, dict[str, JSON]]]:
    """(action, the MESSAGES element for Bitrix24) from the JSON body, or Refused."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise Refused("bad_request", "the body is not JSON", 400) from None
    if not isinstance(data, dict):
        raise Refused("bad_request", "the body must be a JSON object", 400)
    action = data.get("action", "add")
    if action not in ("add", "update", "delete", "read"):
        raise Refused("bad_request", "action must be add, update, delete or read", 400)
    chat, user, message = (data.get(k) if isinstance(data.get(k), dict) else None for k in ("chat", "user", "message"))
    if chat is None or user is None or message is None:
        raise Refused("bad_request", "chat, user and message must be objects", 400)
    # imconnector.send.messages' element, built for Bitrix24: nested JSON of several kinds.
    element: dict[str, dict[str, JSON]] = {
        "chat": {"id": _text(chat.get("id"), "chat.id", _ID_MAX, required=True)},
        "user": {"id": _text(user.get("id"), "user.id", _ID_MAX, required=True)},
        "message": {"id": _text(message.get("id"), "message.id", _ID_MAX, required=True)},
    }
    if action in ("delete", "read"):  # read: message.id is the one the webhook carried
        return action, element
    for key, limit in (("name", 128), ("url", 2000)):
        if chat.get(key):
            element["chat"][key] = _url(chat[key], "chat.url") if key == "url" else _text(chat[key], "chat.name", limit)
    for key in ("name", "last_name"):
        if user.get(key) and (person := _person_name(user[key], f"user.{key}")):
            element["user"][key] = person
    for key in ("email", "phone"):
        if user.get(key):
            element["user"][key] = _text(user[key], f"user.{key}", 200)
    if user.get("picture"):
        picture = user["picture"]
        element["user"]["picture"] = {
            "url": _url(picture.get("url") if isinstance(picture, dict) else picture, "user.picture")
        }
    text = _text(message.get("text"), "message.text", _TEXT_MAX)
    files = message.get("files") or []
    if not isinstance(files, list) or len(files) > _FILES_MAX:
        raise Refused("bad_request", f"message.files must be a list of at most {_FILES_MAX}", 400)
    if not all(isinstance(f, dict) for f in files):
        raise Refused("bad_request", "message.files[] must be objects {url, name}", 400)
    files = [
        {
            "url": _url(f.get("url"), "message.files[].url") or _missing("message.files[].url"),
            "name": _text(f.get("name"), "message.files[].name", 255),
        }
        for f in files
    ]
    if not text and not files:
        raise Refused("bad_request", "message.text or message.files is required", 400)
    date = message.get("date")
    if date is not None and (isinstance(date, bool) or not isinstance(date, int) or date < 0):
        raise Refused("bad_request", "message.date must be a Unix time in seconds", 400)
    element["message"]["text"] = text
    if date:  # else (absent or 0) the time of acceptance (`accept`), which is not part of the idempotency key
        element["message"]["date"] = date
    if files:
        element["message"]["files"] = files
    return action, element


def _reading(channel: Addressed, element: dict) -> dict:
    """The MESSAGES element of imconnector.send.status.reading for an operator message the webhook carried."""

    sent = OutboundMessage.objects.filter(
        channel_id=channel.pk, action=OutboundMessage.Action.ADD, im_message_id=element["message"]["id"]
    ).first()
    if sent is None:
        raise Refused("unknown_message", "message.id names no operator message sent to this channel", 404)
    # imconnector-send-status-reading.md: im {chat_id, message_id} (Bitrix24's ids, from the event), message
    # {id: [...]} (the outside system's ids: the one its webhook answer named, else the one it was given),
    # chat {id}.
    return {
        "im": {"chat_id": sent.im_chat_id, "message_id": sent.im_message_id},
        "message": {"id": [sent.external_message_id or sent.im_message_id]},
        "chat": {"id": sent.external_chat_id},
        "user": element["user"],
    }


def _missing(name):
    raise Refused("bad_request", f"{name} is required", 400)


def idempotency_key(action: str, element: dict) -> str:
    """A message id is accepted once per outside chat (two chats may each have a message "1")."""
    message_id = element["message"]["id"]
    chat = hashlib.sha256(element["chat"]["id"].encode()).hexdigest()[:16]  # ids up to 128: the key stays < 200
    if action != "update":
        return f"{action}:{chat}:{message_id}"
    # Every distinct edit of a message is accepted once: keyed on what the request carried (and signed), so a
    # replay of an edit that named no date is the same edit, not one dated anew.
    digest = hashlib.sha256(json.dumps(element["message"], sort_keys=True).encode()).hexdigest()[:16]
    return f"update:{chat}:{message_id}:{digest}"


class Stale(Exception):
    """The channel changed since this process read it (disconnected, its secret rotated or re-sealed, its portal
    no longer serving): nothing was stored; the request is checked again against the row as it is now."""


def accept(channel: Addressed, action: str, element: dict) -> InboundMessage:
    """Store the message for delivery, if the channel is still as read: Refused(duplicate_message) when its id
    was accepted before, Stale when the channel changed (nothing stored)."""
    key, chat_id, message_id = idempotency_key(action, element), element["chat"]["id"], element["message"]["id"]
    if action in ("add", "update"):
        element["message"].setdefault("date", int(time.time()))
    payload = _reading(channel, element) if action == "read" else element
    row = InboundMessage(
        channel_id=channel.pk,
        action=action,
        key=key,
        external_chat_id=chat_id,
        external_message_id=message_id,
        payload=payload,
    )
    condition = [channel.pk, channel.sealed, Channel.State.CONNECTED, *Portal.SERVING]
    try:
        # One INSERT prepared from the model's metadata (inbox/rows.py), with the channel's state checked in its
        # own statement: a disconnect or a new secret committed before it is seen, whatever this process read.
        if transaction.get_connection().in_atomic_block:
            # Inside a caller's transaction a savepoint keeps a duplicate's IntegrityError from breaking it.
            with transaction.atomic():
                stored = rows.insert_where(row, _serving_sql(), condition)
        else:
            # A request runs in autocommit: the INSERT is stored (committed) by itself before the 202, in one
            # round trip where atomic() would add BEGIN and COMMIT.
            stored = rows.insert_where(row, _serving_sql(), condition)
    except IntegrityError:
        raise Refused("duplicate_message", "this message id was accepted before", 409) from None
    if not stored:
        _known.pop(channel.public_id, None)
        raise Stale
    now = time.monotonic()
    if now - _activity_noted.get(channel.public_id, -ACTIVITY_SECONDS) >= ACTIVITY_SECONDS:
        if len(_activity_noted) >= _KNOWN_MAX:
            _activity_noted.clear()
        _activity_noted[channel.public_id] = now
        _note_activity(channel, timezone.now())
    return row


# When this process last wrote a channel's last_activity_at (time.monotonic()), by public id.
_activity_noted: dict[UUID, float] = {}


def _note_activity(channel: Addressed, now) -> None:
    """The channel's last activity (shown in the admin and its settings). The message is stored already: a
    database that fails now must not turn its 202 into a 5xx (the sender would see a refusal for a message we
    keep and deliver), so a failure here is logged and the next message writes it."""
    in_transaction = transaction.get_connection().in_atomic_block
    try:
        if in_transaction:  # a savepoint: the caller's transaction survives the failure
            with transaction.atomic():
                Channel.objects.filter(pk=channel.pk).update(last_activity_at=now)
        else:
            Channel.objects.filter(pk=channel.pk).update(last_activity_at=now)
    except DatabaseError as exc:
        log.warning("channel activity not recorded", extra={"channel": channel.pk, "error": type(exc).__name__})
