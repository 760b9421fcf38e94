"""REST methods about the app and the user: ``user.current``, ``user.admin``, ``profile``, ``app.info``,
``server.time``, ``feature.get``."""

from __future__ import annotations

import time

from .errors import ApiError
from .http import iso
from .rest import method


@method("user.current", doc="api-reference/user/user-current.md", scopes=("user", "user_brief", "user_basic"))
def user_current(portal, params, grant):
    user = dict(portal._user(grant.user_id) or {})
    user.pop("ADMIN", None)
    result = {"ID": str(grant.user_id), "ACTIVE": True}
    result.update(user)
    for key, default in (("IS_ONLINE", "Y"), ("PERSONAL_GENDER", ""), ("WORK_POSITION", ""), ("UF_DEPARTMENT", [1])):
        result.setdefault(key, default)
    return result


@method("user.admin", doc="api-reference/common/users/user-admin.md")
def user_admin(portal, params, grant):
    return bool((portal._user(grant.user_id) or {}).get("ADMIN"))


@method("profile", doc="api-reference/common/users/profile.md")
def profile(portal, params, grant):
    user = portal._user(grant.user_id) or {}
    return {
        "ID": str(grant.user_id),
        "ADMIN": bool(user.get("ADMIN")),
        "NAME": user.get("NAME", ""),
        "LAST_NAME": user.get("LAST_NAME", ""),
        "PERSONAL_GENDER": user.get("PERSONAL_GENDER", ""),
        "TIME_ZONE": user.get("TIME_ZONE", ""),
    }


def portal_app_info(portal, client_id=None):
    """The portal's own ``app.info`` answer for an app (api-reference/common/system/app-info.md).

    ``CODE`` is the app's code (``App.code``, by default its client_id); a second app (``add_app``)
    counts as installed and finished.
    """
    standin = portal._standin
    app = standin.apps[client_id or standin.client_id]
    primary = app.client_id == standin.client_id
    kind = portal.license.split("_", 1)[-1]
    return {
        "ID": portal.app_id if primary else portal.app_id + 1,
        "CODE": app.code,
        "VERSION": portal.version,
        "STATUS": portal.app_status,
        "INSTALLED": bool(portal.install_finished) if primary else True,
        "PAYMENT_EXPIRED": "Y" if portal.payment_expired else "N",
        "DAYS": portal.days,
        "LANGUAGE_ID": portal.language_id,
        "LICENSE": portal.license,
        "LICENSE_TYPE": kind,
        "LICENSE_FAMILY": kind.rstrip("0123456789"),
    }


@method("app.info", doc="api-reference/common/system/app-info.md")
def app_info(portal, params, grant):
    return portal_app_info(portal, grant.client_id)


@method("server.time", doc="api-reference/common/system/server-time.md")
def server_time(portal, params, grant):
    return iso(time.time())


# api-reference/common/system/feature-get.md: the codes the page lists. Not documented: the answer for another
# code (the stand-in says "N").
FEATURES = ("rest_offline_extended", "rest_auth_connector")


@method("feature.get", doc="api-reference/common/system/feature-get.md")
def feature_get(portal, params, grant):
    code = params.get("CODE")
    if not isinstance(code, str) or not code:
        raise ApiError("CODE_EMPTY", "CODE can't be empty", status=400)
    return {"value": "Y" if code in FEATURES and portal.feature_available(code) else "N"}
