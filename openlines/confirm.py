"""What the portal itself shows of an operator's message, before anything is relayed.

Connector events are believed on `application_token` (api-reference/events/safe-event-handlers.md), and
every user of the portal holds that token: it is in each placement POST. So an event only says *which*
message of *which* chat changed. What goes to the outside system is what the portal shows us, asked with
the app's own tokens (imopenlines.session.history.get,
api-reference/imopenlines/openlines/sessions/imopenlines-session-history-get.md):

- the chat must be one of this channel's conversations (a message we sent into it came back with that
  chat id and that outside chat id), and the portal's chat must be this connector's on this line
  (entityType LINES, entityId `connector|line|...`);
- a new or edited message must be in the chat's history, not written by the customer (a connector
  user); its text, author and files are the history's, never the event's;
- a deletion is believed once the message is gone from the history (or flagged IS_DELETED: the docs are
  silent on how a deleted message shows) and only for a message we relayed.

When the app's tokens may not read the chat (ACCESS_DENIED: the installing administrator lost access to
the line), the page's own advice comes first: "You should use the SESSION_ID parameter; with it, no error is
returned", with the sessions this channel saw; then the event's own authorization (the operator who wrote
it; the portal checks that token when it answers). If neither can, the claim *waits* (NoReader,
openlines.models.WaitingReply): never relayed unconfirmed, never dropped.

One history call covers every message of a chat in one event. A fresh answer (HISTORY_FRESH, 2 min) is
reused for new messages it already holds, so a backlog of replies in one chat costs one call, not one
per reply; a miss asks, in one batch request, for up to 49 other chats whose waiting events the answers
kept do not cover (none kept, or one read before those replies were written).
Edits and deletions always ask again.
"""

import logging
import re
from dataclasses import dataclass, field

from bitrix24 import limits
from bitrix24.errors import RestError, TransportError
from bitrix24.wire import JSON
from inbox import queue
from portals.tokens import PortalClient

from . import tasks
from .models import Channel, Delivery, InboundMessage, OutboundMessage

log = logging.getLogger(__name__)

# Seconds a history answer confirms new messages it holds. Safe for adds only: a message edited or deleted
# since is followed by its own update or delete event, which always asks again.
HISTORY_FRESH = 120
_FINAL = frozenset({"ACCESS_DENIED", "INVALID_SESSION_ID", "MISSING_REQUIRED_PARAM"})  # the page's errors
_ID = re.compile(r"[0-9]{1,32}")
_TEXT_MAX, _FILES_MAX = 20000, 10
_CLAIMS_MAX = 100  # MESSAGES elements read from one event
_HISTORY = "imopenlines.session.history.get"
_BATCH, _PREFETCH_SCAN = 50, 200  # commands per batch request (batch.md); waiting events looked at
_GROUPS_PER_EVENT = 3  # (chat, session) pairs asked for per event: Bitrix24 sends one message per event
_CHATS_PER_EVENT = 5  # chats of one waiting event the prefetch looks at
_EARLIER_SESSIONS = 2  # earlier sessions of a chat asked for a reply missing from its last one
_CACHE_MAX_MESSAGES, _CACHE_MAX_TEXT = 500, 1_000_000  # a bigger session is asked again each time


class NoReader(str):
    """Why nobody the app can ask may read a conversation: its claims wait instead of being refused."""


@dataclass
class Claim:
    """One MESSAGES element of an event, as claimed (ids already checked to be ASCII digits)."""

    im_chat_id: str
    im_message_id: str
    external_chat_id: str


@dataclass
class Confirmed:
    claim: Claim
    session_id: str = ""
    text: str = ""
    author: dict = field(default_factory=dict)  # {"id", "name"}
    files: list = field(default_factory=list)  # [{"url", "name"}]


def _s(value, limit: int) -> str:
    return str(value if value is not None else "").replace("\x00", "")[:limit]


