"""REST methods of Open Lines connectors (``imconnector.*``) and the conversations they carry.

Pages (api-reference/imopenlines/imconnector/): imconnector-register.md, -unregister.md, -list.md,
-activate.md, -status.md, -connector-data-set.md, -send-messages.md, -update-messages.md,
-delete-messages.md, -send-status-delivery.md, -send-status-reading.md; the events in events/*.md.
The docs list the methods under the ``imopenlines`` scope and the events under ``imconnector``.

The operator side (what a person does in the Open Lines chat) is ``Portal``-level helpers here:
``operator_reply`` / ``operator_edit`` / ``operator_delete`` send OnImConnectorMessageAdd/Update/Delete
to the handlers bound with ``event.bind``, as Bitrix24 does; ``delete_line`` and ``remove_connector``
send OnImConnectorLineDelete and OnImConnectorStatusDelete. Past ~400 lines on purpose: the methods of one
doc folder and the operator's side that feeds them share one state (``_State``) and read best together.
"""

from __future__ import annotations

import time

from .errors import ApiError
from .http import flatten, truthy
from .rest import method

__all__ = [
    "state",
    "operator_reply",
    "operator_edit",
    "operator_delete",
    "delete_line",
    "remove_connector",
    "finish_dialog",
    "system_message",
    "conversations",
    "BUILT_IN_CONNECTORS",
]

_DOC = "api-reference/imopenlines/imconnector/"
# imconnector-list.md's example: connectors every portal has, next to the apps' own.
BUILT_IN_CONNECTORS = {"livechat": "Live Chat", "telegrambot": "Telegram", "network": "Bitrix24.Network"}


class _Ids:
    """The portal's next chat, session and message id (``next(ids)``), readable without taking one."""

    def __init__(self, start: int = 1001):
        self.next_id = start

    def __iter__(self):
        return self

    def __next__(self) -> int:
        self.next_id += 1
        return self.next_id - 1


class _State:
    """One portal's connectors, their lines, and the conversations sent through them."""

    def __init__(self):
        self.connectors = {}  # id -> {"app", "NAME", "ICON", "PLACEMENT_HANDLER", flags...}
        self.lines = {}  # (connector, line) -> {"active", "data", "error"}
        self.chats = {}  # Open Lines chat id -> {"connector", "line", "external_chat", "user", "messages"}
        self.ids = _Ids()


def dump_state(portal) -> dict | None:
    """The portal's connector state as JSON data, for the sandbox's state file (the lock is held)."""
    st = getattr(portal, "_imconnector", None)
    if st is None:
        return None
    return {
        "connectors": st.connectors,
        "lines": [[c, line, entry] for (c, line), entry in st.lines.items()],
        "chats": {str(k): v for k, v in st.chats.items()},
        "next_id": st.ids.next_id,
    }


def load_state(portal, saved: dict) -> None:
    """Put back what ``dump_state`` kept (the lock is held)."""
    st = _State()
    st.connectors = dict(saved.get("connectors") or {})
    st.lines = {(c, str(line)): entry for c, line, entry in saved.get("lines") or []}
    st.chats = {int(k): v for k, v in (saved.get("chats") or {}).items()}
    st.ids = _Ids(int(saved.get("next_id") or 1001))
    portal._imconnector = st


def state(portal) -> _State:
    """The portal's connector state (made on first use, under the stand-in's lock)."""
    with portal._standin.lock:
        if not hasattr(portal, "_imconnector"):
            portal._imconnector = _State()
        return portal._imconnector


def _arg(params, name):
    value = params.get(name)
    if value is None or value == "" or value == [] or value == {}:
        raise ApiError("ERROR_ARGUMENT", f"Argument '{name}' is null or empty", status=400)
    return value


def _line(portal, params):
    line = str(_arg(params, "LINE"))
    return line


def _known(portal, st, connector):
    # Not documented: the answer for a connector the app never registered. The stand-in answers as the
    # message pages do for a connector without a provider.
    if connector not in st.connectors:
        raise ApiError(
            "IMCONNECTOR_NO_CORRECT_PROVIDER", "Unable to find a suitable provider for the connector", status=400
        )


def _result_false(code, description):
    # imconnector-register.md / -unregister.md: errors come as HTTP 200 with result.result = false.
    return {"result": False, "error": code, "error_description": description}


