"""A local Bitrix24 stand-in: real HTTP servers on 127.0.0.1.

One ``StandIn`` runs an OAuth server that answers like ``oauth.bitrix.info`` (``/oauth/token/`` and
``/rest/app.info``); every ``Portal`` it creates runs its own server that answers like a portal's
REST API (``/rest/<method>``). Tests start it in-process; a human sandbox can reuse it.

Pure standard library (no Django, no third-party packages). All shared state sits behind one lock;
servers are daemon threads and never write to stderr. Nothing here logs a token.

For the human sandbox (``manage.py sandbox``) the stand-in can also listen on fixed ports, deliver the
app events bound with ``event.bind`` over HTTP (``Portal.deliver_event``), keep its portals and tokens
in a JSON file across restarts (``state_file``), and hand every path that is not an API to a ``web``
object (``sandbox.pages``) that serves the pages a person clicks through.

Facts follow the public REST documentation (repository ``bitrix24/b24restdocs``); each choice that
the documentation does not settle is marked "not documented" next to it.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = [
    "StandIn",
    "Portal",
    "Recorder",
    "parse_php_params",
    "frame_query_and_body",
    "REST_ERROR_STATUS",
    "OAUTH_ERROR_STATUS",
]

# --- error codes --------------------------------------------------------------------------------

# HTTP status of each REST error code the stand-in can answer.
REST_ERROR_STATUS = {
    # _includes/system-errors.md (included by error-codes.md)
    "NO_AUTH_FOUND": 401,
    "expired_token": 401,
    "insufficient_scope": 403,
    "ACCESS_DENIED": 403,
    "QUERY_LIMIT_EXCEEDED": 503,
    "ERROR_BATCH_LENGTH_EXCEEDED": 400,
    "ERROR_BATCH_METHOD_NOT_ALLOWED": 405,
    "PORTAL_DELETED": 500,
    "INTERNAL_SERVER_ERROR": 500,
    # limits.md ("Resource Intensity Limits")
    "OPERATION_TIME_LIMIT": 429,
    # settings/cloud-and-on-premise/on-premise/custom-methods.md: CRestServer::STATUS_PAYMENT_REQUIRED
    "PAYMENT_REQUIRED": 402,
    # api-reference/widgets/placement-unbind.md, api-reference/events/event-bind.md
    "ERROR_ARGUMENT": 400,
    "ERROR_EVENT_NOT_FOUND": 400,
    # api-reference/widgets/user-field/userfieldtype-add.md ("Handler already binded" is ERROR_CORE, 400)
    "ERROR_CORE": 400,
    # api-reference/crm/universal/crm-item-list.md
    "NOT_FOUND": 400,
    # not documented: what portals and public clients commonly show
    "invalid_token": 401,
    "ERROR_METHOD_NOT_FOUND": 404,
    "ERROR_PLACEMENT_NOT_FOUND": 400,
    "INVALID_REQUEST": 400,
}

REST_ERROR_DESCRIPTION = {
    "NO_AUTH_FOUND": "Wrong authorization data",
    "invalid_token": "Unable to get application by token",
    "expired_token": "The access token provided has expired",
    "insufficient_scope": "The request requires higher privileges than provided by the access token",
    "ACCESS_DENIED": "Access denied!",
    "QUERY_LIMIT_EXCEEDED": "Too many requests",
    "OPERATION_TIME_LIMIT": "Method is blocked due to operation time limit.",
    "ERROR_METHOD_NOT_FOUND": "Method not found!",
    "ERROR_BATCH_LENGTH_EXCEEDED": "Max batch length exceeded",
    "ERROR_BATCH_METHOD_NOT_ALLOWED": "Method is not allowed for batch usage",
    "PAYMENT_REQUIRED": "Payment required",
    "PORTAL_DELETED": "Portal was deleted",
    "INTERNAL_SERVER_ERROR": "Internal server error",
}

# HTTP status of each OAuth-server error. The Bitrix24 pages (settings/oauth/error-codes.md) list the
# codes but not the statuses: invalid_client is 401 and the rest 400, as in RFC 6749 section 5.2 and
# as the official PHP SDK (b24phpsdk, ApiLevelErrorHandler::handleOAuthError) expects them.
OAUTH_ERROR_STATUS = {
    "invalid_request": 400,
    "invalid_client": 401,
    "invalid_grant": 400,
    "invalid_scope": 400,
    "PAYMENT_REQUIRED": 400,
    "NOT_INSTALLED": 400,
    "PORTAL_DELETED": 400,
}

OAUTH_ERROR_DESCRIPTION = {
    "invalid_request": "Invalid request",
    "invalid_client": "Invalid client credentials",
    "invalid_grant": "Invalid grant",
    "PAYMENT_REQUIRED": "Payment required",
    "NOT_INSTALLED": "Application not installed",
    "PORTAL_DELETED": "Portal was deleted",
}

# How a ``Portal.block(error)`` shows on the portal's REST (None: REST is not affected).
_BLOCK_ON_REST = {
    "PAYMENT_REQUIRED": "PAYMENT_REQUIRED",
    "PORTAL_DELETED": "PORTAL_DELETED",
    # A portal that lost the app no longer knows its tokens.
    "NOT_INSTALLED": "invalid_token",
    # A refused refresh token says nothing about the access tokens already issued.
    "invalid_grant": None,
}

BATCH_MAX_LENGTH = 50  # settings/how-to-call-rest-api/batch.md
LIST_PAGE_SIZE = 50  # limits.md: list methods page by 50

# The state file's format (StandIn.state_snapshot); a file of another version is refused.
_STATE_VERSION = 1
# Access tokens expired longer ago than this are left out of the state file.
_KEEP_EXPIRED_ACCESS = 86400
# Events: how much of the app's answer deliver_event keeps, and the User-Agent sent. Not documented:
# what the portals' event queue sends as User-Agent.
_EVENT_BODY_KEPT = 2000
_EVENT_USER_AGENT = "Bitrix24 Webhook Engine (b24widget stand-in)"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """An event POST is not re-sent elsewhere: a 3xx is the handler's answer."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


# No proxies: the handlers are local apps, and environment proxies must not see event payloads.
_EVENT_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


# Which scope a method needs (any one of the set). Methods not listed need only ``basic``.
_METHOD_SCOPES = {
    "user.current": {"user", "user_brief", "user_basic"},  # api-reference/user/user-current.md
}
_PREFIX_SCOPES = {
    "placement.": {"placement"},
    "imopenlines.": {"imopenlines"},
    "crm.": {"crm"},
}

