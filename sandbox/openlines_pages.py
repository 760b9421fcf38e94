"""The sandbox's Open Lines pages: the connector tiles, the operator desk and the "customer" (outside system).

Served at the portal's address beside the Contact Center page (``SandboxPages`` mixes this in):

- ``/sandbox/openlines/``: the operator desk. The conversations the app delivered with
  ``imconnector.send.messages`` (the stand-in's connector state); a reply is the stand-in's
  ``operator_reply``, which sends OnImConnectorMessageAdd to the app as Bitrix24 does; each reply shows
  whether the app reported ``imconnector.send.status.delivery`` / ``...reading``.
- ``/sandbox/customer/``: the outside system. It signs a message with the channel's secret (typed into
  the form, kept only in that request; never logged or stored) as openlines/inbound.py checks it and POSTs it
  to the channel's inbound URL; ``/sandbox/webhook/`` receives the app's signed webhooks and the page
  lists them. The app accepts this http, local webhook address only with OPENLINES_ALLOW_PRIVATE_WEBHOOKS
  (which `manage.py sandbox` turns on beside DEBUG; the deploy check refuses it without DEBUG).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from .standin import rest_imconnector

_SEND_DEADLINE = 10.0
_ANSWER_MAX = 64 * 1024
_WEBHOOKS_KEPT = 200
_TEXT_MAX = 2000
_PAGES = {"/sandbox/openlines/": "openlines-desk.html", "/sandbox/customer/": "customer.html"}


def _sign(secret: str, timestamp: str, body: bytes) -> str:
    # The channel's scheme, version 2 (openlines/outbound.py): HMAC-SHA256 over "v2.inbound.<timestamp>." + body.
    signed = f"v2.inbound.{timestamp}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def _icon(icon) -> dict:
    """imconnector.register's ICON as the tile draws it: an image (a data: URI of an image only), its colour."""
    icon = icon if isinstance(icon, dict) else {}
    image = str(icon.get("DATA_IMAGE") or "")
    color = str(icon.get("COLOR") or "")
    return {
        "image": image if image.startswith("data:image/") else "",
        "color": color if re.fullmatch(r"#[0-9a-fA-F]{3,8}", color) else "",
        "size": str(icon.get("SIZE") or "") if re.fullmatch(r"[0-9]{1,3}%", str(icon.get("SIZE") or "")) else "",
    }


