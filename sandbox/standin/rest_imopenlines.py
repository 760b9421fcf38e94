"""REST methods of the ``imopenlines`` scope: ``imopenlines.config.list.get`` and
``imopenlines.session.history.get`` (the Open Lines chats the connector carries, rest_imconnector.py)."""

from __future__ import annotations

import datetime

from .errors import ApiError
from .rest import method

_LIMIT_DEFAULT, _LIMIT_MAX = 50, 200  # imopenlines-config-list-get.md: PARAMS[limit] default 50, max 200
_HISTORY_DOC = "api-reference/imopenlines/openlines/sessions/imopenlines-session-history-get.md"


def _int(value, default):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


@method(
    "imopenlines.config.list.get",
    doc="api-reference/imopenlines/openlines/imopenlines-config-list-get.md",
    scopes=("imopenlines",),
)
def config_list_get(portal, params, grant):
    # One page per call, sliced by PARAMS[limit] and PARAMS[offset]; the answer has no next/total.
    selection = params.get("PARAMS") if isinstance(params.get("PARAMS"), dict) else {}
    limit = min(max(_int(selection.get("limit"), _LIMIT_DEFAULT), 1), _LIMIT_MAX)
    offset = max(_int(selection.get("offset"), 0), 0)
    with portal._standin.lock:
        return [dict(line) for line in portal.open_lines[offset : offset + limit]]


def _iso(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="seconds")


def _operator(portal, user_id: str) -> dict:
    user = next((u for u in portal.users if str(u["ID"]) == str(user_id)), {"NAME": "", "LAST_NAME": ""})
    return {
        "id": str(user_id),
        "name": f"{user['NAME']} {user['LAST_NAME']}".strip(),
        "firstName": user["NAME"],
        "lastName": user["LAST_NAME"],
        "connector": False,
        "bot": False,
        "extranet": False,
        "type": "user",
    }


_NO_RIGHTS = "You cannot open this conversation because you do not have sufficient rights."


def revoke_line_access(portal, user_id, line) -> None:
    """The user loses access to the Open Line (taken out of its queue, their role changed): they are no
    participant of its chats any more, so the history by CHAT_ID alone answers ACCESS_DENIED for them."""
    with portal._standin.lock:
        portal.line_access_revoked = {*getattr(portal, "line_access_revoked", set()), (str(user_id), str(line))}


def restore_line_access(portal, user_id, line) -> None:
    with portal._standin.lock:
        portal.line_access_revoked = getattr(portal, "line_access_revoked", set()) - {(str(user_id), str(line))}


def history_checks_sessions(portal, on: bool = True) -> None:
    """Unverified: a portal that also refuses a SESSION_ID call to a user without access to the line (the
    page says a SESSION_ID call returns no error; docs/bitrix24.md says what would settle it)."""
    with portal._standin.lock:
        portal.history_checks_sessions = bool(on)


def _may_read(portal, chat: dict, grant) -> bool:
    user = str(getattr(grant, "user_id", ""))
    return (user, str(chat["line"])) not in getattr(portal, "line_access_revoked", set())