@method("imconnector.register", doc=_DOC + "imconnector-register.md", scopes=("imopenlines",))
def register(portal, params, grant):
    raw_id = params.get("ID")
    if not isinstance(raw_id, str) or not raw_id:
        return _result_false("CONNECTOR_ID_REQUIRED", "Connector ID is not specified")
    connector = raw_id.lower()  # "The method converts the value to lowercase"
    if "." in connector:
        return _result_false(
            "APPLICATION_REGISTRATION_ERROR_POINT",
            "Application registration error. Using a dot in the connector identifier is not allowed",
        )
    if not isinstance(params.get("NAME"), str) or not params["NAME"]:
        return _result_false("NAME_REQUIRED", "Connector name is not specified")
    icon = params.get("ICON")
    if not isinstance(icon, dict) or not isinstance(icon.get("DATA_IMAGE"), str) or not icon["DATA_IMAGE"]:
        return _result_false("ICON_REQUIRED", "Connector icon is not specified")
    handler = params.get("PLACEMENT_HANDLER")
    if not isinstance(handler, str) or not handler:
        return _result_false("NO_PLACEMENT_HANDLER", "Failed to get embedding handler URL")
    st = state(portal)
    with portal._standin.lock:
        owner = st.connectors.get(connector, {}).get("app", grant.client_id)
        if owner != grant.client_id:  # not documented: another app's connector id
            return _result_false("GENERAL_CONNECTOR_REGISTRATION_ERROR", "General connector registration error")
        flags = {
            k: truthy(params[k])
            for k in (
                "DEL_EXTERNAL_MESSAGES",
                "EDIT_INTERNAL_MESSAGES",
                "DEL_INTERNAL_MESSAGES",
                "NEWSLETTER",
                "NEED_SYSTEM_MESSAGES",
                "NEED_SIGNATURE",
                "CHAT_GROUP",
            )
            if k in params
        }
        # "If the method is called again with the same ID, the method updates the current connector."
        st.connectors[connector] = {
            "app": grant.client_id,
            "NAME": params["NAME"],
            "ICON": dict(icon),
            "ICON_DISABLED": dict(params.get("ICON_DISABLED") or {}),
            "PLACEMENT_HANDLER": handler,
            **flags,
        }
    return {"result": True}


@method("imconnector.unregister", doc=_DOC + "imconnector-unregister.md", scopes=("imopenlines",))
def unregister(portal, params, grant):
    connector = str(params.get("ID") or "").lower()
    st = state(portal)
    with portal._standin.lock:
        if st.connectors.get(connector, {}).get("app") != grant.client_id:
            return _result_false("APPLICATION_UNREGISTRATION_ERROR", "Error unregistering the application")
        del st.connectors[connector]
        for key in [k for k in st.lines if k[0] == connector]:
            del st.lines[key]
    return {"result": True}


@method("imconnector.list", doc=_DOC + "imconnector-list.md", scopes=("imopenlines",))
def list_connectors(portal, params, grant):
    st = state(portal)
    with portal._standin.lock:
        return {**BUILT_IN_CONNECTORS, **{k: v["NAME"] for k, v in st.connectors.items()}}


def _line_exists(portal, line):
    return any(str(item.get("ID")) == line for item in portal.open_lines)


@method("imconnector.activate", doc=_DOC + "imconnector-activate.md", scopes=("imopenlines",))
def activate(portal, params, grant):
    connector = str(_arg(params, "CONNECTOR")).lower()
    line = _line(portal, params)
    if "ACTIVE" not in params or params["ACTIVE"] is None or params["ACTIVE"] == "":
        raise ApiError("ERROR_ARGUMENT", "Argument 'ACTIVE' is null or empty", status=400)
    st = state(portal)
    _known(portal, st, connector)
    if not _line_exists(portal, line):
        raise ApiError("NOT_ACTIVE_LINE", "The line with this ID is inactive or does not exist", status=400)
    # "Any non-empty value enables the connector, while an empty value or 0 disables it."
    active = str(params["ACTIVE"]).strip().upper() not in ("", "0", "N")
    with portal._standin.lock:
        entry = st.lines.setdefault((connector, line), {"active": False, "data": {}, "error": False})
        entry["active"] = active
    return True


@method("imconnector.status", doc=_DOC + "imconnector-status.md", scopes=("imopenlines",))
def status(portal, params, grant):
    connector = str(_arg(params, "CONNECTOR")).lower()
    line = str(params.get("LINE") or "0")  # "If the LINE parameter is not provided ... the value 0"
    st = state(portal)
    with portal._standin.lock:
        entry = st.lines.get((connector, line)) or {"active": False, "data": {}, "error": False}
        configured = bool(entry["active"] and entry["data"])
        return {
            "LINE": int(line) if line.isdigit() else line,
            "CONNECTOR": connector,
            "ERROR": entry["error"],
            "CONFIGURED": configured,
            "STATUS": configured and not entry["error"],
        }