def _messages(data) -> list:
    messages = data.get("MESSAGES") if isinstance(data, dict) else None
    if isinstance(messages, dict):  # form-encoded MESSAGES[0][...] arrives as a dict keyed "0", "1", ...
        messages = [
            messages[k] for k in sorted(messages, key=lambda k: int(k) if str(k).isascii() and str(k).isdigit() else 0)
        ]
    return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []


def claims_of(data: JSON) -> list[Claim]:
    """The claims of an event's MESSAGES (at most _CLAIMS_MAX), each with ASCII-digit im ids."""
    found = []
    for message in _messages(data)[:_CLAIMS_MAX]:
        im = message.get("im") if isinstance(message.get("im"), dict) else {}
        chat = message.get("chat") if isinstance(message.get("chat"), dict) else {}
        im_chat, im_message = _s(im.get("chat_id"), 32), _s(im.get("message_id"), 32)
        if _ID.fullmatch(im_chat) and _ID.fullmatch(im_message):
            found.append(Claim(im_chat, im_message, _s(chat.get("id"), 128)))
    return found


def confirm(
    channel: Channel, action: str, claims: list[Claim], *, event_token: str = "", limit_retries: int | None = None
) -> tuple[list[Confirmed], list[str], list[tuple[Claim, str]]]:
    """(what the portal confirms, why each other claim was not, the claims that wait with why). Raises
    RestError when the portal could not be asked (the caller retries; a limit answer, code in
    openlines.tasks.LIMIT_CODES, is raised as it came, for the caller to wait `tasks.limit_wait`); a refusal the
    history page documents only fails that chat's claims; an ACCESS_DENIED that no other source gets past makes
    them wait. `event_token`: the access token the event came with (its `auth`), a second source for a chat the
    app's tokens may not read. `limit_retries`: the client's (bitrix24.client.Client), for every call made here;
    0 for an event's handler, which waits for the bucket in the inbox instead (openlines/events.py)."""
    confirmed: list[Confirmed] = []
    refused: list[str] = []
    waiting: list[tuple[Claim, str]] = []
    ours = _our_conversations(channel, claims)
    relayed = _relayed(channel, claims) if action != OutboundMessage.Action.ADD else {}
    by_chat: dict[tuple[str, str], list[Claim]] = {}
    for claim in claims:
        if (claim.im_chat_id, claim.external_chat_id) not in ours:
            refused.append(f"{claim.im_message_id}: not a conversation of this channel")
        elif action != OutboundMessage.Action.ADD and (claim.im_chat_id, claim.im_message_id) not in relayed:
            refused.append(f"{claim.im_message_id}: never relayed in this chat, so not ours to change")
        elif action == OutboundMessage.Action.DELETE and not relayed[(claim.im_chat_id, claim.im_message_id)]:
            # Only a message missing from the session it was seen in is believed deleted: without that
            # session (a message relayed before sessions were recorded), absence proves nothing.
            refused.append(f"{claim.im_message_id}: no session recorded for it, so its deletion cannot be confirmed")
        else:
            group = (claim.im_chat_id, relayed.get((claim.im_chat_id, claim.im_message_id), ""))
            if group not in by_chat and len(by_chat) >= _GROUPS_PER_EVENT:
                refused.append(f"{claim.im_message_id}: more than {_GROUPS_PER_EVENT} chats or sessions in one event")
                continue
            by_chat.setdefault(group, []).append(claim)
    for (chat_id, session), chat_claims in by_chat.items():
        history = _history(
            channel,
            chat_id,
            session,
            fresh_ok=action == OutboundMessage.Action.ADD,
            wanted=[c.im_message_id for c in chat_claims],
            event_token=event_token,
            limit_retries=limit_retries,
        )
        if isinstance(history, NoReader):
            waiting += [(c, str(history)) for c in chat_claims]
            continue
        if isinstance(history, str):
            refused += [f"{c.im_message_id}: {history}" for c in chat_claims]
            continue
        verdicts = [(claim, _judge(action, claim, history)) for claim in chat_claims]
        missing = [claim for claim, verdict in verdicts if verdict == _missing(claim)]
        if missing and action != OutboundMessage.Action.DELETE and not session:
            # By CHAT_ID alone the portal shows the chat's last session: a reply written before the customer
            # opened a new one is in an earlier session the channel saw (its inbound messages name them).
            found = _in_earlier_sessions(
                channel, chat_id, history["session"], action, missing, limit_retries=limit_retries
            )
            verdicts = [(claim, found.get(claim.im_message_id, verdict)) for claim, verdict in verdicts]
        for _claim, verdict in verdicts:
            (confirmed if isinstance(verdict, Confirmed) else refused).append(verdict)
    if refused:
        log.warning(
            "operator message not confirmed by the portal",
            extra={
                "member_id": channel.portal.member_id,
                "line": channel.line_id,
                "action": action,
                "count": len(refused),
            },
        )
    return confirmed, refused, waiting


