"""Handlers of the connector events, registered with the inbox (inbox/queue.py, its event-code seam).

Each takes the stored event (`item.portal`, `item.data` as Bitrix24 sent it), is idempotent (an event
may be handled again), and returns a short outcome. Pages: api-reference/imopenlines/imconnector/events/.
An event pulled from the portal's offline queue (inbox/offline.py) carries only the ids (`CONNECTOR`, `LINE`,
each message's `im` and `chat`), which is all these read: text, author and files come from the portal's
history (confirm.py) either way.
"""

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from bitrix24.errors import RestError
from bitrix24.wire import JSON
from inbox import rows
from inbox.models import InboxItem
from inbox.registry import Handler, Later, Reject, Retry

from . import confirm, lifecycle, registry, tasks, waiting
from .inbound import ACTIVITY_RESOLUTION
from .models import Channel, OutboundMessage, WaitingReply

log = logging.getLogger(__name__)
# The history's dates are whole seconds of the portal's clock: a margin for both.
CLOCK_MARGIN = timedelta(minutes=5)
_ID = re.compile(r"[0-9]{1,32}")  # im chat and message ids: ASCII digits (str.isdigit() admits "²")


def _channel(item) -> Channel:
    """The connected channel the event names, with its portal, in one statement (the event's row knows the
    portal's id: the portal is not loaded on its own first, and the channel's REST calls reuse this one)."""
    data = item.data if isinstance(item.data, dict) else {}
    connector = registry.get(str(data.get("CONNECTOR") or ""))
    line = str(data.get("LINE") or "")
    # (an InboxItem has portal_id; a handler may also be given any row with a `portal`)
    portal_id = getattr(item, "portal_id", None) or getattr(getattr(item, "portal", None), "pk", None)
    channel = (
        Channel.objects.select_related("portal")
        .filter(
            portal_id=portal_id,
            connector_id=getattr(connector, "id", ""),
            line_id=line,
            state=Channel.State.CONNECTED,
        )
        .first()
        if connector and portal_id
        else None
    )
    if channel is None:
        raise Reject("no connected channel for this connector and line")
    return channel


def _str(value, limit: int) -> str:
    # No NUL: PostgreSQL keeps none in text or JSON, and the outside system's webhook needs none.
    return str(value if value is not None else "").replace("\x00", "")[:limit]


def queue_confirmed(channel: Channel, action: str, confirmed: list[confirm.Confirmed]) -> int:
    """Queue the confirmed messages for the webhook: what the portal showed, not what the event said."""
    stored = 0
    for item in confirmed:
        claim = item.claim
        payload: dict[str, JSON] = {  # the webhook's JSON body, for the outside system
            "event": f"message.{action}",
            "chat": {"id": claim.external_chat_id},
            "message": {
                "id": claim.im_message_id,
                "text": item.text,
                "user_id": item.author.get("id", ""),
                "author": item.author,
            },
            "im": {"chat_id": claim.im_chat_id, "message_id": claim.im_message_id},
        }
        if action == OutboundMessage.Action.DELETE:
            payload["message"] = {"id": claim.im_message_id, "text": ""}
        elif item.files:
            payload["message"]["files"] = item.files
        if action == OutboundMessage.Action.UPDATE and _unchanged(channel, payload):
            continue  # the portal shows what was relayed last (a late or forged edit event)
        try:
            with transaction.atomic():
                # OutboundMessage.objects.create without its per-call SQL compilation (inbox/rows.py)
                rows.insert(
                    OutboundMessage(
                        channel=channel,
                        action=action,
                        key=_key(channel, action, payload),
                        im_chat_id=claim.im_chat_id,
                        im_message_id=claim.im_message_id,
                        external_chat_id=claim.external_chat_id,
                        payload=payload,
                        im_session_id=item.session_id,
                    )
                )
            stored += 1
        except IntegrityError:
            pass  # the same event again: stored once
    now = timezone.now()
    if stored and (channel.last_activity_at is None or now - channel.last_activity_at >= ACTIVITY_RESOLUTION):
        # At most once a minute, as for inbound messages: under a backlog of replies one UPDATE a minute of the
        # channel's row (which the relay's leases also write), not one per reply.
        Channel.objects.filter(pk=channel.pk).update(last_activity_at=now)
        channel.last_activity_at = now
    return stored


