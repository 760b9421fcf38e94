"""How Client.list pages: chained by id inside batch requests, or by offset.

By id (settings/performance/huge-data.md with settings/how-to-call-rest-api/batch.md): `start=-1` skips
the count, and each command filters `>ID` on the last id of the command before it through a
`$result[...]` reference, so one batch request carries 50 pages, 2,500 items. The methods that page so
are named in ID_PAGING (or the caller passes an IdPaging); the others page by offset (`start=0, 50, ...`
after a first page that counts the total), as Bitrix24's list methods all allow.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from django.conf import settings

from .errors import RETRYABLE, LimitWaitExceeded, RestError, TransportError
from .wire import BATCH_LIMIT, JSON, PAGE_SIZE, Command, Params

# The most items an offset-paged list fetches (its plan is built from the portal's `total` up front).
MAX_ITEMS = 1_000_000


@dataclass(frozen=True)
class IdPaging:
    """How a list method pages by id: the id field (`ID`/`id`, also its filter key) and, when the
    page is an object, the key holding its list (crm.item.list answers {"items": [...]})."""

    id_field: str = "ID"
    wrapper: str | None = None

    @property
    def path(self) -> str:
        return f"[{self.wrapper}]" if self.wrapper else ""

    def items(self, result: JSON) -> list[dict[str, JSON]]:
        if self.wrapper and isinstance(result, dict):
            result = result.get(self.wrapper)
        return [item for item in result if isinstance(item, dict)] if isinstance(result, list) else []


# Methods whose filter and order by id work with start=-1 as with offsets (settings/performance/huge-data.md;
# crm.item.list is its example, the classic CRM lists filter and order by ID the same way).
ID_PAGING = {
    "crm.item.list": IdPaging("id", "items"),
    "crm.deal.list": IdPaging("ID"),
    "crm.lead.list": IdPaging("ID"),
    "crm.contact.list": IdPaging("ID"),
    "crm.company.list": IdPaging("ID"),
}


class Pages(Protocol):
    """What paging reads of a batch's outcome (bitrix24.client.BatchResult)."""

    @property
    def result(self) -> dict[str, JSON]: ...

    @property
    def errors(self) -> dict[str, RestError]: ...


class Lister(Protocol):
    """What paging needs of the client (bitrix24.client.Client, which imports this module)."""

    def call_raw(self, method: str, params: Params | None = None) -> dict[str, JSON]: ...

    def batch(self, commands: Mapping[str, Command], *, halt: bool = False) -> Pages: ...

    def batch_request(self, chunk: Mapping[str, Command], *, halt: bool, retry: bool = True) -> Pages: ...


def list_items(client: Lister, method: str, params: Params, paging: IdPaging | Literal["start"] | None) -> list[JSON]:
    """Every item of `method`: `paging` an IdPaging, "start", or None (the method's entry in ID_PAGING)."""
    if paging is None:
        paging = ID_PAGING.get(method, "start")
    if paging == "start":
        return by_start(client, method, params)
    if not isinstance(paging, IdPaging):
        raise ValueError(f"paging must be an IdPaging or 'start', not {paging!r}")
    return by_id(client, method, params, paging)


def by_start(client: Lister, method: str, params: Params) -> list[JSON]:
    """A first page that counts the total, then the other pages by offset, 50 per batch request."""
    first = client.call_raw(method, {**params, "start": 0})
    items = _page_items(first.get("result"))
    total = _as_int(first.get("total"))
    if total is None or "next" not in first:
        return items
    if not 0 <= total <= MAX_ITEMS:
        # The portal names the count; a list this long is a job for id paging (or an absurd answer).
        raise TransportError("bad_answer", f"list total {total} beyond {MAX_ITEMS} items", method=method)
    starts = list(range(PAGE_SIZE, total, PAGE_SIZE))
    commands = {f"p{start}": (method, {**params, "start": start}) for start in starts}
    result = client.batch(commands, halt=True)
    if result.errors:
        err = next(iter(result.errors.values()))
        raise err
    for start in starts:
        items.extend(_page_items(result.result.get(f"p{start}")))
    return items


