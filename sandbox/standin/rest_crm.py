"""REST methods of the ``crm`` scope: ``crm.item.list`` (a list method, paged by 50)."""
from __future__ import annotations

from .errors import ApiError
from .rest import LIST_PAGE_SIZE, Page, list_start, method


def _int(value, default=0):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


@method("crm.item.list", doc="api-reference/crm/universal/crm-item-list.md", scopes=("crm",))
def crm_item_list(portal, params, grant):
    entity_type_id = _int(params.get("entityTypeId"))
    if entity_type_id <= 0:
        raise ApiError("NOT_FOUND", "SPA not found")
    total = portal.crm_items
    # Items are ids 1..crm_items, in id order. settings/performance/huge-data.md pages with
    # filter[>id]=<last id> and start=-1.
    filters = params.get("filter") if isinstance(params.get("filter"), dict) else {}
    after = max(_int(filters.get(">id", filters.get(">ID")), 0), 0)
    matching = max(total - after, 0)
    start = list_start(params)
    if start == -1:
        stop = min(after + LIST_PAGE_SIZE, total)
        items = [{"id": n, "title": f"Item {n}"} for n in range(after + 1, stop + 1)]
        return Page({"items": items})  # huge-data.md: no total is counted, so none is sent (no next)
    first = after + start
    stop = min(first + LIST_PAGE_SIZE, total)
    items = [{"id": n, "title": f"Item {n}"} for n in range(first + 1, stop + 1)]
    served = start + len(items)
    return Page({"items": items}, next=served if served < matching else None, total=matching)