def _unchanged(channel: Channel, payload: dict) -> bool:
    """The portal shows what was relayed last for this message: its text and its files' names (the author's
    display name may change, and a file's link may carry a fresh token on each answer)."""
    last = (
        OutboundMessage.objects.filter(
            channel=channel,
            im_message_id=payload["message"]["id"],
            action__in=[OutboundMessage.Action.ADD, OutboundMessage.Action.UPDATE],
        )
        .order_by("-id")
        .values_list("payload", flat=True)
        .first()
    )
    if not isinstance(last, dict):
        return False
    before, now = last.get("message") or {}, payload["message"]
    return before.get("text") == now.get("text") and _file_names(before) == _file_names(now)


def _file_names(message: dict) -> list:
    return [f.get("name") for f in message.get("files") or [] if isinstance(f, dict)]


def _key(channel: Channel, action: str, payload: dict) -> str:
    """An add or delete is stored once per message; the n-th relayed edit of a message is `update:<id>:<n>`, so
    the same event handled twice stores one row (and `_unchanged` drops a repeat of the last edit), while
    an edit back to an earlier text (A, B, A, B) is still relayed."""
    message_id = payload["message"]["id"]
    if action != OutboundMessage.Action.UPDATE:
        return f"{action}:{message_id}"
    edits = OutboundMessage.objects.filter(
        channel=channel, action=OutboundMessage.Action.UPDATE, im_message_id=message_id
    ).count()
    return f"update:{message_id}:{edits + 1}"


@dataclass
class Relayed:
    """What `relay` did with an event's claims (or a reconciliation pass's)."""

    stored: int = 0
    held: int = 0
    confirmed: int = 0
    refused: list[str] = field(default_factory=list)
    waits: bool = False  # some claim waits for a reader (openlines.waiting)
    asked: bool = False  # the portal was asked (some claim was not relayed yet)


def relay(
    channel: Channel,
    action: str,
    claims: list[confirm.Claim],
    *,
    event_token: str = "",
    catch_up: bool = True,
    limit_retries: int | None = None,
) -> Relayed:
    """Confirm the claims with the portal and queue what it shows for the webhook (or keep it waiting for a
    reader): what an event does, and what openlines.reconcile does for an event that never came. Raises
    RestError when the portal could not be asked.

    `catch_up` (new messages): earlier operator messages of the same chat that the history just read shows and
    that were never relayed (their events refused while we were down, or still on their way) are relayed first,
    so the outside system gets the chat in the order it was written; reconciliation, which walks the whole
    history itself, passes False. `limit_retries`: the client's, for the portal's answers (confirm.confirm)."""
    if action != OutboundMessage.Action.UPDATE:
        # A message is added once and deleted once: an event already relayed (the same event handled again,
        # seen both online and offline, inbox/offline.py, or found by reconciliation) costs no call to the portal.
        claims = _not_relayed(channel, action, claims)
        if not claims:
            return Relayed()
    confirmed, refused, unread = confirm.confirm(
        channel, action, claims, event_token=event_token, limit_retries=limit_retries
    )
    if catch_up and action == OutboundMessage.Action.ADD and confirmed:
        earlier = _missed_before(channel, confirmed)
        if earlier:
            caught = relay(channel, action, earlier, catch_up=False, limit_retries=limit_retries)
            log.warning(
                "operator messages no event brought relayed before a newer one",
                extra={"member_id": channel.portal.member_id, "line": channel.line_id, "count": caught.stored},
            )
    found = len(confirmed)
    confirmed, queued_behind = waiting.behind(channel, confirmed)
    held = waiting.hold(channel, action, unread + queued_behind) if unread or queued_behind else 0
    stored = queue_confirmed(channel, action, confirmed)
    return Relayed(
        stored=stored, held=held, confirmed=found, refused=refused, waits=bool(unread or queued_behind), asked=True
    )