def _missing(claim: Claim) -> str:
    return f"{claim.im_message_id}: not in the conversation"


def _in_earlier_sessions(
    channel: Channel, chat_id: str, seen: str, action: str, claims: list[Claim], *, limit_retries: int | None = None
) -> dict:
    """{im message id: Confirmed} for the claims found in the chat's earlier sessions (at most
    _EARLIER_SESSIONS of them, newest first, as this channel's inbound messages recorded them)."""
    sessions = [s for s in _known_sessions(channel, chat_id) if s != seen]
    found, left = {}, list(claims)
    for session in sessions[:_EARLIER_SESSIONS]:
        history = _history(channel, chat_id, session, fresh_ok=False, wanted=[], limit_retries=limit_retries)
        if isinstance(history, str):
            continue
        for claim in list(left):
            verdict = _judge(action, claim, history)
            if isinstance(verdict, Confirmed) or verdict != _missing(claim):
                found[claim.im_message_id] = verdict
                left.remove(claim)
        if not left:
            break
    return found


def _known_sessions(channel: Channel, chat_id: str) -> list[str]:
    """The chat's sessions this channel saw (its inbound messages and relayed replies name them), newest first."""
    sessions: list[str] = []
    inbound = (
        InboundMessage.objects.filter(channel=channel, im_chat_id=chat_id, state=Delivery.SENT)
        .exclude(session_id="")
        .order_by("-id")
        .values_list("session_id", flat=True)[:200]
    )
    relayed = (
        OutboundMessage.objects.filter(channel=channel, im_chat_id=chat_id)
        .exclude(im_session_id="")
        .order_by("-id")
        .values_list("im_session_id", flat=True)[:200]
    )
    for session in sorted({*inbound, *relayed}, key=lambda s: int(s) if _ID.fullmatch(s) else -1, reverse=True):
        if _ID.fullmatch(session):
            sessions.append(session)
    return sessions


def _other_sources(
    channel: Channel, chat_id: str, wanted: list[str], event_token: str, *, limit_retries: int | None = None
):
    """The chat's history from a source that may read it, after the app's tokens got ACCESS_DENIED by CHAT_ID;
    or NoReader. Session ids are Bitrix24's own numbering, so the newest known session has the highest id.
    A limit answer is raised: it says nothing of who may read the chat."""
    # The page: "You should use the SESSION_ID parameter; with it, no error is returned."
    for session in _known_sessions(channel, chat_id)[: _EARLIER_SESSIONS + 1]:
        history = _history(channel, chat_id, session, fresh_ok=False, wanted=[], limit_retries=limit_retries)
        if isinstance(history, dict) and all(m in history["messages"] for m in wanted):
            return history
    # The event's own authorization: the portal answers only a token it issued and whose user may read.
    if event_token:
        try:
            answer = PortalClient(channel.portal, access_token=event_token, limit_retries=limit_retries).call(
                _HISTORY, {"CHAT_ID": int(chat_id)}
            )
        except RestError as exc:
            if exc.code in tasks.LIMIT_CODES:
                raise
            log.info(
                "the event's own token could not read the conversation either",
                extra={"member_id": channel.portal.member_id, "code": exc.code},
            )
        else:
            if isinstance(answer, dict):
                return _parse(channel, chat_id, answer)
    return NoReader("nobody the app can ask may read this conversation (ACCESS_DENIED); waiting")


