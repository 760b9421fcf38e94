"""HTTP plumbing: the threaded servers on 127.0.0.1, request parsing (PHP-style form keys) and answers.

Form bodies are read the way PHP builds ``$_REQUEST`` (``settings/how-to-call-rest-api/data-encoding.md``:
``FIELDS[TITLE]=...``, ``cmd[key]=...``); JSON bodies are accepted as the official SDKs send them.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import traceback
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from .errors import ApiError

__all__ = [
    "parse_php_params",
    "flatten",
    "Request",
    "Response",
    "json_response",
    "error_response",
    "Server",
    "method_from_path",
    "port_of",
    "iso",
    "truthy",
]


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
        rest = rest[closing + 1 :]
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


def flatten(prefix, value, out):
    """The inverse of ``parse_php_params`` for one value: nested dicts and lists to bracket keys."""
    if isinstance(value, dict):
        for key, item in value.items():
            flatten(f"{prefix}[{key}]", item, out)
    elif isinstance(value, (list, tuple)):
        for key, item in enumerate(value):
            flatten(f"{prefix}[{key}]", item, out)
    elif isinstance(value, bool):
        out[prefix] = "Y" if value else "N"
    else:
        out[prefix] = "" if value is None else str(value)


def iso(ts):
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def truthy(value):
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "y", "yes")
    return bool(value)


def method_from_path(path):
    """``/rest/user.current.json`` -> ``user.current`` (settings/how-to-call-rest-api/index.md)."""
    name = path[len("/rest/") :].strip("/")
    if name.endswith(".json"):
        name = name[: -len(".json")]
    return name.lower()


def port_of(address):
    """The port of a saved ``127.0.0.1:port`` address (0 when there is none)."""
    _, _, port = str(address or "").rpartition(":")
    return int(port) if port.isdigit() else 0


class Request:
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
                    raise ApiError("INVALID_REQUEST", "Invalid JSON body") from None
                if not isinstance(body_json, dict):
                    raise ApiError("INVALID_REQUEST", "JSON body must be an object")
            else:
                pairs += parse_qsl(raw_body.decode("utf-8", "replace"), keep_blank_values=True)
        self.flat = dict(pairs)
        self.params = parse_php_params(pairs)
        if body_json is not None:
            self.params.update(body_json)
            self.flat.update({k: v for k, v in body_json.items() if isinstance(v, str)})


class Response:
    """An answer. ``trickle`` (bytes, seconds) sends the body that many bytes at a time, pausing between."""

    __slots__ = ("status", "body", "headers", "trickle")

    def __init__(self, status, body=b"", headers=None, trickle=None):
        self.status = status
        self.body = body
        self.headers = headers or []
        self.trickle = trickle


def json_response(status, payload):
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return Response(status, body, [("Content-Type", "application/json; charset=utf-8")])


def error_response(error):
    return json_response(error.status, error.payload())


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
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.settimeout(10)  # a client that never finishes the handshake lets go
            self.connection.do_handshake()  # here, in the request's thread, not in the accept loop
            self.connection.settimeout(None)

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
    do_OPTIONS = do_GET  # CORS preflight of the portal's REST

    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            request = Request(self.command, self.path, self.headers, raw)
        except ApiError as error:
            response = error_response(error)
        else:
            standin = self.server.site.standin
            try:
                response = self.server.site.handle(request)
            except Exception:  # keep serving; the failure is kept for the test to see
                standin._note_error(traceback.format_exc())
                response = error_response(ApiError("INTERNAL_SERVER_ERROR"))
            standin._autosave()
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if response.trickle:
            self._trickle(response.body, *response.trickle)
        else:
            self.wfile.write(response.body)

    def _trickle(self, body, chunk, pause):
        stopping = self.server.stopping
        for offset in range(0, len(body), chunk):
            self.wfile.write(body[offset : offset + chunk])
            self.wfile.flush()
            if stopping.wait(pause):
                break  # the stand-in is stopping: do not keep a thread busy for minutes


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, site, port=0, tls=None):
        super().__init__(("127.0.0.1", port), _Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.site = site
        self.address = f"127.0.0.1:{self.server_address[1]}"
        self.stopping = threading.Event()
        self._connections = set()
        self._connections_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self.serve_forever,
            # A request wakes the server at once whatever this is; it only bounds how long stop() waits. A suite
            # keeps hundreds of portals' servers alive: each wakes 4 times a second, not 20.
            kwargs={"poll_interval": 0.25},
            daemon=True,
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
        self.stopping.set()
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
