"""The OAuth server (``oauth.bitrix.info``): the token endpoint and its own REST (``app.info``).

Token refresh follows ``settings/oauth/index.md`` (``grant_type=refresh_token``, the answer's fields) and
``settings/oauth/auto-renewal.md`` (refresh tokens rotate: the old one is spent); errors follow
``settings/oauth/error-codes.md``.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime

from .errors import ApiError, oauth_error
from .faults import shaped
from .http import Response, error_response, json_response, method_from_path
from .rest import time_block

__all__ = ["App", "Grant", "OAuthSite", "refresh_tokens", "server_app_info"]


class App:
    """An application registered with the OAuth server: its ``client_id``/``client_secret`` and its code.

    ``code`` is what a portal's ``app.info`` answers as ``CODE``: the application code of the docs
    (api-reference/common/system/app-info.md, e.g. ``telefum24.kp10``), which nothing says equals the
    ``client_id``. It defaults to the ``client_id``; set another to see who confuses the two.
    """

    __slots__ = ("client_id", "client_secret", "code")

    def __init__(self, client_id, client_secret, code=None):
        self.client_id = client_id
        self.client_secret = client_secret
        self.code = code or client_id

    def __repr__(self):
        return f"<App {self.client_id}>"


class Grant:
    """Who a token belongs to: an app and a portal's user (``expires`` is None for refresh tokens)."""

    __slots__ = ("portal", "user_id", "expires", "client_id")

    def __init__(self, portal, user_id, expires, client_id=None):
        self.portal = portal
        self.user_id = user_id
        self.expires = expires
        self.client_id = client_id or portal._standin.client_id


def refresh_tokens(standin, params):
    """``/oauth/token/?grant_type=refresh_token&...`` (settings/oauth/index.md, "Extending the OAuth token")."""
    app = standin.apps.get(str(params.get("client_id") or ""))
    if app is None:
        raise oauth_error("invalid_client")
    secret = str(params.get("client_secret", "")).encode()
    if not secrets.compare_digest(secret, app.client_secret.encode()):
        raise oauth_error("invalid_client")
    if params.get("grant_type") != "refresh_token":
        raise oauth_error("invalid_request", "Unsupported grant_type")
    token = params.get("refresh_token")
    if not token:
        raise oauth_error("invalid_request", "refresh_token is required")
    with standin.lock:
        grant = standin._refresh.get(token)
        # Another app's refresh token is no grant for this one (settings/oauth/error-codes.md).
        if grant is None or grant.client_id != app.client_id:
            raise oauth_error("invalid_grant")
        portal = grant.portal
        if portal._removed:
            raise oauth_error("NOT_INSTALLED")
        if portal._blocked:
            raise oauth_error(portal._blocked)
        del standin._refresh[token]  # refresh tokens rotate: this one is spent
        pair = standin._mint(portal, grant.user_id, client_id=app.client_id)
        user_id = int(grant.user_id) if grant.user_id.isdigit() else grant.user_id
        return {
            "access_token": pair["access_token"],
            "expires": pair["expires"],
            "expires_in": pair["expires_in"],
            "scope": portal.scope,
            "domain": standin.address,
            "server_endpoint": standin.server_endpoint,
            "status": portal.app_status,
            "client_endpoint": portal.client_endpoint,
            "member_id": portal.member_id,
            "user_id": user_id,
            "refresh_token": pair["refresh_token"],
        }


def server_app_info(standin, grant):
    """The OAuth server's own ``app.info`` for a token: who it belongs to, and the app's install.

    Not in b24restdocs (settings/oauth/simple-way.md only says to call it at
    ``oauth.bitrix.info/rest/app.info`` for the trusted status); the shape is the official Python SDK's
    (b24pysdk ``schemas/api.py``: ``B24AppInfoResultData``, ``B24AppInfoInstallData``), whose parser
    reads every field below. ``member_type`` is not documented anywhere; its SDK tests show
    ``company`` and ``user``.
    """
    portal = grant.portal
    primary = grant.client_id == standin.client_id
    user_id = int(grant.user_id) if str(grant.user_id).isdigit() else grant.user_id
    return {
        "client_id": grant.client_id,
        "scope": portal.scope,
        "expires": datetime.fromtimestamp(grant.expires, UTC).isoformat(timespec="seconds"),
        "user_id": user_id,
        "install": {
            # A second app is taken as installed (and finished) everywhere: it is there to own tokens.
            "installed": bool(portal.install_finished) if primary else True,
            "version": portal.version,
            "status": portal.app_status,
            "scope": portal.scope,
            "domain": portal.domain,
            "uri": f"{standin.scheme}://{portal.domain}",
            "client_endpoint": portal.client_endpoint,
            "member_id": portal.member_id,
            "member_type": "company",
        },
    }


class OAuthSite:
    """``oauth.bitrix.info``: the token endpoint and the server REST (``app.info``)."""

    def __init__(self, standin):
        self.standin = standin

    def handle(self, request):
        path = request.path
        if request.http_method == "OPTIONS":
            # No CORS here: the OAuth server is for the app's backend, never for a page (not documented).
            return Response(204, b"", [("Allow", "GET, POST")])
        if path.rstrip("/") == "/oauth/token":
            return self._token(request)
        if path.startswith("/rest/"):
            return self._rest(request)
        page = self.standin._web_response("handle_server", request)
        if page is not None:
            return page
        return Response(404, b"Not found", [("Content-Type", "text/plain")])

    def _token(self, request):
        standin = self.standin
        params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in request.flat.items()}
        with standin.lock:
            standin.oauth_requests.append(params)
        if standin.oauth_delay:
            time.sleep(standin.oauth_delay)
        gate = standin.oauth_gate
        if gate is not None:
            gate.wait(8)
        if standin.oauth_down:
            body = b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
            return Response(503, body, [("Content-Type", "text/html")])
        try:
            response = json_response(200, refresh_tokens(standin, params))
        except ApiError as error:
            return error_response(error)
        if standin.oauth_late:
            # The rotation is done (the old refresh token is spent); only the answer is late.
            standin._stopping_wait(standin.oauth_late)
        return shaped(standin, "oauth.token", response)

    def _rest(self, request):
        standin = self.standin
        if standin.oauth_down:  # the whole OAuth server host is down, its REST with it
            body = b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
            return Response(503, body, [("Content-Type", "text/html")])
        method = method_from_path(request.path)
        params = dict(request.params)
        auth = params.pop("auth", None)
        start = time.time()
        try:
            grant = standin._grant(auth)
            grant.portal._check_access(grant)
            if method != "app.info":
                raise ApiError("ERROR_METHOD_NOT_FOUND")
            grant.portal._scripted_failure(method)  # fail_next covers the server's app.info too
            response = shaped(
                standin,
                "app.info",
                json_response(200, {"result": server_app_info(standin, grant), "time": time_block(start)}),
            )
        except ApiError as error:
            response = error_response(error)
        with standin.lock:
            standin.server_requests.append(
                {
                    "address": standin.address,
                    "method": method,
                    "params": params,
                    "auth": auth,
                    "status": response.status,
                }
            )
        return response