def _our_conversations(channel: Channel, claims: list[Claim]) -> set[tuple[str, str]]:
    chats = {c.im_chat_id for c in claims}
    return set(
        InboundMessage.objects.filter(channel=channel, im_chat_id__in=chats, state=Delivery.SENT)
        .values_list("im_chat_id", "external_chat_id")
        .distinct()
    )


def _relayed(channel: Channel, claims: list[Claim]) -> dict[tuple[str, str], str]:
    """(im chat id, im message id) -> the session its relayed add was seen in, for each claim whose message
    we relayed in that same chat."""
    pairs = {(c.im_chat_id, c.im_message_id) for c in claims}
    rows = OutboundMessage.objects.filter(
        channel=channel, action=OutboundMessage.Action.ADD, im_message_id__in={m for _, m in pairs}
    )
    return {
        (chat, m): s or ""
        for chat, m, s in rows.values_list("im_chat_id", "im_message_id", "im_session_id")
        if (chat, m) in pairs
    }


def _history_key(channel: Channel, chat_id: str, session: str) -> str:
    return f"b24widget:openlines:history:{channel.portal_id}:{channel.pk}:{chat_id}:{session}"


def _history(
    channel: Channel,
    chat_id: str,
    session: str,
    *,
    fresh_ok: bool,
    wanted: list[str],
    event_token: str = "",
    limit_retries: int | None = None,
):
    """The chat's history as {"session", "messages": {id: {...}}}, checked to be this channel's chat; or a
    reason (str) the portal gave for not showing it. Raises RestError when the portal could not be asked (a
    limit answer too: the calls use `limit_retries`, confirm's).

    For new messages (`fresh_ok`) a fresh answer is reused, and a miss also asks, in the same batch request,
    for the other chats of this channel whose new-message events wait in the inbox: under a backlog one
    request confirms up to 50 chats, and their events then find their answers here."""
    key = _history_key(channel, chat_id, session)
    if fresh_ok:
        cached = limits.cache.get(key)
        if isinstance(cached, dict) and all(m in cached["messages"] for m in wanted):
            return cached
    params = {"SESSION_ID": int(session)} if session else {}
    params["CHAT_ID"] = int(chat_id)
    others = _waiting_chats(channel, exclude=chat_id) if fresh_ok and not session else []
    client = PortalClient(channel.portal, limit_retries=limit_retries)
    if not others:
        try:
            answer = client.call(_HISTORY, params)
        except RestError as exc:
            if exc.code == "ACCESS_DENIED" and not session:
                return _other_sources(channel, chat_id, wanted, event_token, limit_retries=limit_retries)
            return _refusal(exc)
        return _answer(channel, chat_id, session, answer)
    try:
        result = client.batch({f"c{chat}": (_HISTORY, {"CHAT_ID": int(chat)}) for chat in [chat_id, *others]})
    except RestError as exc:  # the others are extra; a limit answer is not about them: asking alone meets it too
        if exc.code in tasks.LIMIT_CODES:
            raise
        return _history(
            channel,
            chat_id,
            session,
            fresh_ok=False,
            wanted=wanted,
            event_token=event_token,
            limit_retries=limit_retries,
        )
    for chat in others:
        if isinstance(result.result.get(f"c{chat}"), dict):
            _keep(channel, chat, _parse(channel, chat, result.result[f"c{chat}"]))
    if f"c{chat_id}" in result.errors:
        if result.errors[f"c{chat_id}"].code == "ACCESS_DENIED":
            return _other_sources(channel, chat_id, wanted, event_token, limit_retries=limit_retries)
        return _refusal(result.errors[f"c{chat_id}"])
    return _answer(channel, chat_id, session, result.result.get(f"c{chat_id}"))