@method("imconnector.connector.data.set", doc=_DOC + "imconnector-connector-data-set.md", scopes=("imopenlines",))
def data_set(portal, params, grant):
    connector = str(_arg(params, "CONNECTOR")).lower()
    line = _line(portal, params)
    data = _arg(params, "DATA")
    if not isinstance(data, dict):
        raise ApiError("ERROR_ARGUMENT", "Argument 'DATA' is null or empty", status=400)
    st = state(portal)
    _known(portal, st, connector)
    with portal._standin.lock:
        entry = st.lines.setdefault((connector, line), {"active": False, "data": {}, "error": False})
        # "settings are written and overwritten through this object as a whole"
        entry["data"] = {k: str(v) for k, v in data.items() if k in ("ID", "URL", "URL_IM", "NAME")}
    return True


def _messages(params):
    messages = _arg(params, "MESSAGES")
    if isinstance(messages, dict) and list(messages) == [str(i) for i in range(len(messages))]:
        messages = list(messages.values())  # form-encoded MESSAGES[0][...]
    if not isinstance(messages, list):
        raise ApiError("ERROR_ARGUMENT", "The value of an argument 'MESSAGES' must be of type array", status=400)
    if not all(isinstance(m, dict) for m in messages):
        raise ApiError("ERROR_ARGUMENT", "The MESSAGES parameter must be an array of messages (arrays)", status=400)
    return messages


def _active_line(portal, st, params):
    connector = str(_arg(params, "CONNECTOR")).lower()
    line = _line(portal, params)
    _known(portal, st, connector)
    with portal._standin.lock:
        entry = st.lines.get((connector, line))
        if not entry or not entry["active"] or not _line_exists(portal, line):
            raise ApiError("NOT_ACTIVE_LINE", "The line with this ID is inactive or does not exist", status=400)
    return connector, line


def _chat_of(st, connector, line, chat_id, user_id, group):
    # CHAT_GROUP (imconnector-register.md): true groups by chat.id, false by user.id.
    for im_chat_id, chat in st.chats.items():
        if (chat["connector"], chat["line"], chat["external_chat"]) == (connector, line, chat_id) and (
            group or chat["external_user"] == user_id
        ):
            return im_chat_id, chat
    im_chat_id = next(st.ids)
    chat = {
        "connector": connector,
        "line": line,
        "external_chat": chat_id,
        "external_user": user_id,
        "session": next(st.ids),
        "user": str(next(st.ids)),
        "messages": [],
    }
    st.chats[im_chat_id] = chat
    return im_chat_id, chat


def _find(st, connector, line, chat_id, message_id, *, outside: bool):
    for im_chat_id, chat in st.chats.items():
        if (chat["connector"], chat["line"], chat["external_chat"]) != (connector, line, chat_id):
            continue
        for message in chat["messages"]:
            if message["outside"] == outside and message["external_id"] == message_id and not message["deleted"]:
                return im_chat_id, chat, message
    return None, None, None


def _blocks(item):
    """(user, message, chat) of a MESSAGES element, each an object, or ERROR_ARGUMENT (400) with the text
    imconnector-send-messages.md documents for an element without them ("The incorrect structure of a message
    inside MESSAGES parameter"). -update-messages.md and -delete-messages.md call the same three blocks
    required and list ERROR_ARGUMENT for malformed arguments, so they answer the same."""
    blocks = tuple(item.get(k) for k in ("user", "message", "chat"))
    if not all(isinstance(x, dict) for x in blocks):
        raise ApiError("ERROR_ARGUMENT", "The incorrect structure of a message inside MESSAGES parameter", status=400)
    return blocks


_NAME_MAX = 25
_NAME_MARKS = frozenset(" '\u2019-")