def by_id(client: Lister, method: str, params: Params, paging: IdPaging) -> list[JSON]:
    """Pages chained by `>id` inside each batch; the first batch also asks for the top page.

    The top page (order by id descending) holds the last items, so the chain can stop where it
    meets them: 10,000 items are 4 requests, not 5 (a chain alone would need one more request to
    see that nothing follows a full page). Commands after the first short page are ignored: their
    `$result[...]` points past the end of a page.
    """
    field = paging.id_field
    order = {str(key).lower(): str(value).upper() for key, value in (params.pop("order", None) or {}).items()}
    if order and order != {field.lower(): "ASC"}:
        raise ValueError(f"{method}: paging by {field} needs order by {field} ascending; use paging='start'")
    base_filter = dict(params.pop("filter", None) or {})
    if any(key.lstrip("<>=!@%").lower() == field.lower() for key in base_filter):
        raise ValueError(f"{method}: paging by {field} owns the {field} filter; use paging='start'")
    items: list[JSON] = []
    top: list[dict[str, JSON]] | None = None
    after, below = 0, None  # still wanted: after < id < below
    stalled = 0
    while True:
        commands: dict[str, Command] = {}
        if top is None:
            commands["top"] = (method, {**params, "order": {field: "DESC"}, "filter": base_filter, "start": -1})
        pages = BATCH_LIMIT - len(commands)
        for i in range(pages):
            bound = after if i == 0 else f"$result[p{i - 1}]{paging.path}[{PAGE_SIZE - 1}][{field}]"
            page_filter = {**base_filter, f">{field}": bound}
            if below is not None:
                page_filter[f"<{field}"] = below
            commands[f"p{i}"] = (method, {**params, "order": {field: "ASC"}, "filter": page_filter, "start": -1})
        # Not retried inside: a refused page is asked again from the last id, with its chain behind it.
        result = client.batch_request(commands, halt=True, retry=False)
        if top is None:
            if "top" not in result.result:
                stalled = _stalled(result, "top", stalled)
                continue
            top = paging.items(result.result["top"])
            if not top:
                return []
            below = _as_int(top[-1].get(field))
            if below is None:
                raise TransportError("bad_answer", f"{method}: item without a numeric {field}", method=method)
        assert below is not None  # set from the top page, in this request or an earlier one
        for i in range(pages):
            key = f"p{i}"
            if key not in result.result:
                stalled = _stalled(result, key, stalled if i == 0 else 0)
                break  # the next request goes on from `after`
            stalled = 0
            kept = [item for item in paging.items(result.result[key]) if (_as_int(item.get(field)) or 0) < below]
            items.extend(kept)
            if kept:
                last = _as_int(kept[-1].get(field))
                if last is None or last <= after:
                    raise TransportError("bad_answer", f"{method}: ids do not grow along {field}", method=method)
                after = last
            if len(kept) < PAGE_SIZE or after + 1 >= below:
                # A short page, or the chain met the top page (ids are whole numbers): all is here.
                items.extend(reversed(top))
                return items


def _stalled(result: Pages, key: str, stalled: int) -> int:
    """A chain made no progress: a limit is retried (from the same id) a few times, anything else raised."""
    error = result.errors.get(key) or TransportError("bad_answer", "batch answered without the page")
    if isinstance(error, LimitWaitExceeded) or error.code not in RETRYABLE or stalled >= settings.B24_REST_MAX_RETRIES:
        raise error
    return stalled + 1


def _page_items(result: JSON) -> list[JSON]:
    """A list method's page: a list, or an object holding one list (crm.item.list: {"items": [...]})."""
    if isinstance(result, list):
        return list(result)
    if isinstance(result, dict):
        lists = [v for v in result.values() if isinstance(v, list)]
        if len(lists) == 1:
            return list(lists[0])
        return list(result.values())
    return []


def _as_int(value: JSON) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