DEFAULT_USERS = [
    {"ID": "1", "NAME": "Anna", "LAST_NAME": "Admin", "EMAIL": "anna@example.test", "ADMIN": True},
    {"ID": "2", "NAME": "Oleg", "LAST_NAME": "User", "EMAIL": "oleg@example.test", "ADMIN": False},
]
DEFAULT_OPEN_LINES = [
    {"ID": "1", "LINE_NAME": "Website chat", "ACTIVE": "Y"},
    {"ID": "2", "LINE_NAME": "Telegram", "ACTIVE": "Y"},
]
DEFAULT_SCOPE = "placement,contact_center,imopenlines,user_brief,crm"

# Fields a portal puts in the handler URL's query; the rest travel in the form body
# (api-reference/widgets/_includes/widget_data.md, settings/oauth/simple-way.md).
FRAME_QUERY_FIELDS = ("DOMAIN", "PROTOCOL", "LANG", "APP_SID")


class _Error(Exception):
    """An error answer: ``{"error": code, "error_description": ...}`` with an HTTP status."""

    def __init__(self, code, description=None, status=None, table=None, **extra):
        super().__init__(code)
        self.code = code
        statuses = REST_ERROR_STATUS if table is None else table
        descriptions = REST_ERROR_DESCRIPTION if table is None else OAUTH_ERROR_DESCRIPTION
        self.description = description if description is not None else descriptions.get(code, code)
        self.status = status if status is not None else statuses.get(code, 400)
        self.extra = extra

    def payload(self):
        return {"error": self.code, "error_description": self.description, **self.extra}


def _oauth_error(code, description=None):
    return _Error(code, description, table=OAUTH_ERROR_STATUS)


# --- request parsing ----------------------------------------------------------------------------


def _split_key(key):
    """``"a[b][]"`` -> ``["a", "b", ""]``; a key that is not bracket-shaped stays whole."""
    opening = key.find("[")
    if opening <= 0 or not key.endswith("]"):
        return [key]
    parts = [key[:opening]]
    rest = key[opening:]
    while rest:
        closing = rest.find("]")
        if not rest.startswith("[") or closing < 0:
            return [key]
        parts.append(rest[1:closing])
        rest = rest[closing + 1:]
    return parts


def _next_index(node):
    numbers = [int(k) for k in node if isinstance(k, str) and k.isdigit()]
    return str(max(numbers) + 1) if numbers else "0"


def _listify(value):
    """Turn dicts keyed "0".."n-1" (in order) into lists, as PHP's json_encode shows them."""
    if isinstance(value, dict):
        value = {k: _listify(v) for k, v in value.items()}
        if value and list(value) == [str(i) for i in range(len(value))]:
            return list(value.values())
        return value
    if isinstance(value, list):
        return [_listify(v) for v in value]
    return value


def parse_php_params(pairs):
    """Build nested params from form pairs with PHP-style keys (``LANG_ALL[en][TITLE]``, ``cmd[k]``)."""
    root = {}
    for key, value in pairs:
        path = _split_key(key)
        node = root
        for index, part in enumerate(path):
            if part == "":
                part = _next_index(node)
            if index == len(path) - 1:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
    return {k: _listify(v) for k, v in root.items()}


def _flatten(prefix, value, out):
    """The inverse of ``parse_php_params`` for one value: nested dicts and lists to bracket keys."""
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}[{key}]", item, out)
    elif isinstance(value, (list, tuple)):
        for key, item in enumerate(value):
            _flatten(f"{prefix}[{key}]", item, out)
    elif isinstance(value, bool):
        out[prefix] = "Y" if value else "N"
    else:
        out[prefix] = "" if value is None else str(value)


def frame_query_and_body(fields):
    """Split frame-POST fields the way a real portal sends them: ``(query, body)``."""
    query = {k: v for k, v in fields.items() if k in FRAME_QUERY_FIELDS}
    body = {k: v for k, v in fields.items() if k not in FRAME_QUERY_FIELDS}
    return query, body


class _Request:
    __slots__ = ("http_method", "path", "query", "target", "params", "flat", "raw_body", "headers")

    def __init__(self, http_method, target, headers, raw_body):
        split = urlsplit(target)
        self.http_method = http_method
        self.target = target  # path plus query, as received
        self.path = split.path
        self.query = split.query
        self.headers = headers
        self.raw_body = raw_body
        pairs = parse_qsl(split.query, keep_blank_values=True)
        body_json = None
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if raw_body:
            if content_type == "application/json":
                try:
                    body_json = json.loads(raw_body.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    raise _Error("INVALID_REQUEST", "Invalid JSON body") from None
                if not isinstance(body_json, dict):
                    raise _Error("INVALID_REQUEST", "JSON body must be an object")
            else:
                pairs += parse_qsl(raw_body.decode("utf-8", "replace"), keep_blank_values=True)
        self.flat = dict(pairs)
        self.params = parse_php_params(pairs)
        if body_json is not None:
            self.params.update(body_json)
            self.flat.update({k: v for k, v in body_json.items() if isinstance(v, str)})


class _Response:
    __slots__ = ("status", "body", "headers")

    def __init__(self, status, body=b"", headers=None):
        self.status = status
        self.body = body
        self.headers = headers or []


def _json_response(status, payload):
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return _Response(status, body, [("Content-Type", "application/json; charset=utf-8")])


def _error_response(error):
    return _json_response(error.status, error.payload())


def _iso(ts):
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def _time_block(start):
    finish = time.time()
    spent = finish - start
    return {
        "start": start,
        "finish": finish,
        "duration": spent,
        "processing": spent,
        "date_start": _iso(start),
        "date_finish": _iso(finish),
        "operating_reset_at": int(start) + 600,
        "operating": spent,
    }


def _php_array(value):
    """PHP's json_encode writes an empty array as ``[]``, even where a filled one is an object."""
    return value if value else []


def _php_section(section):
    """A batch answer section as PHP encodes it: ``[]`` when empty, a list when keyed 0..n-1."""
    if not section:
        return []
    if list(section) == [str(i) for i in range(len(section))]:
        return list(section.values())
    return section


def _truthy(value):
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "y", "yes")
    return bool(value)


# --- HTTP plumbing ------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "B24StandIn/1.0"

    def version_string(self):
        return self.server_version

    def log_message(self, format, *args):  # noqa: A002 - quiet: no request log
        pass

    def setup(self):
        super().setup()
        # Headers and body leave in two writes; without this, Nagle's algorithm meets the client's
        # delayed ACK and every kept-alive request costs ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def do_GET(self):
        self._serve()

    do_POST = do_GET
    do_PUT = do_GET
    do_DELETE = do_GET
    do_PATCH = do_GET

    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            request = _Request(self.command, self.path, self.headers, raw)
        except _Error as error:
            response = _error_response(error)
        else:
            standin = self.server.site.standin
            try:
                response = self.server.site.handle(request)
            except Exception:  # keep serving; the failure is kept for the test to see
                standin._note_error(traceback.format_exc())
                response = _error_response(_Error("INTERNAL_SERVER_ERROR"))
            standin._autosave()
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, site, port=0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.site = site
        self.address = f"127.0.0.1:{self.server_address[1]}"
        self._connections = set()
        self._connections_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name=f"b24-standin-{self.address}",
        )

    def track(self, connection, opened):
        with self._connections_lock:
            if opened:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def handle_error(self, request, client_address):
        pass  # quiet: a client hanging up mid-request is not worth a traceback on stderr

    def start(self):
        self._thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()
        # Kept-alive connections would otherwise go on being served after stop().
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --- tokens -------------------------------------------------------------------------------------


