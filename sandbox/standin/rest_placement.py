"""REST methods of the ``placement`` scope: ``placement.bind``, ``placement.unbind``, ``placement.get``."""

from __future__ import annotations

from .errors import ApiError
from .handlers import check_handler
from .rest import method, php_array

# api-reference/widgets/contact-center.md: this placement does not keep placement.bind's OPTIONS
# ("the values passed are not retained, and placement.get returns an empty array").
_NO_OPTIONS = {"CONTACT_CENTER"}


def _mine(binding, grant):
    """Bindings belong to the app that made them (placement.get: "registered by the application")."""
    return binding.get("app", grant.portal._standin.client_id) == grant.client_id


def placement_scope(placement):
    """The scope a placement needs besides ``placement`` (the placement's own page lists it)."""
    if placement == "CONTACT_CENTER":
        return "contact_center"  # api-reference/widgets/contact-center.md
    if placement.startswith("CRM_"):
        return "crm"
    return None


@method("placement.bind", doc="api-reference/widgets/placement-bind.md", scopes=("placement",))
def placement_bind(portal, params, grant):
    portal._require_admin(grant)
    p = {str(k).upper(): v for k, v in params.items()}
    placement = str(p.get("PLACEMENT") or "").strip().upper()
    handler = str(p.get("HANDLER") or "").strip()
    for name, value in (("PLACEMENT", placement), ("HANDLER", handler)):
        if not value:
            raise ApiError("ERROR_ARGUMENT", f"Argument '{name}' is null or empty", argument=name)
    check_handler(portal._standin, handler)
    needed = placement_scope(placement)
    if needed and needed not in portal._scopes():
        raise ApiError("ERROR_PLACEMENT_NOT_FOUND", "Placement not found")
    with portal._standin.lock:
        for binding in portal.bindings["placements"]:
            if binding["PLACEMENT"] == placement and binding["HANDLER"] == handler and _mine(binding, grant):
                code, description = portal.placement_duplicate_error
                raise ApiError(code, description)
        portal.bindings["placements"].append(
            {
                "ID": portal._new_id(),
                "PLACEMENT": placement,
                "HANDLER": handler,
                "TITLE": p.get("TITLE", ""),
                "DESCRIPTION": p.get("DESCRIPTION", ""),
                "GROUP_NAME": p.get("GROUP_NAME", ""),
                "LANG_ALL": p.get("LANG_ALL") or {},
                "OPTIONS": {} if placement in _NO_OPTIONS else (p.get("OPTIONS") or {}),
                "USER_ID": 0,
                "app": grant.client_id,
            }
        )
    return True


@method("placement.unbind", doc="api-reference/widgets/placement-unbind.md", scopes=("placement",))
def placement_unbind(portal, params, grant):
    portal._require_admin(grant)
    p = {str(k).upper(): v for k, v in params.items()}
    placement = str(p.get("PLACEMENT") or "").strip().upper()
    handler = str(p.get("HANDLER") or "").strip()
    if not placement:
        raise ApiError("ERROR_ARGUMENT", "Argument 'PLACEMENT' is null or empty", argument="PLACEMENT")
    with portal._standin.lock:
        keep, removed = [], 0
        for binding in portal.bindings["placements"]:
            if (
                binding["PLACEMENT"] == placement
                and (not handler or binding["HANDLER"] == handler)
                and _mine(binding, grant)
            ):
                removed += 1
            else:
                keep.append(binding)
        portal.bindings["placements"][:] = keep
    # placement-unbind.md: count grows by one per record found and one per record removed.
    return {"count": 2 * removed}


@method("placement.get", doc="api-reference/widgets/placement-get.md", scopes=("placement",))
def placement_get(portal, params, grant):
    portal._require_admin(grant)  # placement-get.md: "Who can execute the method: administrator"
    with portal._standin.lock:
        return [
            {
                "id": b["ID"],
                "placement": b["PLACEMENT"],
                "userId": b["USER_ID"],
                "handler": b["HANDLER"],
                "options": php_array(b["OPTIONS"]),
                "title": b["TITLE"],
                "description": b["DESCRIPTION"],
                "langAll": php_array(b["LANG_ALL"]),
            }
            for b in portal.bindings["placements"]
            if _mine(b, grant)
        ]