def _bad_names(user) -> list[str]:
    """imconnector-send-messages.md (user object): name and last_name "can contain letters, spaces, hyphens,
    and apostrophes. Numbers and other special characters are not allowed. The maximum length ... is 25
    characters." The page names no error for a name that breaks the rule; the stand-in refuses that message
    alone in the shape the page gives a refused element (RESULT[] with SUCCESS false and ERRORS, the call's
    SUCCESS false), the outcome the official SDKs read (b24phpsdk's SendMessagesResult takes SUCCESS and
    DATA as Bitrix24 sent them; neither SDK checks names itself)."""
    errors = []
    for key in ("name", "last_name"):
        value = user.get(key)
        if value is None or value == "":
            continue
        if (
            not isinstance(value, str)
            or len(value) > _NAME_MAX
            or not all(c.isalpha() or c in _NAME_MARKS for c in value)
        ):
            errors.append(
                f"user.{key} may hold only letters, spaces, hyphens and apostrophes, at most {_NAME_MAX} characters"
            )
    return errors


@method("imconnector.send.messages", doc=_DOC + "imconnector-send-messages.md", scopes=("imopenlines",))
def send_messages(portal, params, grant):
    # The page names no maximum number of MESSAGES per call, so none is enforced (docs/bitrix24.md, unverified).
    st = state(portal)
    connector, line = _active_line(portal, st, params)
    messages = _messages(params)
    results = []
    with portal._standin.lock:
        group = bool(st.connectors[connector].get("CHAT_GROUP"))
        for item in messages:
            user, message, chat = _blocks(item)
            if not user.get("id") or not chat.get("id") or not (message.get("text") or message.get("files")):
                results.append({"SUCCESS": False, "ERRORS": ["user.id, chat.id and text or files are required"]})
                continue
            if errors := _bad_names(user):
                results.append({"SUCCESS": False, "ERRORS": errors})
                continue
            im_chat_id, conversation = _chat_of(st, connector, line, str(chat["id"]), str(user["id"]), group)
            conversation.update({k: user.get(k, "") for k in ("name", "last_name")})
            if conversation.pop("finished", False):  # the customer writes after the dialog was finished
                conversation["sessions"] = [*conversation.get("sessions", []), conversation["session"]]
                conversation["session"] = next(st.ids)
            conversation["messages"].append(
                {
                    "session": conversation["session"],
                    "im_message_id": next(st.ids),
                    "outside": True,
                    "external_id": str(message.get("id") or ""),
                    "text": str(message.get("text") or ""),
                    "files": list(message.get("files") or []),
                    "date": message.get("date"),
                    "deleted": False,
                    "delivered": None,
                    "read": None,
                    "at": time.time(),
                }
            )
            results.append(
                {
                    "user": conversation["user"],
                    "message": {**message, "date": {}},
                    "chat": dict(chat),
                    "SUCCESS": True,
                    "session": {"ID": str(conversation["session"]), "CHAT_ID": str(im_chat_id)},
                }
            )
    return _answer(results)


def _change_sent(portal, params, change):
    """update.messages and delete.messages alike: each MESSAGES item names (chat.id, message.id) a message
    the outside system sent; ``change(found, chat, message)`` alters it and gives its RESULT item's
    ``message`` and ``chat``; an unknown message fails alone (SUCCESS false), the others go on."""
    st = state(portal)
    connector, line = _active_line(portal, st, params)
    results = []
    with portal._standin.lock:
        for item in _messages(params):
            _user, message, chat = _blocks(item)
            _im, conversation, found = _find(
                st, connector, line, str(chat.get("id")), str(message.get("id")), outside=True
            )
            if found is None:
                results.append({"SUCCESS": False, "ERRORS": ["message not found"]})
                continue
            results.append({"user": conversation["user"], **change(found, chat, message), "SUCCESS": True})
    return _answer(results)


def _answer(results):
    # imconnector-send-messages.md, -update-messages.md, -delete-messages.md (api-reference/imopenlines/
    # imconnector/): SUCCESS for the whole call, DATA.RESULT with one item per message.
    return {"SUCCESS": all(r["SUCCESS"] for r in results), "DATA": {"RESULT": results}}


@method("imconnector.update.messages", doc=_DOC + "imconnector-update-messages.md", scopes=("imopenlines",))
def update_messages(portal, params, grant):
    """api-reference/imopenlines/imconnector/imconnector-update-messages.md: new text, the message marked edited."""

    def edit(found, chat, message):
        found["text"] = str(message.get("text") or found["text"])
        found["edited"] = True
        return {"message": {**message, "date": {}}, "chat": dict(chat)}

    return _change_sent(portal, params, edit)