class OpenLinesPages:
    """Mixed into SandboxPages: needs ``standin``, ``_ApiError``-raising helpers and ``_frame``."""

    _webhooks_lock = threading.Lock()

    def _openlines_init(self):
        self.webhooks: list[dict] = []  # what the app POSTed to /sandbox/webhook/, newest last

    # --- pages and the unauthenticated receiver ------------------------------------------------

    def handle_openlines(self, portal, request, *, read, json_answer):
        path, method = request.path, request.http_method
        if method == "GET" and path in _PAGES:
            page = read(_PAGES[path]).decode("utf-8").replace("$domain", portal.domain)
            return 200, [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")], page.encode()
        if method == "GET" and path == "/sandbox/openlines.js":
            return (
                200,
                [("Content-Type", "text/javascript; charset=utf-8"), ("Cache-Control", "no-store")],
                read("openlines.js"),
            )
        if path == "/sandbox/webhook/" and method == "POST":
            # The outside system's endpoint: the app signs, the sandbox only records (no secret here to check).
            try:
                payload = json.loads(request.raw_body or b"{}")
            except ValueError:
                return json_answer(400, {"error": "not_json"})
            with self._webhooks_lock:
                self.webhooks.append(
                    {
                        "at": time.time(),
                        "payload": payload,
                        "signed": bool(request.headers.get("X-B24Widget-Signature")),
                    }
                )
                del self.webhooks[:-_WEBHOOKS_KEPT]
            return json_answer(200, {"ok": True})
        if method == "GET" and path == "/sandbox/api/openlines-state":
            return json_answer(200, self.openlines_state(portal))
        return None

    def webhook_url(self, portal) -> str:
        return f"http://{portal.domain}/sandbox/webhook/"

    def openlines_state(self, portal):
        with self.standin.lock:
            users = {str(u["ID"]): f"{u.get('NAME', '')} {u.get('LAST_NAME', '')}".strip() for u in portal.users}
            line_names = {str(x["ID"]): str(x.get("LINE_NAME") or "") for x in portal.open_lines}
        chats = []
        for chat in rest_imconnector.conversations(portal):
            customer = f"{chat.get('name', '')} {chat.get('last_name', '')}".strip() or chat["external_user"]
            chats.append(
                {
                    "chat_id": chat["chat_id"],
                    "line": chat["line"],
                    "line_name": line_names.get(str(chat["line"]), ""),
                    "connector": chat["connector"],
                    "external_chat": chat["external_chat"],
                    "customer": customer,
                    "messages": [
                        {
                            "id": m["im_message_id"],
                            "outside": m["outside"],
                            # Bitrix24 itself (senderid 0) writes system messages; operators write the rest.
                            "system": not m["outside"] and str(m.get("author", "")) == "0",
                            "author": customer if m["outside"] else users.get(str(m.get("author", "")), ""),
                            "text": m["text"],
                            "at": m.get("at"),
                            "deleted": m["deleted"],
                            "delivered": bool(m["delivered"]),
                            "read": bool(m["read"]),
                        }
                        for m in chat["messages"]
                    ],
                }
            )
        with self._webhooks_lock:
            hooks = [dict(h) for h in self.webhooks]
        return {"chats": chats, "webhooks": hooks, "webhookUrl": self.webhook_url(portal)}

    def connector_tiles(self, portal):
        """One tile per (our registered connector, Open Line): what the Contact Center shows for a connector."""
        st = rest_imconnector.state(portal)
        with self.standin.lock:
            connectors = {k: dict(v) for k, v in st.connectors.items() if v.get("app") == self.standin.client_id}
            lines = [dict(x) for x in portal.open_lines]
            active = {key: entry["active"] for key, entry in st.lines.items()}
        tiles = []
        for cid, c in connectors.items():
            for line in lines:
                on = bool(active.get((cid, str(line["ID"]))))
                tiles.append(
                    {
                        "connector": cid,
                        "name": c["NAME"],
                        "line": str(line["ID"]),
                        "lineName": line.get("LINE_NAME", ""),
                        "active": on,
                        # The icon the app registered (ICON; ICON_DISABLED, when it gave one, on a line not connected).
                        "icon": _icon((c.get("ICON_DISABLED") if not on else None) or c.get("ICON")),
                    }
                )
        return tiles

    # --- actions (POST, JSON, same origin: SandboxPages checks) -----------------------------------

    def _api_open_connector(self, portal, body):
        """A click on the connector's tile for a line: SETTING_CONNECTOR (widgets/setting-connector.md)."""
        user, lang = self._user(portal, body), self._lang(body)
        connector, line = str(body.get("connector") or ""), str(body.get("line") or "")
        tile = next((t for t in self.connector_tiles(portal) if (t["connector"], t["line"]) == (connector, line)), None)
        if tile is None:
            raise self._error(409, "no_connector", "The app registered no such connector, or no such line")
        st = rest_imconnector.state(portal)
        with self.standin.lock:
            handler = st.connectors[connector]["PLACEMENT_HANDLER"]
            entry = st.lines.get((connector, line)) or {"active": False, "data": {}, "error": False}
            configured = bool(entry["active"] and entry["data"])
        options = {
            "CONNECTOR": connector,
            "LINE": line,
            "STATUS": configured,
            "ACTIVE_STATUS": entry["active"],
            "CONNECTION_STATUS": configured,
            "REGISTER_STATUS": True,
            "ERROR_STATUS": bool(entry["error"]),
            "URI": f"/contact_center/connector/?ID={connector}&LINE={line}",
        }
        fields = portal.placement_post(user_id=user, lang=lang, placement="SETTING_CONNECTOR", options=options)
        return self._frame(
            handler, fields, user=user, is_admin=portal.is_admin(user), lang=lang, placement="SETTING_CONNECTOR"
        )

    def _api_operator_reply(self, portal, body):
        text = str(body.get("text") or "").strip()
        chat_id = str(body.get("chat_id") or "")
        if not text or len(text) > _TEXT_MAX:
            raise self._error(400, "bad_text", f"Write 1 to {_TEXT_MAX} characters")
        if not chat_id.isdigit() or int(chat_id) not in rest_imconnector.state(portal).chats:
            raise self._error(404, "no_such_chat", "No such Open Lines chat")
        message_id, deliveries = rest_imconnector.operator_reply(
            portal, int(chat_id), text, user_id=self._user(portal, body)
        )
        return {
            "message_id": message_id,
            "deliveries": [{"status": d.get("status"), "error": d.get("error")} for d in deliveries],
        }

    def _api_customer_send(self, portal, body):
        """Sign and POST one message to the channel's inbound URL; the app's answer, as it came."""
        endpoint, secret = str(body.get("endpoint") or ""), str(body.get("secret") or "")
        parts = urlsplit(endpoint)
        app = urlsplit(self.app_url)
        if (parts.scheme, parts.netloc) != (app.scheme, app.netloc) or not parts.path.startswith("/channels/"):
            raise self._error(400, "bad_endpoint", f"The inbound URL must be the app's ({self.app_url}/channels/...)")
        action = str(body.get("action") or "add")
        message = {"id": str(body.get("message_id") or f"m{time.time_ns()}")}
        if action != "read":
            message.update({"text": str(body.get("text") or "")[:_TEXT_MAX], "date": int(time.time())})
        payload = {
            "action": action,
            "chat": {"id": str(body.get("chat_id") or "c1"), "name": "Sandbox customer"},
            "user": {"id": str(body.get("customer_id") or "u1"), "name": str(body.get("name") or "Casey")},
            "message": message,
        }
        raw = json.dumps(payload).encode()
        timestamp = str(int(time.time()))
        request = urllib.request.Request(
            endpoint,
            data=raw,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "X-B24Widget-Timestamp": timestamp,
                "X-B24Widget-Signature": _sign(secret, timestamp, raw),
                "X-B24Widget-Signature-Version": "2",
            },
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=_SEND_DEADLINE) as answer:
                status, text = answer.status, answer.read(_ANSWER_MAX)
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read(_ANSWER_MAX)
        except (urllib.error.URLError, OSError) as error:
            raise self._error(502, "app_unreachable", f"The app did not answer: {error.__class__.__name__}") from None
        try:
            answer_json = json.loads(text or b"{}")
        except ValueError:
            answer_json = {"raw": text.decode("utf-8", "replace")[:500]}
        return {"status": status, "answer": answer_json, "message_id": message["id"]}