class _Grant:
    __slots__ = ("portal", "user_id", "expires")

    def __init__(self, portal, user_id, expires):
        self.portal = portal
        self.user_id = user_id
        self.expires = expires


class _Page:
    """A list method's answer: the result plus ``next``/``total`` at the top level."""

    __slots__ = ("result", "next", "total")

    def __init__(self, result, next=None, total=None):  # noqa: A002 - Bitrix24's own name
        self.result = result
        self.next = next
        self.total = total


# --- the stand-in -------------------------------------------------------------------------------


class StandIn:
    """The OAuth server plus every portal, recorder and token; start it, add portals, stop it.

    ``port`` fixes the OAuth server's port (0: any free one). Set ``state_file`` to keep portals and
    tokens in that JSON file after every request (``restore_state`` reads it back); set ``web`` to an
    object with ``handle_server(request)`` and ``handle_portal(portal, request)`` returning
    ``(status, headers, body)`` or None to serve pages on the paths that are not APIs.
    """

    def __init__(self, client_id: str, client_secret: str, *, access_ttl: int = 3600, port: int = 0):
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_ttl = access_ttl
        self.port = port
        self.state_file = None
        self.web = None
        self.event_deliveries: list[dict] = []  # every deliver_event() answer, oldest first
        self.lock = threading.RLock()
        self.oauth_requests: list[dict] = []
        self.server_requests: list[dict] = []  # REST calls that reached the OAuth server (app.info)
        self.errors: list[str] = []  # tracebacks of stand-in bugs (answered as 500)
        self.oauth_down = False
        self.oauth_delay = 0.0
        # Seconds the token endpoint waits AFTER rotating the refresh token, before it answers: the
        # "late answer" a client that gives up too early loses (the old token is already spent).
        self.oauth_late = 0.0
        self.portals: list[Portal] = []
        self.recorders: list[Recorder] = []
        self.address = None
        self.oauth_url = None
        self.server_endpoint = None
        self._access: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}
        self._servers: list[_Server] = []
        self._started = False
        self._stopped = False
        self._save_lock = threading.Lock()
        self._saved_text = None

    # lifecycle

    def start(self) -> "StandIn":
        with self.lock:
            if self._started:
                return self
            if self._stopped:
                raise RuntimeError("a stopped StandIn cannot be started again")
            self._started = True
        server = self._serve(_OAuthSite(self), port=self.port)
        self.address = server.address
        self.oauth_url = f"http://{self.address}/oauth/token/"
        self.server_endpoint = f"http://{self.address}/rest/"
        return self

    def stop(self) -> None:
        if self._started and not self._stopped:
            self._autosave()
        with self.lock:
            servers, self._servers = self._servers, []
            self._stopped = True
        # In parallel: each shutdown waits up to one poll interval for its serving loop.
        stoppers = [threading.Thread(target=server.stop, daemon=True) for server in servers]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    # factories

    def add_portal(self, *, member_id: str | None = None, app_status: str = "F",
                   scope: str = DEFAULT_SCOPE, users: list[dict] | None = None,
                   port: int = 0) -> "Portal":
        """A new portal serving its REST on 127.0.0.1:``port`` (0: any free port)."""
        if not self._started or self._stopped:
            raise RuntimeError("start() the StandIn before adding portals")
        portal = Portal(self, member_id=member_id, app_status=app_status, scope=scope,
                        users=DEFAULT_USERS if users is None else users)
        with self.lock:
            if any(p.member_id == portal.member_id for p in self.portals):
                raise ValueError("a portal with this member_id exists")
            self.portals.append(portal)
        try:
            portal._open_address(port)
        except OSError:
            with self.lock:
                self.portals.remove(portal)
            raise
        self._autosave()
        return portal

    def add_recorder(self) -> "Recorder":
        if self._stopped:
            raise RuntimeError("the StandIn is stopped")
        recorder = Recorder(self)
        server = self._serve(recorder)
        recorder.address = server.address
        with self.lock:
            self.recorders.append(recorder)
        return recorder

    def portal_by_member_id(self, member_id) -> "Portal":
        with self.lock:
            for portal in self.portals:
                if portal.member_id == member_id:
                    return portal
        raise KeyError(member_id)

    # internals shared with portals

    def _serve(self, site, port=0):
        server = _Server(site, port)
        with self.lock:
            if self._stopped:
                server.server_close()
                raise RuntimeError("the StandIn is stopped")
            self._servers.append(server)
        server.start()
        return server

    def _note_error(self, text):
        with self.lock:
            self.errors.append(text)

    def _mint(self, portal, user_id):
        """Mint and store a fresh token pair for that portal's user."""
        expires = time.time() + self.access_ttl
        access = secrets.token_hex(32)
        refresh = secrets.token_hex(32)
        with self.lock:
            self._access[access] = _Grant(portal, str(user_id), expires)
            self._refresh[refresh] = _Grant(portal, str(user_id), None)
        return {"access_token": access, "refresh_token": refresh,
                "expires_in": self.access_ttl, "expires": int(expires)}

    def _revoke(self, portal):
        with self.lock:
            for store in (self._access, self._refresh):
                for token in [t for t, g in store.items() if g.portal is portal]:
                    del store[token]

    def _grant(self, auth):
        """The grant behind an access token, or the REST error a portal answers."""
        if not auth or not isinstance(auth, str):
            raise _Error("NO_AUTH_FOUND")
        with self.lock:
            grant = self._access.get(auth)
        if grant is None:
            raise _Error("invalid_token")
        return grant

    def _web_response(self, handler_name, *args):
        """Ask ``web`` for a page; None when there is no ``web`` or it has no such page."""
        web = self.web
        handler = getattr(web, handler_name, None) if web is not None else None
        answer = handler(*args) if handler is not None else None
        if answer is None:
            return None
        status, headers, body = answer
        return _Response(status, body, list(headers))

    # persistence (the human sandbox keeps its portal across restarts)

    def state_snapshot(self) -> dict:
        """Portals and live tokens as plain JSON data (secrets included: keep the file private)."""
        now = time.time()
        with self.lock:
            portals = [portal._snapshot() for portal in self.portals]
            access = {
                token: {"member_id": g.portal.member_id, "user_id": g.user_id, "expires": g.expires}
                for token, g in self._access.items()
                # Long-expired access tokens are of no use to anyone: not worth keeping.
                if g.expires > now - _KEEP_EXPIRED_ACCESS
            }
            refresh = {token: {"member_id": g.portal.member_id, "user_id": g.user_id}
                       for token, g in self._refresh.items()}
        return {"version": _STATE_VERSION, "client_id": self.client_id, "portals": portals,
                "access_tokens": access, "refresh_tokens": refresh}

    def restore_state(self, state: dict, *, ports: dict | None = None) -> list["Portal"]:
        """Re-create the portals and tokens of a ``state_snapshot()``, each portal on its saved port.

        ``ports`` maps a member_id to another port: the portal then lives there (as after a rename;
        the OAuth server reports the new ``client_endpoint``). Returns the restored portals.
        """
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError("not a stand-in state (or one of another version)")
        ports = ports or {}
        restored = []
        for saved in state.get("portals") or []:
            port = ports.get(saved["member_id"], _port_of(saved.get("address")))
            portal = self.add_portal(member_id=saved["member_id"], app_status=saved["app_status"],
                                     scope=saved["scope"], users=saved["users"], port=port)
            portal._restore(saved)
            restored.append(portal)
        by_member = {portal.member_id: portal for portal in restored}
        with self.lock:
            for token, saved in (state.get("access_tokens") or {}).items():
                portal = by_member.get(saved.get("member_id"))
                if portal is not None:
                    self._access[token] = _Grant(portal, str(saved["user_id"]), float(saved["expires"]))
            for token, saved in (state.get("refresh_tokens") or {}).items():
                portal = by_member.get(saved.get("member_id"))
                if portal is not None:
                    self._refresh[token] = _Grant(portal, str(saved["user_id"]), None)
        self._autosave()
        return restored

    @staticmethod
    def read_state_file(path) -> dict | None:
        """The state saved in ``path``, or None when there is no such file."""
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None

    def save_state(self) -> None:
        """Write ``state_snapshot()`` to ``state_file`` now (atomically; only when it changed)."""
        if not self.state_file:
            return
        with self._save_lock:
            text = json.dumps(self.state_snapshot(), indent=1, sort_keys=True)
            if text == self._saved_text:
                return
            path = os.fspath(self.state_file)
            temporary = f"{path}.tmp"
            # The file holds tokens: readable by its owner only.
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(temporary, path)
            self._saved_text = text

    def _autosave(self):
        if self.state_file:
            try:
                self.save_state()
            except OSError:
                self._note_error(traceback.format_exc())

    def _token_info(self, grant):
        """The OAuth server's own app.info for an access token: whose app, which portal, which user.

        Shape of b24pysdk's B24AppInfoResultData (schemas/api.py; the docs' settings/oauth/index.md
        names the server's REST); b24phpsdk reads the same `install` block.
        """
        portal = grant.portal
        with self.lock:
            expires = next((g.expires for t, g in self._access.items() if g is grant), time.time())
        return {
            "client_id": self.client_id,
            "scope": portal.scope,
            "expires": _iso(expires),
            "user_id": int(grant.user_id) if str(grant.user_id).isdigit() else grant.user_id,
            "install": {
                "installed": bool(portal.install_finished),
                "version": portal.version,
                "status": portal.app_status,
                "scope": portal.scope,
                "domain": portal.domain,
                "uri": f"http://{portal.domain}/",
                "client_endpoint": portal.client_endpoint,
                "member_id": portal.member_id,
                "member_type": "PORTAL",
            },
        }

    # the OAuth token endpoint

    def _refresh_tokens(self, params):
        if params.get("client_id") != self.client_id:
            raise _oauth_error("invalid_client")
        secret = str(params.get("client_secret", "")).encode()
        if not secrets.compare_digest(secret, self.client_secret.encode()):
            raise _oauth_error("invalid_client")
        if params.get("grant_type") != "refresh_token":
            raise _oauth_error("invalid_request", "Unsupported grant_type")
        token = params.get("refresh_token")
        if not token:
            raise _oauth_error("invalid_request", "refresh_token is required")
        with self.lock:
            grant = self._refresh.get(token)
            if grant is None:
                raise _oauth_error("invalid_grant")
            portal = grant.portal
            if portal._removed:
                raise _oauth_error("NOT_INSTALLED")
            if portal._blocked:
                raise _oauth_error(portal._blocked)
            del self._refresh[token]  # refresh tokens rotate: this one is spent
            pair = self._mint(portal, grant.user_id)
            user_id = int(grant.user_id) if grant.user_id.isdigit() else grant.user_id
            return {
                "access_token": pair["access_token"],
                "expires": pair["expires"],
                "expires_in": pair["expires_in"],
                "scope": portal.scope,
                "domain": self.address,
                "server_endpoint": self.server_endpoint,
                "status": portal.app_status,
                "client_endpoint": portal.client_endpoint,
                "member_id": portal.member_id,
                "user_id": user_id,
                "refresh_token": pair["refresh_token"],
            }