@method("imconnector.delete.messages", doc=_DOC + "imconnector-delete-messages.md", scopes=("imopenlines",))
def delete_messages(portal, params, grant):
    """api-reference/imopenlines/imconnector/imconnector-delete-messages.md: the message marked deleted."""

    def delete(found, chat, message):
        found["deleted"] = True
        return {"message": {"id": found["external_id"]}, "chat": {"id": chat.get("id")}}

    return _change_sent(portal, params, delete)


def _status(portal, params, field):
    """imconnector-send-status-delivery.md / -reading.md: each MESSAGES element names the operator's message
    by ``im`` (Bitrix24's chat_id and message_id, from the event); ``message.id`` is an array of the outside
    system's ids for it and ``chat.id`` the outside chat ("do not replace im.message_id and im.chat_id"):
    both are kept on the message as given (``<field>_ids``, ``<field>_chat``) for tests to read."""
    st = state(portal)
    connector = str(_arg(params, "CONNECTOR")).lower()
    _line(portal, params)
    messages = _messages(params)
    _known(portal, st, connector)
    with portal._standin.lock:
        for item in messages:
            im = item.get("im") if isinstance(item.get("im"), dict) else {}
            outside = item.get("message") if isinstance(item.get("message"), dict) else {}
            outside_chat = item.get("chat") if isinstance(item.get("chat"), dict) else {}
            chat = st.chats.get(int(im.get("chat_id") or 0)) if str(im.get("chat_id") or "").isdigit() else None
            for message in (chat or {}).get("messages", []):
                if str(message["im_message_id"]) == str(im.get("message_id")):
                    message[field] = time.time()
                    ids = outside.get("id")
                    message[f"{field}_ids"] = [str(x) for x in ids] if isinstance(ids, list) else ids
                    message[f"{field}_chat"] = outside_chat.get("id")
    # send-status-delivery.md / -reading.md: SUCCESS and an empty DATA, whatever was matched.
    return {"SUCCESS": True, "DATA": []}


@method("imconnector.send.status.delivery", doc=_DOC + "imconnector-send-status-delivery.md", scopes=("imopenlines",))
def send_status_delivery(portal, params, grant):
    return _status(portal, params, "delivered")


@method("imconnector.send.status.reading", doc=_DOC + "imconnector-send-status-reading.md", scopes=("imopenlines",))
def send_status_reading(portal, params, grant):
    return _status(portal, params, "read")


# --- the operator's side: what Bitrix24 sends to the app -------------------------------------------
def conversations(portal) -> list[dict]:
    """Every Open Lines chat of the portal with its messages (a copy), oldest first."""
    st = state(portal)
    with portal._standin.lock:
        return [{"chat_id": k, **v, "messages": [dict(m) for m in v["messages"]]} for k, v in st.chats.items()]


def _connector_event(portal, event, data, *, user_id="1", handlers=None):
    """events/*.md: form-encoded POST to every handler bound for the event (auth without refresh_token)."""
    payload = portal.event_payload(event, data={}, with_tokens=False)
    payload = {k: v for k, v in payload.items() if not k.startswith("data")}
    tokens = portal.issue_tokens(user_id)
    payload.update(
        {
            "auth[access_token]": tokens["access_token"],
            "auth[expires_in]": str(tokens["expires_in"]),
            "auth[scope]": portal.scope,
            "auth[user_id]": str(user_id),
        }
    )
    flatten("data", data, payload)
    return portal.deliver_event(event, payload=payload, handlers=handlers)


def _operator_message(portal, im_chat_id, chat, message, *, text, event="add"):
    """A MESSAGES element of the events' pages. The text comes "in the format provided in the event": the
    examples put the operator's name first (``[b]Klaus Weber:[/b] [br]Guten Tag!``); the history
    (imopenlines.session.history.get) holds the bare text. Update and delete name the message by the outside
    system's ids too (``message.id``, from its delivery status), as their pages' examples do."""
    author = next((u for u in portal.users if str(u["ID"]) == str(message.get("author") or "1")), None)
    name = f"{author['NAME']} {author['LAST_NAME']}".strip() if author else ""
    body = {"user_id": int(message.get("author") or 1)} if event == "add" else {}
    if event != "delete":  # the add page's example: "[b]Klaus Weber:[/b] [br]Guten Tag!"; update's: "[/b][br] "
        body["text"] = (
            (f"[b]{name}:[/b] [br]{text}" if event == "add" else f"[b]{name}:[/b][br] {text}") if name else text
        )
    if event != "add" and message.get("delivered_ids"):
        ids = list(message["delivered_ids"])
        body["id"] = ids if event == "update" else ids[0]
    return {
        "im": {"chat_id": im_chat_id, "message_id": message["im_message_id"]},
        "message": body,
        "chat": {"id": chat["external_chat"]},
    }


