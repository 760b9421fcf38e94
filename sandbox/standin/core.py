"""``StandIn``: the OAuth server plus every portal, recorder and token; start it, add portals, stop it.

Also the persistence of the human sandbox (``state_snapshot``/``restore_state``): portals and live tokens
in a JSON file, so a restarted sandbox is the same portal with the same tokens.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
import traceback

from .errors import ApiError
from .faults import Faults, oversized_shape, slow_shape
from .http import Response, Server, port_of
from .oauth import App, Grant, OAuthSite
from .portal import DEFAULT_SCOPE, DEFAULT_USERS, Portal
from .recorder import Recorder

__all__ = ["StandIn"]

# The state file's format (StandIn.state_snapshot); a file of another version is refused.
_STATE_VERSION = 1
# Access tokens expired longer ago than this are left out of the state file.
_KEEP_EXPIRED_ACCESS = 86400


class StandIn:
    """The OAuth server plus every portal, recorder and token; start it, add portals, stop it.

    ``port`` fixes the OAuth server's port (0: any free one). Set ``state_file`` to keep portals and
    tokens in that JSON file after every request (``restore_state`` reads it back); set ``web`` to an
    object with ``handle_server(request)`` and ``handle_portal(portal, request)`` returning
    ``(status, headers, body)`` or None to serve pages on the paths that are not APIs.
    """

    def __init__(self, client_id: str, client_secret: str, *, access_ttl: int = 3600, port: int = 0, tls=None):
        # An ssl.SSLContext (server side) makes every server speak HTTPS, as real portals and the OAuth
        # server do (clients that insist on https://, such as b24pysdk, need it); None: plain HTTP.
        self.tls = tls
        self.scheme = "https" if tls is not None else "http"
        self.client_id = client_id
        self.client_secret = client_secret
        # Every app the OAuth server knows; the first is "ours" (add_app registers others).
        self.apps: dict[str, App] = {client_id: App(client_id, client_secret)}
        # Hosts placement.bind/event.bind accept although the docs refuse them (api-reference/widgets/
        # index.md: no localhost): the sandbox and the browser tests run the app on this machine.
        self.local_handler_hosts = {"localhost", "127.0.0.1"}
        self.access_ttl = access_ttl
        self.port = port
        self.state_file: str | os.PathLike[str] | None = None
        self.web = None
        self.event_deliveries: list[dict] = []  # every deliver_event() answer, oldest first
        # The clock of what the portals time themselves (offline records' TIMESTAMP_X, ONOFFLINEEVENT's
        # minTimeout): tests replace it to let time pass without waiting.
        self.clock = time.time
        self.lock = threading.RLock()
        self.oauth_requests: list[dict] = []
        self.server_requests: list[dict] = []  # REST calls that reached the OAuth server (app.info)
        self.errors: list[str] = []  # tracebacks of stand-in bugs (answered as 500)
        self.oauth_down = False
        # Seconds the token endpoint waits BEFORE it rotates the refresh token (nothing happened yet).
        self.oauth_delay = 0.0
        # Seconds the token endpoint waits AFTER it rotated the refresh token, before answering: the
        # old refresh token is already spent when a client that gave up would retry with it.
        self.oauth_late = 0.0
        # A test's gate: while it is an Event not yet set, the token endpoint waits for it (at most 8 s, under
        # the app's read timeout) before it rotates anything; `oauth_delay` is the same for a fixed time.
        self.oauth_gate: threading.Event | None = None
        self._faults = Faults(self.lock)
        self._stopping = threading.Event()
        self.portals: list[Portal] = []
        self.recorders: list[Recorder] = []
        self.address = None
        self.oauth_url: str | None = None  # both set by start()
        self.server_endpoint: str | None = None
        self._access: dict[str, Grant] = {}
        self._refresh: dict[str, Grant] = {}
        self._servers: list[Server] = []
        self._started = False
        self._stopped = False
        self._save_lock = threading.Lock()
        self._saved_text: str | None = None

    # lifecycle

    def start(self) -> StandIn:
        with self.lock:
            if self._started:
                return self
            if self._stopped:
                raise RuntimeError("a stopped StandIn cannot be started again")
            self._started = True
        server = self._serve(OAuthSite(self), port=self.port)
        self.address = server.address
        self.oauth_url = f"{self.scheme}://{self.address}/oauth/token/"
        self.server_endpoint = f"{self.scheme}://{self.address}/rest/"
        return self

    def stop(self) -> None:
        if self._started and not self._stopped:
            self._autosave()
        self._stopping.set()  # ends late answers and trickles at once
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

    def add_portal(
        self,
        *,
        member_id: str | None = None,
        app_status: str = "F",
        scope: str = DEFAULT_SCOPE,
        users: list[dict] | None = None,
        port: int = 0,
    ) -> Portal:
        """A new portal serving its REST on 127.0.0.1:``port`` (0: any free port)."""
        if not self._started or self._stopped:
            raise RuntimeError("start() the StandIn before adding portals")
        portal = Portal(
            self,
            member_id=member_id,
            app_status=app_status,
            scope=scope,
            users=DEFAULT_USERS if users is None else users,
        )
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

    def add_recorder(self) -> Recorder:
        if self._stopped:
            raise RuntimeError("the StandIn is stopped")
        recorder = Recorder(self)
        server = self._serve(recorder)
        recorder.address = server.address
        with self.lock:
            self.recorders.append(recorder)
        return recorder

    def add_app(self, client_id: str, client_secret: str, *, code: str | None = None) -> App:
        """Register another application with the OAuth server (a second app on the same portals).

        Its tokens come from ``portal.issue_tokens(user_id, client_id=client_id)``; they work on every
        portal's REST, refresh only with this app's credentials, and ``app.info`` (portal and OAuth
        server) answers for this app. ``code`` is its portal ``app.info`` ``CODE`` (default: client_id).
        """
        with self.lock:
            if client_id in self.apps:
                raise ValueError("an app with this client_id exists")
            app = self.apps[client_id] = App(client_id, client_secret, code)
        return app

    @property
    def app(self) -> App:
        """Our app (the first registered)."""
        return self.apps[self.client_id]

    # faults of the OAuth server's answers ("oauth.token": the token endpoint; "app.info": its REST)

    def slow_answer(self, target: str = "oauth.token", *, chunk: int = 1, pause: float = 0.5, times: int = 1) -> None:
        """The next ``times`` answers of ``target`` trickle out ``chunk`` bytes every ``pause`` seconds."""
        self._faults.add(target, slow_shape(chunk, pause), times)

    def oversized_answer(self, target: str = "oauth.token", megabytes: float = 4, *, times: int = 1) -> None:
        """The next ``times`` answers of ``target`` carry ``megabytes`` of padding (still valid JSON)."""
        self._faults.add(target, oversized_shape(megabytes), times)

    def _stopping_wait(self, seconds):
        self._stopping.wait(seconds)

    def portal_by_member_id(self, member_id) -> Portal:
        with self.lock:
            for portal in self.portals:
                if portal.member_id == member_id:
                    return portal
        raise KeyError(member_id)

    # internals shared with portals

    def _serve(self, site, port=0):
        server = Server(site, port, tls=self.tls)
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

    def _mint(self, portal, user_id, client_id=None):
        """Mint and store a fresh token pair for that portal's user, for that app (default: ours)."""
        client_id = client_id or self.client_id
        if client_id not in self.apps:
            raise ValueError(f"no app {client_id!r} registered (add_app)")
        expires = time.time() + self.access_ttl
        access = secrets.token_hex(32)
        refresh = secrets.token_hex(32)
        with self.lock:
            self._access[access] = Grant(portal, str(user_id), expires, client_id)
            self._refresh[refresh] = Grant(portal, str(user_id), None, client_id)
        return {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": self.access_ttl,
            "expires": int(expires),
        }

    def _revoke(self, portal):
        with self.lock:
            for store in (self._access, self._refresh):
                for token in [t for t, g in store.items() if g.portal is portal]:
                    del store[token]

    def _grant(self, auth):
        """The grant behind an access token, or the REST error a portal answers."""
        if not auth or not isinstance(auth, str):
            raise ApiError("NO_AUTH_FOUND")
        with self.lock:
            grant = self._access.get(auth)
        if grant is None:
            raise ApiError("invalid_token")
        return grant

    def _web_response(self, handler_name, *args):
        """Ask ``web`` for a page; None when there is no ``web`` or it has no such page."""
        web = self.web
        handler = getattr(web, handler_name, None) if web is not None else None
        answer = handler(*args) if handler is not None else None
        if answer is None:
            return None
        status, headers, body = answer
        return Response(status, body, list(headers))

    # persistence (the human sandbox keeps its portal across restarts)

    def state_snapshot(self) -> dict:
        """Portals and live tokens as plain JSON data (secrets included: keep the file private)."""
        now = time.time()
        with self.lock:
            portals = [portal._snapshot() for portal in self.portals]
            access = {
                token: {
                    "member_id": g.portal.member_id,
                    "user_id": g.user_id,
                    "expires": g.expires,
                    "client_id": g.client_id,
                }
                for token, g in self._access.items()
                # Long-expired access tokens are of no use to anyone: not worth keeping.
                if g.expires > now - _KEEP_EXPIRED_ACCESS
            }
            refresh = {
                token: {"member_id": g.portal.member_id, "user_id": g.user_id, "client_id": g.client_id}
                for token, g in self._refresh.items()
            }
        return {
            "version": _STATE_VERSION,
            "client_id": self.client_id,
            "portals": portals,
            "access_tokens": access,
            "refresh_tokens": refresh,
        }

    def restore_state(self, state: dict, *, ports: dict | None = None) -> list[Portal]:
        """Re-create the portals and tokens of a ``state_snapshot()``, each portal on its saved port.

        ``ports`` maps a member_id to another port: the portal then lives there (as after a rename;
        the OAuth server reports the new ``client_endpoint``). Returns the restored portals.
        """
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError("not a stand-in state (or one of another version)")
        ports = ports or {}
        restored = []
        for saved in state.get("portals") or []:
            port = ports.get(saved["member_id"], port_of(saved.get("address")))
            portal = self.add_portal(
                member_id=saved["member_id"],
                app_status=saved["app_status"],
                scope=saved["scope"],
                users=saved["users"],
                port=port,
            )
            portal._restore(saved)
            restored.append(portal)
        by_member = {portal.member_id: portal for portal in restored}
        with self.lock:
            for token, saved in (state.get("access_tokens") or {}).items():
                owner = by_member.get(saved.get("member_id"))
                if owner is not None and saved.get("client_id", self.client_id) in self.apps:
                    self._access[token] = Grant(
                        owner, str(saved["user_id"]), float(saved["expires"]), saved.get("client_id")
                    )
            for token, saved in (state.get("refresh_tokens") or {}).items():
                owner = by_member.get(saved.get("member_id"))
                if owner is not None and saved.get("client_id", self.client_id) in self.apps:
                    self._refresh[token] = Grant(owner, str(saved["user_id"]), None, saved.get("client_id"))
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