def _answer(channel: Channel, chat_id: str, session: str, answer):
    """The parsed history, kept in the cache when it is the chat's last session (only adds read it); an
    answer that is not an object is the portal failing, not a refusal: raised, so the event is retried."""
    if not isinstance(answer, dict):
        raise TransportError("bad_answer", "the history answer is not an object", method=_HISTORY)
    history = _parse(channel, chat_id, answer)
    return _keep(channel, chat_id, history) if not session else history


def _refusal(exc: RestError) -> str:
    """The reason for a refusal the history page documents; any other error is raised (the event is retried)."""
    if exc.code in _FINAL:
        return f"the portal did not show the conversation ({exc.code})"
    raise exc


def cached_history(channel: Channel, chat_id: str) -> dict | None:
    """The chat's last session as confirm last read it, when that answer is still fresh (no call to the portal)."""
    cached = limits.cache.get(_history_key(channel, chat_id, ""))
    return cached if isinstance(cached, dict) else None


def _keep(channel: Channel, chat_id: str, history):
    if (
        isinstance(history, dict)
        and len(history["messages"]) <= _CACHE_MAX_MESSAGES
        and sum(len(m["text"]) + sum(len(f["url"]) for f in m["files"]) for m in history["messages"].values())
        <= _CACHE_MAX_TEXT
    ):
        limits.cache.set(_history_key(channel, chat_id, ""), history, HISTORY_FRESH)
    return history


def last_sessions(channel: Channel, chat_ids: list[str], *, limit_retries: int | None = None) -> dict[str, dict | str]:
    """{chat id: its last session's history (as confirm reads it) or why the portal did not show it}, asked
    _BATCH chats per batch request (batch.md) with the app's tokens; each answer is kept as a fresh answer,
    so confirming new messages it holds right after costs nothing. Raises RestError when the portal could
    not be asked at all. `limit_retries`: the client's (0: a limit answer is not waited out here)."""
    found: dict[str, dict | str] = {}
    client = PortalClient(channel.portal, limit_retries=limit_retries)
    for start in range(0, len(chat_ids), _BATCH):
        chunk = chat_ids[start : start + _BATCH]
        result = client.batch({f"c{chat}": (_HISTORY, {"CHAT_ID": int(chat)}) for chat in chunk})
        for chat in chunk:
            if f"c{chat}" in result.errors:
                error = result.errors[f"c{chat}"]
                found[chat] = (
                    _other_sources(channel, chat, [], "")  # its sessions, as the page advises
                    if error.code == "ACCESS_DENIED"
                    else f"the portal did not show the conversation ({error.code})"
                )
            elif isinstance(answer := result.result.get(f"c{chat}"), dict):
                found[chat] = _keep(channel, chat, _parse(channel, chat, answer))
            else:
                found[chat] = "the history answer is not an object"
    return found


def _waiting_chats(channel: Channel, *, exclude: str) -> list[str]:
    """Up to 49 other conversations of this channel with a new-message event waiting in the inbox that no fresh
    history answer covers: none is kept, or the one kept was read before the waiting message was written (a
    live stream of replies in one chat would otherwise cost a request per reply). Chats named by events that
    are not the channel's conversations are left out."""
    waiting = queue.waiting(channel.portal.member_id, "ONIMCONNECTORMESSAGEADD", limit=_PREFETCH_SCAN)
    chats: dict[str, set[str]] = {}  # chat -> its waiting messages, in the order the events wait
    for data in waiting:
        if (
            str(data.get("LINE") or "") != channel.line_id
            or str(data.get("CONNECTOR") or "").lower() != channel.connector_id.lower()
        ):
            continue
        for claim in claims_of(data)[:_CHATS_PER_EVENT]:
            if claim.im_chat_id != exclude:
                chats.setdefault(claim.im_chat_id, set()).add(claim.im_message_id)
        if len(chats) >= 2 * _BATCH:
            break
    if not chats:
        return []
    ours = set(
        InboundMessage.objects.filter(channel=channel, im_chat_id__in=list(chats), state=Delivery.SENT).values_list(
            "im_chat_id", flat=True
        )
    )
    fresh = limits.cache.get_many([_history_key(channel, chat, "") for chat in chats])

    def covered(chat: str) -> bool:
        kept = fresh.get(_history_key(channel, chat, ""))
        return isinstance(kept, dict) and chats[chat] <= set(kept["messages"])

    return [chat for chat in chats if chat in ours and not covered(chat)][: _BATCH - 1]