class _OAuthSite:
    """``oauth.bitrix.info``: the token endpoint and the server REST (``app.info``)."""

    def __init__(self, standin):
        self.standin = standin

    def handle(self, request):
        path = request.path
        if path.rstrip("/") == "/oauth/token":
            return self._token(request)
        if path.startswith("/rest/"):
            return self._rest(request)
        page = self.standin._web_response("handle_server", request)
        if page is not None:
            return page
        return _Response(404, b"Not found", [("Content-Type", "text/plain")])

    def _token(self, request):
        standin = self.standin
        params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in request.flat.items()}
        with standin.lock:
            standin.oauth_requests.append(params)
        if standin.oauth_delay:
            time.sleep(standin.oauth_delay)
        if standin.oauth_down:
            body = b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
            return _Response(503, body, [("Content-Type", "text/html")])
        try:
            answer = _json_response(200, standin._refresh_tokens(params))
        except _Error as error:
            return _error_response(error)
        if standin.oauth_late:
            time.sleep(standin.oauth_late)
        return answer

    def _rest(self, request):
        standin = self.standin
        if standin.oauth_down:  # the whole OAuth server host is down, its REST with it
            body = b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
            return _Response(503, body, [("Content-Type", "text/html")])
        method = _method_from_path(request.path)
        params = dict(request.params)
        auth = params.pop("auth", None)
        start = time.time()
        try:
            grant = standin._grant(auth)
            grant.portal._check_access(grant)
            if method != "app.info":
                raise _Error("ERROR_METHOD_NOT_FOUND")
            grant.portal._scripted_failure(method)  # fail_next covers the server's app.info too
            response = _json_response(200, {"result": standin._token_info(grant),
                                            "time": _time_block(start)})
        except _Error as error:
            response = _error_response(error)
        with standin.lock:
            standin.server_requests.append({"address": standin.address, "method": method,
                                            "params": params, "auth": auth,
                                            "status": response.status})
        return response


