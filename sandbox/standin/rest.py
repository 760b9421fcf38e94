"""A portal's REST: the method registry, scope checks, the ``time`` block and list pages.

Each REST method lives in a ``rest_<scope>.py`` module and registers itself here with ``@method(name,
doc=..., scopes=...)``; ``doc`` is the b24restdocs page it follows (``docs/standin.md`` lists them all).
Calls go ``POST <client_endpoint><method>.json`` with ``auth`` (``settings/how-to-call-rest-api/index.md``);
a success is ``{"result": ..., "time": {...}}``, a list adds ``next`` and ``total``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import ApiError
from .faults import shaped
from .http import error_response, iso, json_response

__all__ = [
    "METHODS",
    "Method",
    "method",
    "Page",
    "time_block",
    "php_array",
    "php_section",
    "dispatch",
    "serve_rest",
    "run_method",
    "LIST_PAGE_SIZE",
    "list_start",
]

LIST_PAGE_SIZE = 50  # settings/performance/huge-data.md: list methods page by 50


@dataclass(frozen=True)
class Method:
    name: str
    handler: object  # (portal, params, grant) -> result or Page
    doc: str  # the b24restdocs page this answer follows
    scopes: frozenset  # any one of them will do; empty: only ``basic``


METHODS: dict[str, Method] = {}


def method(name, *, doc, scopes=()):
    """Register a REST method answered by the decorated ``(portal, params, grant)`` function."""

    def register(handler):
        METHODS[name] = Method(name, handler, doc, frozenset(scopes))
        return handler

    return register


class Page:
    """A list method's answer: the result plus ``next``/``total`` at the top level."""

    __slots__ = ("result", "next", "total")

    def __init__(self, result, next=None, total=None):  # noqa: A002 - Bitrix24's own name
        self.result = result
        self.next = next
        self.total = total


def time_block(start, operating=None):
    """The ``time`` block of an answer (api-reference/data-types.md#time, settings/performance/limits.md).

    ``operating`` is ``(sum, reset_at)`` of the method's operating time; without it (the outer batch,
    the OAuth server) the block has no ``operating`` keys, which b24pysdk's schema allows.
    """
    finish = time.time()
    spent = finish - start
    block = {
        "start": start,
        "finish": finish,
        "duration": spent,
        "processing": spent,
        "date_start": iso(start),
        "date_finish": iso(finish),
    }
    if operating is not None:
        block["operating_reset_at"], block["operating"] = operating[1], operating[0]
    return block


def php_array(value):
    """PHP's json_encode writes an empty array as ``[]``, even where a filled one is an object."""
    return value if value else []


def php_section(section):
    """A batch answer section as PHP encodes it: ``[]`` when empty, a list when keyed 0..n-1."""
    if not section:
        return []
    if list(section) == [str(i) for i in range(len(section))]:
        return list(section.values())
    return section


def list_start(params):
    """A list method's ``start``: 0.. pages by 50 with ``total``; ``-1`` skips the count
    (settings/performance/huge-data.md: no ``total``, no ``next``; page with a filter on the last ID)."""
    try:
        start = int(params.get("start") or 0)
    except (TypeError, ValueError):
        start = 0
    return -1 if start == -1 else max(start, 0)


def dispatch(portal, name, params, grant):
    """Run one method for that grant: not found, then scope, then the method's own checks."""
    entry = METHODS.get(name)
    if entry is None:
        raise ApiError("ERROR_METHOD_NOT_FOUND")
    if entry.scopes and not entry.scopes & portal._scopes():
        raise ApiError("insufficient_scope")
    return entry.handler(portal, params, grant)


def run_method(portal, name, params, grant):
    """One method call with its operating-time accounting: ``(answer, time block)``.

    settings/performance/limits.md: a method whose sum already exceeds the limit answers
    OPERATION_TIME_LIMIT; the outer ``batch`` is not counted (its nested calls are, in rest_batch).
    """
    start = time.time()
    if name == "batch":
        return dispatch(portal, name, params, grant), None
    with portal._standin.lock:
        if name in METHODS and portal.limits.blocked(grant.client_id, name, start):
            raise ApiError("OPERATION_TIME_LIMIT")
    answer = dispatch(portal, name, params, grant)
    with portal._standin.lock:
        operating = portal.limits.spend(grant.client_id, name, time.time() - start)
    return answer, time_block(start, operating)


def serve_rest(portal, name, params, auth):
    """The answer of a portal's REST to one call (not a redirect, not a page)."""
    start = time.time()
    try:
        portal._take_rate_token()
        portal._scripted_failure(name)
        if portal._blocked_on_rest() == "PORTAL_DELETED":
            raise ApiError("PORTAL_DELETED")
        grant = portal._standin._grant(auth)
        if grant.portal is not portal:
            raise ApiError("invalid_token")
        portal._check_access(grant)
        answer, block = run_method(portal, name, params, grant)
    except ApiError as error:
        return error_response(error)
    if isinstance(answer, Page):
        body = {"result": answer.result}
        if answer.next is not None:
            body["next"] = answer.next
        if answer.total is not None:
            body["total"] = answer.total
    else:
        body = {"result": answer}
    body["time"] = block or time_block(start)
    return shaped(portal, name, json_response(200, body))