@method("imopenlines.session.history.get", doc=_HISTORY_DOC, scopes=("imopenlines",))
def session_history_get(portal, params, grant):
    """The page's answer for one session of one Open Lines chat: ``message`` (by id: id, chatid, senderid,
    recipientid, date, text, textlegacy, params), ``usersMessage``, ``users`` (``connector`` true for the
    outside customer), ``chat`` (entityType LINES, entityId ``connector|line|outside chat|user``), for one
    session: SESSION_ID's when given, else the chat's last. A chat gets a new session when the customer writes
    after ``finish_dialog``. Errors as the page lists them: neither id -> MISSING_REQUIRED_PARAM; a CHAT_ID
    with no session -> INVALID_SESSION_ID; a SESSION_ID not found -> ACCESS_DENIED. The page does not say
    how a deleted message shows; the stand-in leaves it out.

    Rights, as the page has them: "If the user is not a participant in the chat, an error will be returned
    when calling with only the parameter CHAT_ID" (ACCESS_DENIED, "You cannot open this conversation because
    you do not have sufficient rights."), and "You should use the SESSION_ID parameter; with it, no error is
    returned". A user without access to the line (``revoke_line_access``) is no participant of its chats.
    ``history_checks_sessions`` makes SESSION_ID calls refuse them too (not what the page says)."""
    from .rest_imconnector import state

    session_id, chat_id = _int(params.get("SESSION_ID"), 0), _int(params.get("CHAT_ID"), 0)
    if not session_id and not chat_id:
        raise ApiError("MISSING_REQUIRED_PARAM", "Session ID or Chat ID must be provided", status=400)
    st = state(portal)
    with portal._standin.lock:
        if session_id:  # "If SESSION_ID is provided, the method operates based on it" (CHAT_ID is not needed)
            found = [(k, c) for k, c in st.chats.items() if session_id in (c["session"], *c.get("sessions", []))]
            if not found:
                raise ApiError(
                    "ACCESS_DENIED",
                    "You cannot open this conversation as you do not have sufficient rights",
                    status=400,
                )
        else:  # "the method attempts to determine the last session by CHAT_ID"
            found = [(chat_id, st.chats[chat_id])] if chat_id in st.chats else []
            if not found:
                raise ApiError(
                    "INVALID_SESSION_ID", "Unable to determine session ID from provided parameters", status=400
                )
        im_chat_id, chat = found[0]
        if not _may_read(portal, chat, grant) and (not session_id or getattr(portal, "history_checks_sessions", False)):
            raise ApiError("ACCESS_DENIED", _NO_RIGHTS, status=400)
        session_id = session_id or chat["session"]
        customer = {
            "id": chat["user"],
            "name": f"{chat.get('name', '')} {chat.get('last_name', '')}".strip(),
            "firstName": chat.get("name", ""),
            "lastName": chat.get("last_name", ""),
            "connector": True,
            "bot": False,
            "extranet": True,
            "type": "user",
        }
        users, messages = {chat["user"]: customer}, {}
        for m in chat["messages"]:
            if m["deleted"] or m.get("session", chat["session"]) != session_id:
                continue
            sender = chat["user"] if m["outside"] else str(m.get("author") or "1")
            if sender not in users and sender != "0":  # the system (senderid 0) is no user of the answer
                users[sender] = _operator(portal, sender)
            extra = {"connectorMid": [m["external_id"]]} if m["outside"] and m["external_id"] else {}
            if not m["outside"] and m.get("delivered_ids"):
                extra = {"connectorMid": list(m["delivered_ids"])}
            messages[str(m["im_message_id"])] = {
                "id": str(m["im_message_id"]),
                "chatid": str(im_chat_id),
                "senderid": sender,
                "recipientid": f"chat{im_chat_id}",
                "date": _iso(m["at"]),
                "text": m["text"],
                "textlegacy": m["text"],
                "params": extra,
            }
        entity = f"{chat['connector']}|{chat['line']}|{chat['external_chat']}|{chat['user']}"
        return {
            "chatId": im_chat_id,
            "canJoin": "Y",
            "canVoteHead": "N",
            "sessionId": session_id,
            "sessionVoteHead": 0,
            "sessionCommentHead": None,
            "userId": f"chat{im_chat_id}",
            "message": messages,
            "usersMessage": {f"chat{im_chat_id}": list(messages)},
            "users": users,
            "openlines": {},
            "userInGroup": [],
            "woUserInGroup": [],
            "chat": {
                str(im_chat_id): {
                    "id": str(im_chat_id),
                    "name": customer["name"],
                    "entityType": "LINES",
                    "entityId": entity,
                    "type": "lines",
                    "messageType": "L",
                    "entityLink": {"type": "LINES", "url": "", "id": entity},
                }
            },
            "userBlockChat": {},
            "userInChat": {str(im_chat_id): [int(u) for u in users if u.isdigit()]},
            "files": {},
        }
