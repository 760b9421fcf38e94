"""The pages a person clicks through in the local Bitrix24 sandbox, served by the stand-in itself.

Each stand-in portal's address serves a Contact Center page (``/``) with a grid of squares, our app's
square among them once its install finished, and a slider that shows the app in an iframe, as a
portal does. The page installs the app (the install POST into the frame, then ``ONAPPINSTALL`` to the
handlers the app bound), opens the widget with the POST a portal sends (``DOMAIN``, ``PROTOCOL``,
``LANG``, ``APP_SID`` in the handler URL's query, the rest in the form body) and uninstalls it
(``ONAPPUNINSTALL`` with the right ``application_token``).

The page is the parent side of Bitrix24's frame protocol, so the official frame library
(``@bitrix24/b24jssdk``'s ``B24Frame``, which the app's pages load) runs in it unchanged: the frame's
``window.name`` is ``DOMAIN|PROTOCOL|APP_SID``; the library posts ``command:paramsJSON:callbackKey:appSid``
strings to the portal's origin and gets ``callbackKey:JSON`` back (``getInitData`` with the upper-case
fields, ``setInstallFinish``, ``resizeWindow``, ``refreshAuth``, ``reloadWindow``, ``setTitle``,
``closeApplication``); REST calls go from the frame to the portal's ``/rest/`` directly (CORS).

Standard library only, like the stand-in: the app under test (Django) runs in another process or
thread and is reached only over HTTP.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from string import Template
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .openlines_pages import OpenLinesPages
from .standin import NOT_FULLY_INSTALLED, frame_query_and_body

__all__ = ["SandboxPages", "LANGUAGES", "BUILT_IN_SQUARES"]

WEB = Path(__file__).resolve().parent / "web"
LANGUAGES = ("en", "ru", "de")
# The Contact Center's own connectors, shown around ours so the grid looks like a portal's. Not
# clickable: the sandbox stands in for our app only.
BUILT_IN_SQUARES = (
    ("livechat", "Live chat", "#2fc6f6"),
    ("telegram", "Telegram", "#29a9eb"),
    ("whatsapp", "WhatsApp", "#25d366"),
    ("viber", "Viber", "#7360f2"),
    ("facebook", "Facebook", "#1877f2"),
    ("instagram", "Instagram Direct", "#d6249f"),
    ("email", "E-mail", "#ffa900"),
    ("telephony", "Telephony", "#3bc8a4"),
    ("webform", "CRM forms", "#9dcf00"),
)
_EVENT_LOG_KEPT = 50
_OPTIONS_MAX = 2048
_JSON_HEADERS = [("Content-Type", "application/json; charset=utf-8"), ("Cache-Control", "no-store")]
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


class _ApiError(Exception):
    def __init__(self, status, code, description):
        super().__init__(code)
        self.status = status
        self.code = code
        self.description = description


def _read(name: str) -> bytes:
    return (WEB / name).read_bytes()


def _json(status, payload):
    return status, list(_JSON_HEADERS), json.dumps(payload, ensure_ascii=False).encode("utf-8")


def _with_query(url: str, query: dict) -> str:
    """``url`` with ``query`` added to whatever query string it already has."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True) + list(query.items())
    return urlunsplit(parts._replace(query=urlencode(pairs)))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class SandboxPages(OpenLinesPages):
    """Attach to a started ``StandIn``: ``SandboxPages(standin, app_url=...).attach()``.

    ``app_url`` is where the app runs (its ``B24_APP_URL``); the install URL is ``app_url + install_path``
    as a real app's card holds it. Placement handlers come from what the app bound.
    """

    def __init__(self, standin, *, app_url: str, install_path: str = "/install/", placement_path: str = "/placement/"):
        self.standin = standin
        self.app_url = app_url.rstrip("/")
        self.install_url = self.app_url + install_path
        # The app's own page (its card's "handler path"): where the frame reloads after installFinish.
        self.app_page_url = self.app_url + placement_path
        # Where a stale square still points after an uninstall when nothing was ever bound.
        self.default_handler = self.app_url + placement_path
        self._last_handler: dict[str, str] = {}
        self._openlines_init()

    def attach(self) -> SandboxPages:
        self.standin.web = self
        return self

    @staticmethod
    def portal_url(portal) -> str:
        """The portal's Contact Center page."""
        return f"http://{portal.domain}/"

    # --- the stand-in's OAuth address (api.bitrix24.com's role) -------------------------------------

    def handle_server(self, request):
        return None  # the frame library is the app's own static file now; nothing to serve here

    # --- a portal's address ----------------------------------------------------------------------

    def handle_portal(self, portal, request):
        path, method = request.path, request.http_method
        if method == "GET" and path in ("/", "/contact_center/", "/contact-center/"):
            if request.headers.get("Host") != portal.domain:
                # e.g. localhost:PORT: the portal's origin is what the app lets frame it.
                return 302, [("Location", self.portal_url(portal))], b""
            return self._contact_center(portal)
        page = self.handle_openlines(portal, request, read=_read, json_answer=_json)
        if page is not None:
            return page
        if method == "GET" and path == "/favicon.ico":
            return 204, [("Cache-Control", "max-age=86400")], b""
        if method == "GET" and path in ("/sandbox/contact-center.js", "/sandbox/sandbox.css"):
            name = path.rsplit("/", 1)[-1]
            return 200, [("Content-Type", _TYPES[Path(name).suffix]), ("Cache-Control", "no-store")], _read(name)
        if path.startswith("/sandbox/api/"):
            action = path[len("/sandbox/api/") :].strip("/")
            if method == "GET" and action == "state":
                return _json(200, self._state(portal, request.flat.get("lang", "en")))
            handler = getattr(self, f"_api_{action.replace('-', '_')}", None)
            if handler is None:
                return _json(404, {"error": "not_found", "error_description": "No such sandbox action"})
            try:
                self._check_same_origin(portal, request)
                body = request.params if isinstance(request.params, dict) else {}
                return _json(200, handler(portal, body))
            except _ApiError as error:
                return _json(error.status, {"error": error.code, "error_description": error.description})
        return None

    @staticmethod
    def _check_same_origin(portal, request):
        # Only the page itself may act: a JSON POST from another origin needs a CORS preflight this
        # server never grants, and a browser names its Origin, which must be the portal's.
        if request.http_method != "POST":
            raise _ApiError(405, "method_not_allowed", "Use POST")
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise _ApiError(415, "json_only", "Send application/json")
        origin = request.headers.get("Origin")
        if origin and origin != f"http://{portal.domain}":
            raise _ApiError(403, "foreign_origin", "Only the sandbox page may do this")
        if request.headers.get("Host") != portal.domain:  # no DNS rebinding onto 127.0.0.1
            raise _ApiError(403, "foreign_host", "Call the sandbox by its own address")

    def _contact_center(self, portal):
        config = {
            "appUrl": self.app_url,
            "appOrigin": _origin(self.app_url),
            "installUrl": self.install_url,
            "domain": portal.domain,
            "memberId": portal.member_id,
            "users": [
                {
                    "id": str(u["ID"]),
                    "name": f"{u.get('NAME', '')} {u.get('LAST_NAME', '')}".strip(),
                    "admin": bool(u.get("ADMIN")),
                }
                for u in portal.users
            ],
            "languages": list(LANGUAGES),
            "builtIn": [{"code": c, "title": t, "color": color} for c, t, color in BUILT_IN_SQUARES],
        }
        # JSON inside <script type="application/json">: "<" escaped so nothing can close the element.
        page = Template(_read("contact-center.html").decode("utf-8")).substitute(
            domain=html.escape(portal.domain),
            member_id=html.escape(portal.member_id),
            app_url=html.escape(self.app_url),
            config=json.dumps(config).replace("<", "\\u003c"),
        )
        return 200, [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")], page.encode("utf-8")

    # --- state -----------------------------------------------------------------------------------

    def _state(self, portal, lang):
        lang = lang if lang in LANGUAGES else "en"
        with self.standin.lock:
            installed, finished, removed = portal.installed, portal.install_finished, portal._removed
            placements = [dict(b) for b in portal.bindings["placements"]]
            events = sorted({b["event"] for b in portal.bindings["events"]})
            deliveries = [dict(d) for d in self.standin.event_deliveries if d.get("member_id") == portal.member_id][
                -_EVENT_LOG_KEPT:
            ]
        squares, elsewhere = [], []
        if installed and finished:
            for binding in placements:
                titles = binding.get("LANG_ALL") or {}
                localized = titles.get(lang) if isinstance(titles, dict) else None
                localized = localized if isinstance(localized, dict) else {}
                shown = {
                    "id": binding["ID"],
                    "title": localized.get("TITLE") or binding.get("TITLE") or "App",
                    "description": localized.get("DESCRIPTION") or binding.get("DESCRIPTION") or "",
                }
                if binding["PLACEMENT"] == "CONTACT_CENTER":
                    squares.append(shown)
                else:
                    # Any other placement the app bound (a CRM card's tab, a menu item ...): the sandbox cannot
                    # draw each place, so the Contact Center page lists them, each opening like the square.
                    elsewhere.append({**shown, "placement": binding["PLACEMENT"], "handler": binding["HANDLER"]})
        if removed:
            app_state = "uninstalled"
        elif installed and finished:
            app_state = "installed"
        elif installed:
            app_state = "installing"
        else:
            app_state = "not-installed"
        return {
            "appState": app_state,
            "installFinished": bool(finished),
            "squares": squares,
            "placements": elsewhere,
            "boundPlacements": [b["PLACEMENT"] for b in placements],
            "boundEvents": events,
            "deliveries": deliveries,
            "connectorTiles": self.connector_tiles(portal) if installed and finished and not removed else [],
        }

    # --- actions (POST, JSON, same origin) ---------------------------------------------------------

    @staticmethod
    def _error(status, code, description):
        return _ApiError(status, code, description)

    @staticmethod
    def _user(portal, body):
        user_id = str(body.get("user_id") or "1")
        if portal._user(user_id) is None:
            raise _ApiError(400, "no_such_user", f"No user {user_id} on this portal")
        return user_id

    @staticmethod
    def _lang(body):
        lang = str(body.get("lang") or "en")
        if lang not in LANGUAGES:
            raise _ApiError(400, "no_such_language", f"Languages: {', '.join(LANGUAGES)}")
        return lang

    @staticmethod
    def _frame(action_url, fields, *, user, is_admin, lang, placement, install=False):
        """What the page posts into the frame, the frame's name, and the frame library's getInitData answer."""
        query, body = frame_query_and_body(fields)
        return {
            "action": _with_query(action_url, query),
            "fields": body,
            # The official library reads DOMAIN|PROTOCOL|APP_SID from window.name, which the portal sets.
            "frameName": f"{fields['DOMAIN']}|{fields['PROTOCOL']}|{fields['APP_SID']}",
            "user": user,
            "lang": lang,
            # getInitData: what B24Frame.init() reads (AppFrame, AuthManager, PlacementManager,
            # OptionsManager of @bitrix24/b24jssdk); INSTALL lets the install page call installFinish.
            "init": {
                "DOMAIN": fields["DOMAIN"],
                "PROTOCOL": int(fields["PROTOCOL"]),
                "LANG": lang,
                "PATH": urlsplit(action_url).path,
                "AUTH_ID": fields["AUTH_ID"],
                "AUTH_EXPIRES": int(fields["AUTH_EXPIRES"]),
                "REFRESH_ID": fields["REFRESH_ID"],
                "MEMBER_ID": fields["member_id"],
                "IS_ADMIN": is_admin,
                "PLACEMENT": placement,
                "PLACEMENT_OPTIONS": json.loads(fields.get("PLACEMENT_OPTIONS") or "{}"),
                "INSTALL": install,
                "FIRST_RUN": False,
                "APP_OPTIONS": {},
                "USER_OPTIONS": {},
            },
        }

    def _api_install(self, portal, body):
        """Install (or reinstall) as ``user_id``: the fields the page posts to the app's install URL.

        Only administrators install (settings/app-installation/installation-finish.md); anyone else
        gets the portal's "not fully installed" message instead of the app.
        """
        user, lang = self._user(portal, body), self._lang(body)
        if not portal.is_admin(user):
            raise _ApiError(403, "not_fully_installed", NOT_FULLY_INSTALLED)
        with self.standin.lock:
            portal.language_id = lang
        fields = portal.install_post(user_id=user, lang=lang)
        admin = bool((portal._user(user) or {}).get("ADMIN"))
        return self._frame(
            self.install_url, fields, user=user, is_admin=admin, lang=lang, placement="DEFAULT", install=True
        )

    def _api_install_event(self, portal, body):
        """After the install page loaded: events wait for installFinish, so nothing is sent yet."""
        with self.standin.lock:
            if not portal.installed or portal._removed:
                raise _ApiError(409, "not_installing", "Install the app first")
        return {"deliveries": self._deliver(portal, "ONAPPINSTALL")}  # [] until installFinish

    def _api_install_finished(self, portal, body):
        """The page saw installFinish from the install frame: ONAPPINSTALL, then reload into the app.

        installation-finish.md: events flow only from now on; bx24-install-finish.md: "the page will
        reload and the application will launch" (its own page, PLACEMENT=DEFAULT, as the installer).
        """
        user, lang = self._user(portal, body), self._lang(body)
        with self.standin.lock:
            if not portal.installed or portal._removed:
                raise _ApiError(409, "not_installing", "The app is not being installed")
        portal.finish_install()
        deliveries = self._deliver(portal, "ONAPPINSTALL", user_id=user)
        fields = portal.app_post(user_id=user, lang=lang)
        reload = self._frame(
            self.app_page_url, fields, user=user, is_admin=portal.is_admin(user), lang=lang, placement="DEFAULT"
        )
        # The frame now shows the app: the slider's header names it, as a portal's does, not "Installing".
        return {
            "installFinished": True,
            "deliveries": deliveries,
            "reload": reload,
            "title": self._app_title(portal, lang),
        }

    def _app_title(self, portal, lang):
        """The app's name as the portal shows it: the title of a placement it bound (localized), or "Application"."""
        with self.standin.lock:
            bindings = [dict(b) for b in portal.bindings["placements"]]
        for binding in bindings:
            localized = (binding.get("LANG_ALL") or {}).get(lang)
            title = (localized.get("TITLE") if isinstance(localized, dict) else "") or binding.get("TITLE")
            if title:
                return str(title)
        return "Application"

    def _api_open(self, portal, body):
        """A click on our square (or, with ``stale``, on a square left over after an uninstall); with
        ``placement_id``, on any other placement the app bound (``options``: its PLACEMENT_OPTIONS)."""
        user, lang = self._user(portal, body), self._lang(body)
        if body.get("placement_id") not in (None, ""):
            return self._open_placement(portal, body, user, lang)
        handler = None
        with self.standin.lock:
            usable = portal.installed and portal.install_finished and not portal._removed
            for binding in portal.bindings["placements"]:
                if binding["PLACEMENT"] == "CONTACT_CENTER":
                    handler = binding["HANDLER"]
                    break
        if handler:
            self._last_handler[portal.member_id] = handler
        if body.get("stale"):
            handler = handler or self._last_handler.get(portal.member_id) or self.default_handler
        elif not usable or not handler:
            raise _ApiError(409, "no_square", "The app's square is not in the Contact Center")
        fields = portal.placement_post(user_id=user, lang=lang)
        admin = bool((portal._user(user) or {}).get("ADMIN"))
        return self._frame(handler, fields, user=user, is_admin=admin, lang=lang, placement="CONTACT_CENTER")

    def _open_placement(self, portal, body, user, lang):
        """Open a bound placement by its binding's ID: the POST Bitrix24 sends to that binding's HANDLER."""
        with self.standin.lock:
            usable = portal.installed and portal.install_finished and not portal._removed
            binding = next(
                (dict(b) for b in portal.bindings["placements"] if str(b["ID"]) == str(body.get("placement_id"))), None
            )
        if not usable or binding is None:
            raise _ApiError(409, "no_placement", "The app has no such placement bound")
        options = body.get("options")
        if options in (None, ""):
            options = None  # the stand-in's own (CONTACT_CENTER: ID and URI; others: none)
        elif not (isinstance(options, dict) and len(json.dumps(options)) <= _OPTIONS_MAX):
            raise _ApiError(400, "bad_options", "PLACEMENT_OPTIONS must be a JSON object (2 KB at most)")
        fields = portal.placement_post(user_id=user, lang=lang, placement=binding["PLACEMENT"], options=options)
        admin = bool((portal._user(user) or {}).get("ADMIN"))
        return self._frame(
            binding["HANDLER"], fields, user=user, is_admin=admin, lang=lang, placement=binding["PLACEMENT"]
        )

    def _api_uninstall(self, portal, body):
        """Remove the app, then send ONAPPUNINSTALL (with the app's application_token) as Bitrix24 does."""
        with self.standin.lock:
            if not portal.installed or portal._removed:
                raise _ApiError(409, "not_installed", "The app is not installed")
            for binding in portal.bindings["placements"]:
                if binding["PLACEMENT"] == "CONTACT_CENTER":
                    self._last_handler[portal.member_id] = binding["HANDLER"]
        clean = "1" if body.get("clean") else "0"
        handlers = portal.event_handlers("ONAPPUNINSTALL")
        payload = portal.event_payload("ONAPPUNINSTALL", data={"CLEAN": clean})
        portal.uninstall()
        return {"deliveries": self._deliver(portal, "ONAPPUNINSTALL", handlers=handlers, payload=payload)}

    def _api_refresh_auth(self, portal, body):
        """The frame library's refreshAuth: the portal hands the frame a fresh token pair of its user."""
        user = self._user(portal, body)
        tokens = portal.issue_tokens(user)
        return {
            "AUTH_ID": tokens["access_token"],
            "REFRESH_ID": tokens["refresh_token"],
            "AUTH_EXPIRES": tokens["expires_in"],
        }

    def _api_reset_log(self, portal, body):
        with self.standin.lock:
            self.standin.event_deliveries[:] = [
                d for d in self.standin.event_deliveries if d.get("member_id") != portal.member_id
            ]
        return {"ok": True}

    @staticmethod
    def _deliver(portal, event, **options):
        return [dict(entry) for entry in portal.deliver_event(event, **options)]