def _port_of(address):
    """The port of a saved ``127.0.0.1:port`` address (0 when there is none)."""
    _, _, port = str(address or "").rpartition(":")
    return int(port) if port.isdigit() else 0


def _method_from_path(path):
    name = path[len("/rest/"):].strip("/")
    if name.endswith(".json"):
        name = name[:-len(".json")]
    return name.lower()


class Recorder:
    """A server that records every request reaching it and answers 404."""

    def __init__(self, standin):
        self.standin = standin
        self.address = None
        self.requests: list[dict] = []

    @property
    def url(self):
        return f"http://{self.address}/"

    def handle(self, request):
        entry = {
            "http_method": request.http_method,
            "path": request.path,
            "query": request.query,
            "headers": dict(request.headers.items()),
            "body": request.raw_body.decode("utf-8", "replace"),
            "params": request.params,
        }
        with self.standin.lock:
            self.requests.append(entry)
        return _Response(404, b"Not found", [("Content-Type", "text/plain")])


class _PortalSite:
    """One address of a portal; old addresses answer 302 to the current one."""

    def __init__(self, portal):
        self.portal = portal
        self.standin = portal._standin
        self.address = None

    def handle(self, request):
        return self.portal._handle(self.address, request)


class Portal:
    """One Bitrix24 account with our app: its REST server, users, bindings and switches."""

    def __init__(self, standin, *, member_id, app_status, scope, users):
        self._standin = standin
        self.member_id = member_id or secrets.token_hex(16)
        self.app_status = app_status
        self.scope = scope
        self.users = [dict(u) for u in users]
        self.application_token = secrets.token_hex(16)
        self.requests: list[dict] = []
        self.bindings = {"placements": [], "events": []}
        # A fresh portal is mid-install: tokens work, app.info says INSTALLED false. install_post()
        # sets installed, finish_install() plays BX24.installFinish(), uninstall() removes the app.
        self.installed = False
        self.install_finished = False
        self._removed = False
        self.payment_expired = False
        self.days = None
        self.version = 1
        self.language_id = "en"
        self.license = "en_project"
        self.app_id = 1  # app.info ID: the app's local id on the portal
        self.open_lines = [dict(line) for line in DEFAULT_OPEN_LINES]
        self.crm_items = 0
        self.rate_limit = False
        self.rate_limit_burst = 50  # limits.md: "Others" plans
        self.rate_limit_drain = 2.0
        # The answer to a duplicate placement.bind. The docs (userfieldtype-add.md, which binds a
        # placement) and the rest module show ERROR_CORE with this text; replace it to try others.
        self.placement_duplicate_error = (
            "ERROR_CORE", "Unable to set placement handler: Handler already binded")
        self._calls = Counter()
        self._bucket = 0.0
        self._bucket_at = time.monotonic()
        self._blocked = None
        self._failures: dict[str, list] = {}
        self._redirect_to = None
        self._domain = None
        self._addresses: list[str] = []
        self._next_id = 1

    def __repr__(self):
        return f"<Portal {self.member_id} at {self._domain}>"

    # addresses

    @property
    def domain(self) -> str:
        with self._standin.lock:
            return self._domain

    @property
    def client_endpoint(self) -> str:
        return f"http://{self.domain}/rest/"

    @property
    def addresses(self) -> list[str]:
        """Every address this portal has had, oldest first (the last is ``domain``)."""
        with self._standin.lock:
            return list(self._addresses)

    def _open_address(self, port=0):
        site = _PortalSite(self)
        server = self._standin._serve(site, port)
        site.address = server.address
        with self._standin.lock:
            self._domain = server.address
            self._addresses.append(server.address)
        return server.address

    def rename(self) -> str:
        """Move the portal to a new port; old addresses answer 302 to it from now on."""
        return self._open_address()

    def redirect_to(self, address: str | None) -> None:
        """Make the current address answer 302 to ``address`` (None stops it); OAuth is not told."""
        with self._standin.lock:
            self._redirect_to = address

    # tokens and lifecycle

    def _user(self, user_id):
        for user in self.users:
            if str(user.get("ID")) == str(user_id):
                return user
        return None

    def issue_tokens(self, user_id: str = "1") -> dict:
        """A token pair for that user, as the portal mints when it opens an app frame."""
        if self._user(user_id) is None:
            raise ValueError(f"no user {user_id!r} on this portal")
        return self._standin._mint(self, user_id)

    def install_post(self, user_id="1", lang="en") -> dict:
        """(Re)install the app; return the form fields posted to the app's install URL."""
        with self._standin.lock:
            self.installed = True
            self.install_finished = False
            self._removed = False
            self.application_token = secrets.token_hex(16)
            if self._blocked == "NOT_INSTALLED":
                self._blocked = None
        # settings/oauth/simple-way.md: the install POST carries APPLICATION_TOKEN, the value
        # ONAPPINSTALL then delivers as auth[application_token].
        return self._frame_fields(user_id, lang, "DEFAULT", {}, APPLICATION_TOKEN=self.application_token)

    def _frame_fields(self, user_id, lang, placement, options, **extra) -> dict:
        """The form fields of an app frame opened by that user (install page or placement)."""
        tokens = self.issue_tokens(user_id)
        return {
            "DOMAIN": self.domain,
            "PROTOCOL": "0",
            "LANG": lang,
            "APP_SID": secrets.token_hex(16),
            "AUTH_ID": tokens["access_token"],
            "AUTH_EXPIRES": str(tokens["expires_in"]),
            "REFRESH_ID": tokens["refresh_token"],
            "SERVER_ENDPOINT": self._standin.server_endpoint,
            **extra,
            "APPLICATION_SCOPE": self.scope,
            "member_id": self.member_id,
            "status": self.app_status,
            "PLACEMENT": placement,
            "PLACEMENT_OPTIONS": json.dumps(options),
        }

    def finish_install(self) -> None:
        """What ``BX24.installFinish()`` does: app.info reports INSTALLED true from now on."""
        with self._standin.lock:
            self.install_finished = True

    def placement_post(self, user_id="1", lang="en", placement="CONTACT_CENTER",
                       options: dict | None = None) -> dict:
        """The form fields of a widget open by that user."""
        if options is None:
            options = {}
            binding = self._first_binding(placement)
            if placement == "CONTACT_CENTER" and binding is not None:
                # api-reference/widgets/contact-center.md: ID of the registration, and URI.
                options = {"ID": str(binding["ID"]), "URI": "/contact_center/"}
        return self._frame_fields(user_id, lang, placement, options, APPLICATION_TOKEN=self.application_token)

    def event_payload(self, event: str, *, data: dict | None = None, with_tokens: bool = False,
                      user_id="1", application_token: str | None = None) -> dict:
        """The flat form fields Bitrix24 POSTs to an event handler."""
        event = event.upper()
        defaults = {
            "ONAPPINSTALL": {"VERSION": str(self.version), "ACTIVE": "Y", "INSTALLED": "Y",
                             "LANGUAGE_ID": self.language_id},
            "ONAPPUNINSTALL": {"LANGUAGE_ID": self.language_id, "CLEAN": "0"},
            "ONAPPUPDATE": {"VERSION": str(self.version),
                            "PREVIOUS_VERSION": str(max(self.version - 1, 0)),
                            "LANGUAGE_ID": self.language_id},
        }.get(event, {})
        payload = {"event": event, "event_handler_id": str(self._event_handler_id(event))}
        _flatten("data", {**defaults, **(data or {})}, payload)
        payload["ts"] = str(int(time.time()))
        auth = {
            "domain": self.domain,
            "client_endpoint": self.client_endpoint,
            "server_endpoint": self._standin.server_endpoint,
            "member_id": self.member_id,
        }
        # on-app-uninstall.md lists no status in auth; the install and update events carry it.
        if event != "ONAPPUNINSTALL":
            auth["status"] = self.app_status
        auth["application_token"] = application_token or self.application_token
        if with_tokens:
            tokens = self.issue_tokens(user_id)
            auth.update({
                "access_token": tokens["access_token"],
                "refresh_token": tokens["refresh_token"],
                "expires": str(tokens["expires"]),
                "expires_in": str(tokens["expires_in"]),
                "scope": self.scope,
                "user_id": str(user_id),
            })
        _flatten("auth", auth, payload)
        return payload

    def uninstall(self) -> None:
        """The app is removed: tokens revoked, bindings dropped, OAuth answers NOT_INSTALLED."""
        with self._standin.lock:
            self.installed = False
            self.install_finished = False
            self._removed = True
            self.bindings["placements"].clear()
            self.bindings["events"].clear()
        self._standin._revoke(self)

    def event_handlers(self, event: str) -> list[str]:
        """The handler URLs bound to ``event`` with ``event.bind``, in binding order."""
        event = event.upper()
        with self._standin.lock:
            return [b["handler"] for b in self.bindings["events"] if b["event"] == event]

    def deliver_event(self, event: str, *, handlers: list[str] | None = None,
                      payload: dict | None = None, timeout: float = 10.0, **payload_options) -> list[dict]:
        """POST the event, form-encoded as Bitrix24 does, to every handler bound for it.

        ``handlers`` defaults to ``event_handlers(event)``; ``payload`` to ``event_payload(event,
        **payload_options)``. Redirects are not followed. Returns (and appends to the stand-in's
        ``event_deliveries``) one ``{event, member_id, handler, status, body, error, at}`` per handler.
        """
        if handlers is None:
            handlers = self.event_handlers(event)
        if payload is None:
            payload = self.event_payload(event, **payload_options)
        body = urlencode(payload).encode("utf-8")
        results = []
        for handler in handlers:
            entry = {"event": event.upper(), "member_id": self.member_id, "handler": handler,
                     "status": None, "body": "", "error": "", "at": time.time()}
            request = urllib.request.Request(handler, data=body, method="POST", headers={
                "Content-Type": "application/x-www-form-urlencoded", "User-Agent": _EVENT_USER_AGENT})
            try:
                with _EVENT_OPENER.open(request, timeout=timeout) as answer:
                    entry["status"] = answer.status
                    entry["body"] = answer.read(_EVENT_BODY_KEPT).decode("utf-8", "replace")
            except urllib.error.HTTPError as error:
                entry["status"] = error.code
                entry["body"] = error.read(_EVENT_BODY_KEPT).decode("utf-8", "replace")
                error.close()
            except (urllib.error.URLError, OSError) as error:
                entry["error"] = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
            results.append(entry)
        with self._standin.lock:
            self._standin.event_deliveries.extend(results)
        return results

    _SNAPSHOT_FIELDS = ("member_id", "app_status", "scope", "users", "application_token", "installed",
                        "install_finished", "payment_expired", "days", "version", "language_id",
                        "license", "app_id", "open_lines", "crm_items", "bindings")

    def _snapshot(self) -> dict:
        """This portal as JSON data (called with the stand-in's lock held)."""
        saved = {name: getattr(self, name) for name in self._SNAPSHOT_FIELDS}
        saved.update({"address": self._domain, "removed": self._removed, "blocked": self._blocked,
                      "next_id": self._next_id})
        return json.loads(json.dumps(saved))  # a deep copy, so later changes do not leak in

    def _restore(self, saved: dict) -> None:
        with self._standin.lock:
            for name in self._SNAPSHOT_FIELDS:
                if name in saved and name not in ("member_id", "app_status", "scope", "users"):
                    setattr(self, name, saved[name])
            self.bindings = {"placements": list(self.bindings.get("placements") or []),
                             "events": list(self.bindings.get("events") or [])}
            self._removed = bool(saved.get("removed"))
            self._blocked = saved.get("blocked")
            self._next_id = int(saved.get("next_id") or 1)

    def expire_access_tokens(self) -> None:
        """Every access token minted so far answers expired_token."""
        with self._standin.lock:
            for grant in self._standin._access.values():
                if grant.portal is self:
                    grant.expires = 0

    def block(self, error: str) -> None:
        """OAuth refresh answers ``error`` from now on; REST answers the matching error if any."""
        with self._standin.lock:
            self._blocked = error

    def unblock(self) -> None:
        with self._standin.lock:
            self._blocked = None

    def fail_next(self, method: str, error: str, status: int, times: int = 1,
                  description: str | None = None) -> None:
        """The next ``times`` calls of ``method`` (direct or in a batch) answer this error."""
        description = description or REST_ERROR_DESCRIPTION.get(error, "Simulated failure")
        with self._standin.lock:
            self._failures.setdefault(method.lower(), []).extend(
                [(error, description, status)] * times)

    def calls(self, method: str) -> int:
        """How many requests named ``method`` reached this portal (batch sub-commands included)."""
        with self._standin.lock:
            return self._calls[method.lower()]

    # serving

    def _handle(self, address, request):
        standin = self._standin
        is_rest = request.path.startswith("/rest/")
        method = _method_from_path(request.path) if is_rest else None
        with standin.lock:
            target = self._domain if address != self._domain else self._redirect_to
        if target:
            response = _Response(302, b"", [("Location", f"http://{target}{request.target}")])
        elif not is_rest:
            response = standin._web_response("handle_portal", self, request) or _Response(
                404, b"Not found", [("Content-Type", "text/plain")])
        else:
            response = None
        params = dict(request.params)
        auth = params.pop("auth", None)
        if response is None:
            response = self._serve_rest(method, params, auth)
        if is_rest:
            with standin.lock:
                self._calls[method] += 1
                self.requests.append({
                    "address": address, "method": method, "params": params, "auth": auth,
                    "status": response.status, "http_method": request.http_method,
                })
        return response

    def _serve_rest(self, method, params, auth):
        start = time.time()
        try:
            self._take_rate_token()
            self._scripted_failure(method)
            if self._blocked_on_rest() == "PORTAL_DELETED":
                raise _Error("PORTAL_DELETED")
            grant = self._standin._grant(auth)
            if grant.portal is not self:
                raise _Error("invalid_token")
            self._check_access(grant)
            answer = self._dispatch(method, params, grant)
        except _Error as error:
            return _error_response(error)
        if isinstance(answer, _Page):
            body = {"result": answer.result}
            if answer.next is not None:
                body["next"] = answer.next
            if answer.total is not None:
                body["total"] = answer.total
        else:
            body = {"result": answer}
        body["time"] = _time_block(start)
        return _json_response(200, body)

    def _blocked_on_rest(self):
        with self._standin.lock:
            return _BLOCK_ON_REST.get(self._blocked) if self._blocked else None

    def _check_access(self, grant):
        """The checks after the token is known: install, block, expiry, payment."""
        if self._removed:
            raise _Error("invalid_token")
        blocked = self._blocked_on_rest()
        if blocked in ("invalid_token", "PORTAL_DELETED"):
            raise _Error(blocked)
        if grant.expires <= time.time():
            raise _Error("expired_token")
        if blocked:
            raise _Error(blocked)

    def _take_rate_token(self):
        with self._standin.lock:
            if not self.rate_limit:
                return
            now = time.monotonic()
            drained = (now - self._bucket_at) * self.rate_limit_drain
            self._bucket = max(0.0, self._bucket - drained)
            self._bucket_at = now
            if self._bucket + 1 > self.rate_limit_burst:
                raise _Error("QUERY_LIMIT_EXCEEDED")
            self._bucket += 1

    def _scripted_failure(self, method):
        with self._standin.lock:
            queue = self._failures.get(method)
            if not queue:
                return
            error, description, status = queue.pop(0)
        raise _Error(error, description, status)

    def _dispatch(self, method, params, grant):
        handler = _METHODS.get(method)
        if handler is None:
            raise _Error("ERROR_METHOD_NOT_FOUND")
        needed = _METHOD_SCOPES.get(method)
        if needed is None:
            needed = next((s for p, s in _PREFIX_SCOPES.items() if method.startswith(p)), None)
        if needed and not needed & self._scopes():
            raise _Error("insufficient_scope")
        return handler(self, params, grant)

    def _scopes(self):
        return {s.strip() for s in self.scope.split(",") if s.strip()}

    def _require_admin(self, grant):
        user = self._user(grant.user_id) or {}
        if not user.get("ADMIN"):
            raise _Error("ACCESS_DENIED")

    def _new_id(self):
        with self._standin.lock:
            value = self._next_id
            self._next_id += 1
            return value

    def _first_binding(self, placement):
        with self._standin.lock:
            for binding in self.bindings["placements"]:
                if binding["PLACEMENT"] == placement:
                    return binding
        return None

    def _event_handler_id(self, event):
        with self._standin.lock:
            for binding in self.bindings["events"]:
                if binding["event"] == event:
                    return binding["id"]
        return 1

    def _app_info(self):
        kind = self.license.split("_", 1)[-1]
        return {
            "ID": self.app_id,
            "CODE": self._standin.client_id,
            "VERSION": self.version,
            "STATUS": self.app_status,
            "INSTALLED": bool(self.install_finished),
            "PAYMENT_EXPIRED": "Y" if self.payment_expired else "N",
            "DAYS": self.days,
            "LANGUAGE_ID": self.language_id,
            "LICENSE": self.license,
            "LICENSE_TYPE": kind,
            "LICENSE_FAMILY": kind.rstrip("0123456789"),
        }

    # REST methods: each takes (params, grant) and returns the result or a _Page

    def _m_user_current(self, params, grant):
        user = dict(self._user(grant.user_id) or {})
        user.pop("ADMIN", None)
        result = {"ID": str(grant.user_id), "ACTIVE": True}
        result.update(user)
        for key, default in (("IS_ONLINE", "Y"), ("PERSONAL_GENDER", ""), ("WORK_POSITION", ""),
                             ("UF_DEPARTMENT", [1])):
            result.setdefault(key, default)
        return result

    def _m_user_admin(self, params, grant):
        return bool((self._user(grant.user_id) or {}).get("ADMIN"))

    def _m_profile(self, params, grant):
        user = self._user(grant.user_id) or {}
        return {
            "ID": str(grant.user_id),
            "ADMIN": bool(user.get("ADMIN")),
            "NAME": user.get("NAME", ""),
            "LAST_NAME": user.get("LAST_NAME", ""),
            "PERSONAL_GENDER": user.get("PERSONAL_GENDER", ""),
            "TIME_ZONE": user.get("TIME_ZONE", ""),
        }

    def _m_app_info(self, params, grant):
        return self._app_info()

    def _m_server_time(self, params, grant):
        return _iso(time.time())

    def _m_placement_bind(self, params, grant):
        self._require_admin(grant)
        p = {str(k).upper(): v for k, v in params.items()}
        placement = str(p.get("PLACEMENT") or "").strip().upper()
        handler = str(p.get("HANDLER") or "").strip()
        for name, value in (("PLACEMENT", placement), ("HANDLER", handler)):
            if not value:
                raise _Error("ERROR_ARGUMENT", f"Argument '{name}' is null or empty", argument=name)
        needed = _placement_scope(placement)
        if needed and needed not in self._scopes():
            raise _Error("ERROR_PLACEMENT_NOT_FOUND", "Placement not found")
        with self._standin.lock:
            for binding in self.bindings["placements"]:
                if binding["PLACEMENT"] == placement and binding["HANDLER"] == handler:
                    code, description = self.placement_duplicate_error
                    raise _Error(code, description)
            self.bindings["placements"].append({
                "ID": self._new_id(),
                "PLACEMENT": placement,
                "HANDLER": handler,
                "TITLE": p.get("TITLE", ""),
                "DESCRIPTION": p.get("DESCRIPTION", ""),
                "GROUP_NAME": p.get("GROUP_NAME", ""),
                "LANG_ALL": p.get("LANG_ALL") or {},
                "OPTIONS": p.get("OPTIONS") or {},
                "USER_ID": 0,
            })
        return True

    def _m_placement_unbind(self, params, grant):
        self._require_admin(grant)
        p = {str(k).upper(): v for k, v in params.items()}
        placement = str(p.get("PLACEMENT") or "").strip().upper()
        handler = str(p.get("HANDLER") or "").strip()
        if not placement:
            raise _Error("ERROR_ARGUMENT", "Argument 'PLACEMENT' is null or empty", argument="PLACEMENT")
        with self._standin.lock:
            keep, removed = [], 0
            for binding in self.bindings["placements"]:
                if binding["PLACEMENT"] == placement and (not handler or binding["HANDLER"] == handler):
                    removed += 1
                else:
                    keep.append(binding)
            self.bindings["placements"][:] = keep
        # placement-unbind.md: count grows by one per record found and one per record removed.
        return {"count": 2 * removed}

    def _m_placement_get(self, params, grant):
        with self._standin.lock:
            return [{
                "id": b["ID"],
                "placement": b["PLACEMENT"],
                "userId": b["USER_ID"],
                "handler": b["HANDLER"],
                "options": _php_array(b["OPTIONS"]),
                "title": b["TITLE"],
                "description": b["DESCRIPTION"],
                "langAll": _php_array(b["LANG_ALL"]),
            } for b in self.bindings["placements"]]

    def _m_event_bind(self, params, grant):
        p = {str(k).lower(): v for k, v in params.items()}
        event = str(p.get("event") or "").strip().upper()
        handler = str(p.get("handler") or "").strip()
        auth_type = str(p.get("auth_type") or "0")
        if not event.startswith("ON"):
            raise _Error("ERROR_EVENT_NOT_FOUND", "Event not found")
        if not handler:
            raise _Error("ERROR_ARGUMENT", "Argument 'handler' is null or empty", argument="handler")
        with self._standin.lock:
            for b in self.bindings["events"]:
                if (b["event"], b["handler"], b["auth_type"]) == (event, handler, auth_type):
                    raise _Error("ERROR_CORE", "Unable to set event handler: Handler already binded")
            self.bindings["events"].append(
                {"id": self._new_id(), "event": event, "handler": handler, "auth_type": auth_type})
        return True

    def _m_event_unbind(self, params, grant):
        p = {str(k).lower(): v for k, v in params.items()}
        event = str(p.get("event") or "").strip().upper()
        handler = str(p.get("handler") or "").strip()
        auth_type = p.get("auth_type")
        with self._standin.lock:
            keep, removed = [], 0
            for binding in self.bindings["events"]:
                if ((not event or binding["event"] == event)
                        and (not handler or binding["handler"] == handler)
                        and (auth_type is None or binding["auth_type"] == str(auth_type or "0"))):
                    removed += 1
                else:
                    keep.append(binding)
            self.bindings["events"][:] = keep
        return {"count": removed}

    def _m_event_get(self, params, grant):
        with self._standin.lock:
            return [{"event": b["event"], "handler": b["handler"], "auth_type": b["auth_type"],
                     "offline": 0} for b in self.bindings["events"]]

    def _m_imopenlines_config_list_get(self, params, grant):
        with self._standin.lock:
            return [dict(line) for line in self.open_lines]

    def _m_crm_item_list(self, params, grant):
        try:
            entity_type_id = int(params.get("entityTypeId") or 0)
        except (TypeError, ValueError):
            entity_type_id = 0
        if entity_type_id <= 0:
            raise _Error("NOT_FOUND", "SPA not found")
        try:
            start = max(int(params.get("start") or 0), 0)
        except (TypeError, ValueError):
            start = 0
        total = self.crm_items
        stop = min(start + LIST_PAGE_SIZE, total)
        items = [{"id": n, "title": f"Item {n}"} for n in range(start + 1, stop + 1)]
        return _Page({"items": items}, next=stop if stop < total else None, total=total)

    def _m_batch(self, params, grant):
        commands = params.get("cmd") or {}
        if isinstance(commands, list):
            commands = {str(i): c for i, c in enumerate(commands)}
        if not isinstance(commands, dict):
            raise _Error("ERROR_ARGUMENT", "Argument 'cmd' must be an array", argument="cmd")
        halt = _truthy(params.get("halt", False))
        sections = {name: {} for name in ("result", "result_error", "result_total",
                                          "result_next", "result_time")}
        for position, (key, line) in enumerate(commands.items()):
            if position >= BATCH_MAX_LENGTH:
                # batch.md: subqueries beyond the limit end with this error; the batch itself is 200.
                sections["result_error"][key] = _Error("ERROR_BATCH_LENGTH_EXCEEDED").payload()
                continue
            start = time.time()
            line = line if isinstance(line, str) else ""
            name, _, query = line.partition("?")
            name = name.strip().strip("/").lower()
            if name.endswith(".json"):
                name = name[:-len(".json")]
            sub_params = parse_php_params(parse_qsl(query, keep_blank_values=True))
            sub_params.pop("auth", None)  # sub-commands run with the batch's authorization
            with self._standin.lock:
                self._calls[name] += 1
            try:
                if name == "batch":
                    raise _Error("ERROR_BATCH_METHOD_NOT_ALLOWED")
                self._scripted_failure(name)
                answer = self._dispatch(name, sub_params, grant)
            except _Error as error:
                sections["result_error"][key] = {"error": error.code,
                                                 "error_description": error.description}
                if halt:
                    break
                continue
            if isinstance(answer, _Page):
                sections["result"][key] = answer.result
                if answer.total is not None:
                    sections["result_total"][key] = answer.total
                if answer.next is not None:
                    sections["result_next"][key] = answer.next
            else:
                sections["result"][key] = answer
            sections["result_time"][key] = _time_block(start)
        return {name: _php_section(value) for name, value in sections.items()}


def _placement_scope(placement):
    """The scope a placement needs besides ``placement`` (the placement's own page lists it)."""
    if placement == "CONTACT_CENTER":
        return "contact_center"
    if placement.startswith("CRM_"):
        return "crm"
    return None


_METHODS = {
    "user.current": Portal._m_user_current,
    "user.admin": Portal._m_user_admin,
    "profile": Portal._m_profile,
    "app.info": Portal._m_app_info,
    "server.time": Portal._m_server_time,
    "placement.bind": Portal._m_placement_bind,
    "placement.unbind": Portal._m_placement_unbind,
    "placement.get": Portal._m_placement_get,
    "event.bind": Portal._m_event_bind,
    "event.unbind": Portal._m_event_unbind,
    "event.get": Portal._m_event_get,
    "imopenlines.config.list.get": Portal._m_imopenlines_config_list_get,
    "crm.item.list": Portal._m_crm_item_list,
    "batch": Portal._m_batch,
}