def _on_message(action: str) -> Handler:
    def handler(item: InboxItem) -> str:
        channel = _channel(item)
        claims = confirm.claims_of(item.data)
        if not claims:
            raise Reject("the event names no message (MESSAGES with im.chat_id and im.message_id)")
        try:
            # No limit answer is retried in this worker (the client's default: 12 times, each at a slowed slot,
            # the worker held meanwhile and the lane's next events behind it): the row waits for the portal's
            # next slot in the inbox instead, no attempt counted (Later), as the inbound relay does.
            done = relay(channel, action, claims, event_token=_event_token(item), limit_retries=0)
        except RestError as exc:
            wait = tasks.limit_wait(channel.portal, exc)
            if wait is not None:  # the portal's bucket is full, or our limiter says so: later, not a failure
                raise Later(f"the portal's limit ({exc.code})", wait.total_seconds()) from None
            raise Retry(f"the portal could not confirm the message(s): {exc.code}") from None
        if not done.asked:
            return "0 message(s) queued for the webhook"
        if not done.confirmed and not done.waits:
            raise Reject("not confirmed by the portal: " + "; ".join(done.refused)[:900])
        tasks.after_commit(tasks.deliver_outbound, channel.pk)
        return (
            f"{done.stored} message(s) queued for the webhook"
            + (f"; {done.held} waiting for someone who may read the conversation" if done.waits else "")
            + (f"; not confirmed: {'; '.join(done.refused)}" if done.refused else "")
        )

    handler.__name__ = f"on_message_{action}"
    return handler


def _event_token(item: InboxItem) -> str:
    """The access token the event came with (an operator's; offline records carry none). Only ever sent back
    to the portal's stored address, which checks it; never logged."""
    try:
        token = item.auth.get("access_token") if isinstance(item.auth, dict) else ""
    except ValueError:
        return ""
    return token if isinstance(token, str) and 0 < len(token) <= 512 else ""


def _missed_before(channel: Channel, confirmed: list[confirm.Confirmed]) -> list[confirm.Claim]:
    """Operator messages older than the confirmed ones, in the chat history confirm just read (kept fresh in the
    cache: no call here), never relayed nor waiting, written since the channel carries the chat."""
    since = timezone.now() - timedelta(hours=settings.OPENLINES_RECONCILE_HOURS)
    if channel.connected_at and channel.connected_at > since:
        since = channel.connected_at
    first: dict[tuple[str, str], int] = {}
    for done in confirmed:
        key = (done.claim.im_chat_id, done.claim.external_chat_id)
        first[key] = min(first.get(key, int(done.claim.im_message_id)), int(done.claim.im_message_id))
    missed: list[confirm.Claim] = []
    for (chat, external), newest in first.items():
        history = confirm.cached_history(channel, chat)
        if history is None:
            continue  # not kept (too large): reconciliation finds them
        shown = history["messages"]
        candidates = [
            m
            for m in sorted(shown, key=int)
            if int(m) < newest
            and shown[m]["kind"] == "operator"
            and not shown[m]["deleted"]
            and written_since(shown[m], since)
        ]
        if not candidates:
            continue
        relayed = {m for (m,) in _relayed_rows(channel, OutboundMessage.Action.ADD, candidates, chat=chat)}
        unknown = [m for m in candidates if m not in relayed]
        if not unknown:
            continue  # the usual case: one indexed query per event, nothing missed
        waits = set(
            WaitingReply.objects.filter(
                channel=channel, im_chat_id=chat, im_message_id__in=unknown, state=WaitingReply.State.WAITING
            ).values_list("im_message_id", flat=True)
        )
        missed += [confirm.Claim(chat, m, external) for m in unknown if m not in waits]
    return missed


def written_since(message: dict, since: datetime) -> bool:
    """Whether a history message was written at or after `since` (give or take the portal's clock)."""
    try:
        written = datetime.fromisoformat(message.get("date") or "")
    except ValueError:
        return True  # no date to go by: the message is in a conversation this channel carries
    return written.tzinfo is None or written >= since - CLOCK_MARGIN


