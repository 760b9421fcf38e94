"""One Bitrix24 account with our app: its state, its addresses, its switches, and how it serves.

The REST methods themselves live in ``rest_*.py`` (one module per scope), the frame POSTs in
``frames.py``, events in ``events.py``; this class holds the state they read and write.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter

from . import events, frames, rest_offline
from .errors import BLOCK_ON_REST, ApiError
from .faults import Faults
from .http import Response, method_from_path
from .limits import PLANS, Limits
from .rest import serve_rest
from .switches import Switches

__all__ = ["Portal", "NotAdministrator", "DEFAULT_USERS", "DEFAULT_OPEN_LINES", "DEFAULT_SCOPE"]

# CORS on the portal's REST: the official frame SDK (@bitrix24/b24jssdk) calls REST from the app's frame,
# another origin, so a portal must allow it. b24restdocs is silent on the headers; any origin may call,
# the token in the request being the authorization.
_CORS = [("Access-Control-Allow-Origin", "*")]
_CORS_PREFLIGHT = [("Access-Control-Allow-Methods", "GET, POST, OPTIONS"), ("Access-Control-Max-Age", "600")]
# settings/app-installation/installation-finish.md: what everyone but an administrator sees of an app
# whose install has not finished.
NOT_FULLY_INSTALLED = (
    "The application is not fully installed yet. Please contact your Bitrix24 "
    "administrator to complete the installation."
)


class NotAdministrator(PermissionError):
    """Only administrators install apps (the portal shows others ``NOT_FULLY_INSTALLED``)."""


DEFAULT_USERS = [
    {"ID": "1", "NAME": "Anna", "LAST_NAME": "Admin", "EMAIL": "anna@example.test", "ADMIN": True},
    {"ID": "2", "NAME": "Oleg", "LAST_NAME": "User", "EMAIL": "oleg@example.test", "ADMIN": False},
]
DEFAULT_OPEN_LINES = [
    {"ID": "1", "LINE_NAME": "Website chat", "ACTIVE": "Y"},
    {"ID": "2", "LINE_NAME": "Telegram", "ACTIVE": "Y"},
]
DEFAULT_SCOPE = "placement,contact_center,imopenlines,user_brief,crm"


class _PortalSite:
    """One address of a portal; old addresses answer 302 to the current one."""

    def __init__(self, portal):
        self.portal = portal
        self.standin = portal._standin
        self.address = None

    def handle(self, request):
        return self.portal._handle(self.address, request)


class Portal(Switches):
    """One Bitrix24 account with our app: its REST server, users, bindings and switches."""

    def __init__(self, standin, *, member_id, app_status, scope, users):
        self._standin = standin
        self.member_id = member_id or secrets.token_hex(16)
        self.app_status = app_status
        self.scope = scope
        self.users = [dict(u) for u in users]
        self.application_token = secrets.token_hex(16)
        self.requests: list[dict] = []
        self.bindings = {"placements": [], "events": [], "offline": []}
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
        # feature.get's codes (api-reference/common/system/feature-get.md) and whether the plan has each:
        # ``set_feature`` switches one off, as on a plan without it.
        self.features = {"rest_offline_extended": True, "rest_auth_connector": True}
        self._app_unreachable = False  # ``app_unreachable()``: every online event delivery fails
        self.rate_limit = False  # set_plan() turns it on
        self.rate_limit_burst, self.rate_limit_drain = PLANS["others"]  # settings/performance/limits.md
        self.limits = Limits()  # operating time per app and method (operating_limit, operating_cost)
        self._faults = Faults(standin.lock)
        # The answer to a duplicate placement.bind. The docs (userfieldtype-add.md, which binds a
        # placement) and the rest module show ERROR_CORE with this text; replace it to try others.
        self.placement_duplicate_error = ("ERROR_CORE", "Unable to set placement handler: Handler already binded")
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
        return f"{self._standin.scheme}://{self.domain}/rest/"

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

    def is_admin(self, user_id) -> bool:
        return bool((self._user(user_id) or {}).get("ADMIN"))

    def issue_tokens(self, user_id: str = "1", *, client_id: str | None = None) -> dict:
        """A token pair for that user, as the portal mints when it opens an app frame.

        ``client_id`` names another app registered with ``StandIn.add_app``: its tokens are genuine
        on this portal but belong to that app.
        """
        if self._user(user_id) is None:
            raise ValueError(f"no user {user_id!r} on this portal")
        return self._standin._mint(self, user_id, client_id)

    def install_post(self, user_id="1", lang="en", *, forged: bool = False) -> dict:
        """(Re)install the app; return the form fields posted to the app's install URL.

        settings/oauth/simple-way.md: the body carries ``APPLICATION_TOKEN``, the value ONAPPINSTALL
        carries too. Only an administrator installs (settings/app-installation/installation-finish.md):
        for anyone else this raises ``NotAdministrator``, unless ``forged`` builds the POST an ordinary
        user could send by hand with their own genuine tokens (nothing is installed then).
        """
        if not self.is_admin(user_id):
            if not forged:
                raise NotAdministrator(NOT_FULLY_INSTALLED)
            return frames.frame_fields(self, user_id, lang, "DEFAULT", {}, APPLICATION_TOKEN=self.application_token)
        with self._standin.lock:
            self.installed = True
            self.install_finished = False
            self._removed = False
            self.application_token = secrets.token_hex(16)
            if self._blocked == "NOT_INSTALLED":
                self._blocked = None
        return frames.frame_fields(self, user_id, lang, "DEFAULT", {}, APPLICATION_TOKEN=self.application_token)

    def finish_install(self) -> None:
        """What ``BX24.installFinish()`` does: app.info reports INSTALLED true from now on.

        From now on events are delivered (none before: installation-finish.md) and the frame reloads
        into the app (``app_post``, PLACEMENT=DEFAULT; sdk/bx24-js-sdk/system-functions/bx24-install-finish.md).
        """
        with self._standin.lock:
            self.install_finished = True

    def app_post(self, user_id="1", lang="en") -> dict:
        """The form fields of the app's own page (PLACEMENT=DEFAULT, settings/oauth/simple-way.md)."""
        return frames.frame_fields(self, user_id, lang, "DEFAULT", {}, APPLICATION_TOKEN=self.application_token)

    def update_app(self, version: int | None = None) -> dict:
        """A new version is installed: version bumped, a new application_token; returns ONAPPUPDATE's payload.

        api-reference/common/events/on-app-update.md: the event carries "the updated application_token".
        """
        with self._standin.lock:
            self.version = int(version) if version is not None else self.version + 1
            self.application_token = secrets.token_hex(16)
        return self.event_payload("ONAPPUPDATE")

    def placement_post(self, user_id="1", lang="en", placement="CONTACT_CENTER", options: dict | None = None) -> dict:
        """The form fields of a widget open by that user."""
        if options is None:
            options = {}
            binding = self._first_binding(placement)
            if placement == "CONTACT_CENTER" and binding is not None:
                # api-reference/widgets/contact-center.md: ID of the registration, and URI.
                options = {"ID": str(binding["ID"]), "URI": "/contact_center/"}
        return frames.frame_fields(self, user_id, lang, placement, options, APPLICATION_TOKEN=self.application_token)

    def event_payload(
        self,
        event: str,
        *,
        data: dict | None = None,
        with_tokens: bool | None = None,
        user_id="1",
        application_token: str | None = None,
        client_id: str | None = None,
    ) -> dict:
        """The flat form fields Bitrix24 POSTs to an event handler.

        ONAPPINSTALL and ONAPPUPDATE carry ``auth[access_token]``/``auth[refresh_token]`` (their pages
        mark them required) unless ``with_tokens=False`` builds a forged, token-less one; other events
        carry none unless ``with_tokens=True``. ``application_token`` forges another token;
        ``client_id`` mints the tokens for another registered app.
        """
        return events.event_payload(
            self,
            event,
            data=data,
            with_tokens=with_tokens,
            user_id=user_id,
            application_token=application_token,
            client_id=client_id,
        )

    def uninstall(self) -> None:
        """The app is removed: tokens revoked, bindings dropped, OAuth answers NOT_INSTALLED."""
        with self._standin.lock:
            self.installed = False
            self.install_finished = False
            self._removed = True
            self.bindings["placements"].clear()
            self.bindings["events"].clear()
            # "When an application is deleted or updated, its [handlers] will be removed" (event-bind.md); the
            # app's offline queue goes with them (not documented: it could no longer be read anyway).
            self.bindings.setdefault("offline", []).clear()
            queue = getattr(self, "_offline", None)
            if queue is not None:
                queue.records[:] = [r for r in queue.records if r["app"] != self._standin.client_id]
        self._standin._revoke(self)

    def event_handlers(self, event: str) -> list[str]:
        """The handler URLs bound to ``event`` with ``event.bind``, in binding order."""
        event = event.upper()
        with self._standin.lock:
            return [
                b["handler"]
                for b in self.bindings["events"]
                if b["event"] == event and b.get("app", self._standin.client_id) == self._standin.client_id
            ]

    def deliver_event(
        self,
        event: str,
        *,
        handlers: list[str] | None = None,
        payload: dict | None = None,
        timeout: float = 10.0,
        **payload_options,
    ) -> list[dict]:
        """POST the event, form-encoded as Bitrix24 does, to every handler bound for it (and queue it offline).

        ``handlers`` defaults to ``event_handlers(event)``; ``payload`` to ``event_payload(event,
        **payload_options)``. Redirects are not followed. Returns (and appends to the stand-in's
        ``event_deliveries``) one ``{event, member_id, handler, status, body, error, at}`` per handler.
        Until ``finish_install()`` nothing is sent and [] is returned (installation-finish.md: "Events
        will not be sent to the handler"); ONAPPUNINSTALL is sent after the app is gone, as it must be.
        While ``app_unreachable()`` is on, no POST is made: each delivery is recorded failed. An app that
        bound the event offline gets a record in its offline queue (``rest_offline.record``) either way, and
        a new record sends ONOFFLINEEVENT (whose deliveries are appended to the answer).
        """
        with self._standin.lock:
            held = not self.install_finished and event.upper() != "ONAPPUNINSTALL"
        if held:
            return []
        if handlers is None:
            handlers = self.event_handlers(event)
        if payload is None:
            payload = self.event_payload(event, **payload_options)
        # The same event goes to the offline queue of every app that bound it offline (offline-events.md),
        # whatever becomes of the online deliveries; a new record is announced with ONOFFLINEEVENT.
        added = rest_offline.record(self, event, events.data_of(payload))
        with self._standin.lock:
            unreachable = self._app_unreachable
        if unreachable:
            results = [events.undelivered(self, event, handler, "the app is unreachable") for handler in handlers]
        else:
            results = events.deliver_event(self, event, handlers, payload, timeout)
        with self._standin.lock:
            self._standin.event_deliveries.extend(results)
        if added:
            results = results + rest_offline.notify(self, added)
        return results

    _SNAPSHOT_FIELDS = (
        "member_id",
        "app_status",
        "scope",
        "users",
        "application_token",
        "installed",
        "install_finished",
        "payment_expired",
        "days",
        "version",
        "language_id",
        "license",
        "app_id",
        "open_lines",
        "crm_items",
        "bindings",
        "features",
    )

    def _snapshot(self) -> dict:
        """This portal as JSON data (called with the stand-in's lock held)."""
        saved = {name: getattr(self, name) for name in self._SNAPSHOT_FIELDS}
        saved.update(
            {"address": self._domain, "removed": self._removed, "blocked": self._blocked, "next_id": self._next_id}
        )
        from . import rest_imconnector

        if (open_lines_state := rest_imconnector.dump_state(self)) is not None:
            saved["imconnector"] = open_lines_state  # connectors, active lines, chats and their messages
        if (offline_state := rest_offline.dump_state(self)) is not None:
            saved["offline"] = offline_state  # the offline queue (records, the last ONOFFLINEEVENT)
        return json.loads(json.dumps(saved))  # a deep copy, so later changes do not leak in

    def _restore(self, saved: dict) -> None:
        with self._standin.lock:
            for name in self._SNAPSHOT_FIELDS:
                if name in saved and name not in ("member_id", "app_status", "scope", "users"):
                    setattr(self, name, saved[name])
            self.bindings = {
                "placements": list(self.bindings.get("placements") or []),
                "events": list(self.bindings.get("events") or []),
                "offline": list(self.bindings.get("offline") or []),
            }
            self._removed = bool(saved.get("removed"))
            self._blocked = saved.get("blocked")
            self._next_id = int(saved.get("next_id") or 1)
            if isinstance(saved.get("imconnector"), dict):
                from . import rest_imconnector

                rest_imconnector.load_state(self, saved["imconnector"])
            if isinstance(saved.get("offline"), dict):
                rest_offline.load_state(self, saved["offline"])

    def calls(self, method: str) -> int:
        """How many requests named ``method`` reached this portal (batch sub-commands included)."""
        with self._standin.lock:
            return self._calls[method.lower()]

    # serving

    def _handle(self, address, request):
        standin = self._standin
        is_rest = request.path.startswith("/rest/")
        method = method_from_path(request.path) if is_rest else None
        with standin.lock:
            target = self._domain if address != self._domain else self._redirect_to
        if target:
            response = Response(302, b"", [("Location", f"{standin.scheme}://{target}{request.target}")])
        elif is_rest and request.http_method == "OPTIONS":
            asked = request.headers.get("Access-Control-Request-Headers")
            allow = [("Access-Control-Allow-Headers", asked)] if asked else []
            return Response(204, b"", _CORS + _CORS_PREFLIGHT + allow)
        elif not is_rest:
            response = standin._web_response("handle_portal", self, request) or Response(
                404, b"Not found", [("Content-Type", "text/plain")]
            )
        else:
            response = None
        params = dict(request.params)
        auth = params.pop("auth", None)
        if response is None:
            response = serve_rest(self, method, params, auth)
            response.headers = response.headers + _CORS
        if is_rest:
            with standin.lock:
                self._calls[method] += 1
                self.requests.append(
                    {
                        "address": address,
                        "method": method,
                        "params": params,
                        "auth": auth,
                        "status": response.status,
                        "http_method": request.http_method,
                        "at": time.time(),  # when it was answered (bench/soak.py --trace)
                    }
                )
        return response

    def _blocked_on_rest(self):
        with self._standin.lock:
            return BLOCK_ON_REST.get(self._blocked) if self._blocked else None

    def _check_access(self, grant):
        """The checks after the token is known: install, block, expiry, payment."""
        if self._removed:
            raise ApiError("invalid_token")
        blocked = self._blocked_on_rest()
        if blocked in ("invalid_token", "PORTAL_DELETED"):
            raise ApiError(blocked)
        if grant.expires <= time.time():
            raise ApiError("expired_token")
        if blocked:
            raise ApiError(blocked)

    def _take_rate_token(self):
        with self._standin.lock:
            if not self.rate_limit:
                return
            now = time.monotonic()
            drained = (now - self._bucket_at) * self.rate_limit_drain
            self._bucket = max(0.0, self._bucket - drained)
            self._bucket_at = now
            if self._bucket + 1 > self.rate_limit_burst:
                raise ApiError("QUERY_LIMIT_EXCEEDED")
            self._bucket += 1

    def _scripted_failure(self, method):
        with self._standin.lock:
            queue = self._failures.get(method)
            if not queue:
                return
            error, description, status = queue.pop(0)
        raise ApiError(error, description, status)

    def _scopes(self):
        return {s.strip() for s in self.scope.split(",") if s.strip()}

    def _require_admin(self, grant):
        if not self.is_admin(grant.user_id):
            raise ApiError("ACCESS_DENIED")

    def _new_id(self):
        with self._standin.lock:
            value = self._next_id
            self._next_id += 1
            return value

    def _first_binding(self, placement):
        with self._standin.lock:
            for binding in self.bindings["placements"]:
                if (
                    binding["PLACEMENT"] == placement
                    and binding.get("app", self._standin.client_id) == self._standin.client_id
                ):
                    return binding
        return None

    def _event_handler_id(self, event):
        with self._standin.lock:
            for binding in self.bindings["events"]:
                if binding["event"] == event:
                    return binding["id"]
        return 1