def _parse(channel: Channel, chat_id: str, answer):
    chats = answer.get("chat") if isinstance(answer.get("chat"), dict) else {}
    chat = found if isinstance(found := chats.get(chat_id), dict) else {}
    entity = _s(chat.get("entityId"), 300).split("|")
    if (
        _s(answer.get("chatId"), 32) != chat_id
        or chat.get("entityType") != "LINES"
        or len(entity) < 2
        or (entity[0].lower(), entity[1]) != (channel.connector_id.lower(), channel.line_id)
    ):
        return "the portal's chat is not this connector's on this line"
    messages = answer.get("message") if isinstance(answer.get("message"), dict) else {}
    users = answer.get("users") if isinstance(answer.get("users"), dict) else {}
    files = answer.get("files") if isinstance(answer.get("files"), dict) else {}
    keep = {}
    for m in messages.values():
        if not isinstance(m, dict) or not _ID.fullmatch(_s(m.get("id"), 32)) or _s(m.get("chatid"), 32) != chat_id:
            continue
        params = given if isinstance(given := m.get("params"), dict) else {}
        sender = _s(m.get("senderid"), 32)
        user = listed if isinstance(listed := users.get(sender), dict) else {}
        file_ids = ids if isinstance(ids := params.get("fileId"), list) else []
        # Only a user the answer lists and marks as no connector user (the customer is one) is an operator;
        # senderid 0 is the system (the page's example: "A new lead has been created"), never relayed.
        kind = (
            "system"
            if sender == "0" or not _ID.fullmatch(sender)
            else "customer"
            if user.get("connector") is not False
            else "operator"
        )
        keep[_s(m["id"], 32)] = {
            "text": _s(m.get("text"), _TEXT_MAX),
            "sender": sender,
            "kind": kind,
            "name": _s(user.get("name"), 200),
            "deleted": params.get("IS_DELETED") == "Y",
            "date": _s(m.get("date"), 40),
            "files": [
                {"url": _s(f.get("urldownload"), 2000), "name": _s(f.get("name"), 255)}
                for f in (files.get(str(i)) for i in file_ids[:_FILES_MAX])
                if isinstance(f, dict)
            ],
        }
    session = _s(answer.get("sessionId"), 32)
    return {"session": session if _ID.fullmatch(session) else "", "messages": keep}


def _judge(action: str, claim: Claim, history: dict):
    message = history["messages"].get(claim.im_message_id)
    if action == OutboundMessage.Action.DELETE:
        # Asked by the session the message was seen in (confirm() insists on one): gone from it, or flagged.
        if message is None or message["deleted"]:
            return Confirmed(claim, session_id=history["session"])
        return f"{claim.im_message_id}: still in the conversation"
    if message is None or message["deleted"]:
        return _missing(claim)
    if message["sender"] == "0" or message["kind"] == "system":
        return f"{claim.im_message_id}: a system message, not an operator's"
    if message["kind"] != "operator":
        return f"{claim.im_message_id}: written by the customer, not an operator"
    return Confirmed(
        claim,
        session_id=history["session"],
        text=message["text"],
        author={"id": message["sender"], "name": message["name"]},
        files=message["files"],
    )