def _not_relayed(channel: Channel, action: str, claims: list) -> list:
    """The claims not relayed yet with this action: a claim counts as relayed only when its chat, its message and
    its outside chat are the relayed row's (a claim that names them otherwise is confirmed, and refused, as ever)."""
    done = set(_relayed_rows(channel, action, [c.im_message_id for c in claims]))
    return [c for c in claims if (c.im_chat_id, c.im_message_id, c.external_chat_id) not in done]


@lru_cache(maxsize=1)
def _outbound_columns() -> dict[str, str]:
    meta = OutboundMessage._meta
    return {"table": meta.db_table, **{f.attname: str(f.column) for f in meta.concrete_fields}}


def _relayed_rows(channel: Channel, action: str, message_ids: list[str], *, chat: str | None = None) -> list[tuple]:
    """The channel's webhook rows of `action` for these im message ids: (im chat, im message, outside chat) each,
    or, with `chat`, the im message ids of that chat's. A raw statement from the model's metadata: these two
    reads run for every reply event, and the ORM compiled them anew each time."""
    if not message_ids:
        return []
    c = _outbound_columns()
    columns = (
        c["im_message_id"] if chat is not None else f"{c['im_chat_id']}, {c['im_message_id']}, {c['external_chat_id']}"
    )
    sql = (
        f"SELECT {columns} FROM {c['table']} WHERE {c['channel_id']} = %s AND {c['action']} = %s"
        + (f" AND {c['im_chat_id']} = %s" if chat is not None else "")
        + f" AND {c['im_message_id']} IN ({', '.join(['%s'] * len(message_ids))})"
    )
    params: list[int | str] = [channel.pk, str(action), *([str(chat)] if chat is not None else [])]
    params += [str(m) for m in message_ids]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


on_message_add = _on_message(OutboundMessage.Action.ADD)
on_message_update = _on_message(OutboundMessage.Action.UPDATE)
on_message_delete = _on_message(OutboundMessage.Action.DELETE)


def on_status_delete(item: InboxItem) -> str:
    """events/on-im-connector-status-delete.md: data {connector, line}: our connector left the line."""
    data = item.data if isinstance(item.data, dict) else {}
    connector = registry.get(str(data.get("connector") or ""))
    if connector is None or item.portal is None:
        raise Reject("not our connector")
    count = _revoke(
        item.portal,
        str(data.get("line") or ""),
        connector_id=connector.id,
        reason="connector removed from the line in Bitrix24",
    )
    return f"{count} channel(s) revoked"


def on_line_delete(item: InboxItem) -> str:
    """events/on-im-connector-line-delete.md: data is the bare line id."""
    # /events/ keeps a bare data value as {"VALUE": ...} (inbox/parsing.py).
    line = item.data if not isinstance(item.data, dict) else item.data.get("VALUE", item.data.get("LINE", ""))
    if item.portal is None or not _ID.fullmatch(str(line)):
        raise Reject("no line id")
    count = _revoke(item.portal, str(line), reason="Open Line deleted in Bitrix24")
    return f"{count} channel(s) revoked"


def _revoke(portal, line: str, **kwargs) -> int:
    try:
        return lifecycle.revoke_line(portal, line, **kwargs)
    except lifecycle.StillActive as exc:
        raise Reject(f"not confirmed by the portal: {exc}") from None
    except RestError as exc:
        raise Retry(f"the portal could not confirm the teardown: {exc.code}") from None


HANDLERS: dict[str, Handler] = {
    "ONIMCONNECTORMESSAGEADD": on_message_add,
    "ONIMCONNECTORMESSAGEUPDATE": on_message_update,
    "ONIMCONNECTORMESSAGEDELETE": on_message_delete,
    "ONIMCONNECTORSTATUSDELETE": on_status_delete,
    "ONIMCONNECTORLINEDELETE": on_line_delete,
}
