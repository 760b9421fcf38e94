"""REST methods of the ``crm`` scope: ``crm.item.list`` (a list method, paged by 50)."""
from __future__ import annotations

from .errors import ApiError
from .rest import LIST_PAGE_SIZE, Page, method


@method("crm.item.list", doc="api-reference/crm/universal/crm-item-list.md", scopes=("crm",))
def crm_item_list(portal, params, grant):
    try:
        entity_type_id = int(params.get("entityTypeId") or 0)
    except (TypeError, ValueError):
        entity_type_id = 0
    if entity_type_id <= 0:
        raise ApiError("NOT_FOUND", "SPA not found")
    try:
        start = max(int(params.get("start") or 0), 0)
    except (TypeError, ValueError):
        start = 0
    total = portal.crm_items
    stop = min(start + LIST_PAGE_SIZE, total)
    items = [{"id": n, "title": f"Item {n}"} for n in range(start + 1, stop + 1)]
    return Page({"items": items}, next=stop if stop < total else None, total=total)
