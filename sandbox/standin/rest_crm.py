"""REST methods of the ``crm`` scope: ``crm.item.list`` (a list method, paged by 50) and ``crm.item.get``."""

from __future__ import annotations

from .errors import ApiError
from .rest import LIST_PAGE_SIZE, Page, list_start, method


def _int(value, default=0):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _matching_ids(portal, params):
    """The ids (1..crm_items) the filter keeps, in the order asked.

    api-reference/crm/universal/crm-item-list.md: ``filter`` keys take the prefixes ``>``, ``>=``,
    ``<``, ``<=`` (the id conditions are the ones answered here; settings/performance/huge-data.md pages
    with ``>id``); ``order`` is ``{field: ASC|DESC}`` (by ``id`` here, ascending when not given).
    """
    filters = params.get("filter") if isinstance(params.get("filter"), dict) else {}
    low, high = 1, portal.crm_items
    for key, value in filters.items():
        op, field = key[: len(key) - len(key.lstrip("<>="))], key.lstrip("<>=")
        if field.lower() != "id":
            continue
        bound = _int(value, None)
        if bound is None:
            continue
        if op == ">":
            low = max(low, bound + 1)
        elif op == ">=":
            low = max(low, bound)
        elif op == "<":
            high = min(high, bound - 1)
        elif op == "<=":
            high = min(high, bound)
    ids = range(low, high + 1) if low <= high else range(0)
    order = params.get("order") if isinstance(params.get("order"), dict) else {}
    direction = next((str(v).upper() for k, v in order.items() if str(k).lower() == "id"), "ASC")
    return ids[::-1] if direction == "DESC" else ids


@method("crm.item.list", doc="api-reference/crm/universal/crm-item-list.md", scopes=("crm",))
def crm_item_list(portal, params, grant):
    entity_type_id = _int(params.get("entityTypeId"))
    if entity_type_id <= 0:
        raise ApiError("NOT_FOUND", "SPA not found")
    ids = _matching_ids(portal, params)
    start = list_start(params)
    if start == -1:
        # huge-data.md: no total is counted, so none is sent (no next)
        return Page({"items": [{"id": n, "title": f"Item {n}"} for n in ids[:LIST_PAGE_SIZE]]})
    page = ids[start : start + LIST_PAGE_SIZE]
    served = start + len(page)
    return Page(
        {"items": [{"id": n, "title": f"Item {n}"} for n in page]},
        next=served if served < len(ids) else None,
        total=len(ids),
    )


@method("crm.item.get", doc="api-reference/crm/universal/crm-item-get.md", scopes=("crm",))
def crm_item_get(portal, params, grant):
    """``{"item": {...}}``; an unknown type or id is 400 NOT_FOUND (the page's error table)."""
    if _int(params.get("entityTypeId")) <= 0:
        raise ApiError("NOT_FOUND", "SPA not found")
    item_id = _int(params.get("id"))
    if not 1 <= item_id <= portal.crm_items:
        raise ApiError("NOT_FOUND", "Item not found")
    return {"item": {"id": item_id, "title": f"Item {item_id}"}}