def operator_reply(portal, im_chat_id: int, text: str, *, user_id="1", handlers=None):
    """An operator writes in the chat: OnImConnectorMessageAdd (events/on-im-connector-message-add.md)."""
    st = state(portal)
    with portal._standin.lock:
        chat = st.chats[int(im_chat_id)]
        message = {
            "im_message_id": next(st.ids),
            "outside": False,
            "external_id": "",
            "text": text,
            "files": [],
            "date": int(time.time()),
            "deleted": False,
            "delivered": None,
            "read": None,
            "at": time.time(),
            "author": str(user_id),
            "session": chat["session"],
        }
        chat["messages"].append(message)
        data = {
            "CONNECTOR": chat["connector"],
            "LINE": chat["line"],
            "MESSAGES": [_operator_message(portal, int(im_chat_id), chat, message, text=text)],
        }
    return message["im_message_id"], _connector_event(
        portal, "ONIMCONNECTORMESSAGEADD", data, user_id=user_id, handlers=handlers
    )


def _operator_change(portal, im_chat_id, im_message_id, event, *, text=None):
    st = state(portal)
    with portal._standin.lock:
        chat = st.chats[int(im_chat_id)]
        message = next(m for m in chat["messages"] if m["im_message_id"] == int(im_message_id))
        if text is None:
            message["deleted"] = True
        else:
            message["text"] = text
        data = {
            "CONNECTOR": chat["connector"],
            "LINE": chat["line"],
            "MESSAGES": [
                _operator_message(
                    portal,
                    int(im_chat_id),
                    chat,
                    message,
                    text=text or "",
                    event="delete" if text is None else "update",
                )
            ],
        }
    return _connector_event(portal, event, data)


def operator_edit(portal, im_chat_id, im_message_id, text):
    """events/on-im-connector-message-update.md"""
    return _operator_change(portal, im_chat_id, im_message_id, "ONIMCONNECTORMESSAGEUPDATE", text=text)


def operator_delete(portal, im_chat_id, im_message_id):
    """events/on-im-connector-message-delete.md"""
    return _operator_change(portal, im_chat_id, im_message_id, "ONIMCONNECTORMESSAGEDELETE")


def finish_dialog(portal, im_chat_id):
    """The operator finishes the dialog: the customer's next message opens a new session of the same chat
    (imopenlines-session-history-get.md: by CHAT_ID alone the method answers the last session)."""
    st = state(portal)
    with portal._standin.lock:
        st.chats[int(im_chat_id)]["finished"] = True


def system_message(portal, im_chat_id, text):
    """Bitrix24 itself writes in the chat (senderid 0, as the history page's "A new lead has been created"
    example); no connector event: the connector registers NEED_SYSTEM_MESSAGES false. The message id."""
    st = state(portal)
    with portal._standin.lock:
        chat = st.chats[int(im_chat_id)]
        message = {
            "im_message_id": next(st.ids),
            "outside": False,
            "external_id": "",
            "text": text,
            "files": [],
            "date": int(time.time()),
            "deleted": False,
            "delivered": None,
            "read": None,
            "at": time.time(),
            "author": "0",
            "session": chat["session"],
        }
        chat["messages"].append(message)
    return message["im_message_id"]


def remove_connector(portal, connector, line):
    """The connector is switched off for the line in the portal: events/on-im-connector-status-delete.md."""
    st = state(portal)
    with portal._standin.lock:
        st.lines.pop((connector, str(line)), None)
    return _connector_event(portal, "ONIMCONNECTORSTATUSDELETE", {"connector": connector, "line": int(line)})


def delete_line(portal, line):
    """The Open Line is deleted: events/on-im-connector-line-delete.md (``data`` is the bare line id)."""
    st = state(portal)
    with portal._standin.lock:
        portal.open_lines[:] = [x for x in portal.open_lines if str(x.get("ID")) != str(line)]
        for key in [k for k in st.lines if k[1] == str(line)]:
            del st.lines[key]
    payload = portal.event_payload("ONIMCONNECTORLINEDELETE", data={}, with_tokens=False)
    payload = {k: v for k, v in payload.items() if not k.startswith("data")}
    payload["data"] = str(int(line))
    return portal.deliver_event("ONIMCONNECTORLINEDELETE", payload=payload)
