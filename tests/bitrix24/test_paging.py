"""bitrix24/paging.py over the stand-in: every item once and in order, and how many requests it takes.

By id (settings/performance/huge-data.md with batch.md): batches of chained pages, start=-1, no count; the
first batch also asks for the top page, so one request carries 2,500 items. By offset: a first page that
counts, then 50 pages a batch. The stand-in's crm.item.list serves `crm_items` items with ids 1..n.
Through a plain Client over Credentials (tests/bitrix24/conftest.py): no database.
"""

from urllib.parse import unquote

import pytest

from bitrix24 import paging
from bitrix24.client import Client
from bitrix24.errors import RestError
from tests.helpers import QuietHandler, local_server

TYPE = {"entityTypeId": 2}


def listed(app, b24, count, **kwargs):
    """(ids listed, the requests the portal received) for `count` items."""
    credentials, _ = app
    b24.crm_items = count
    items = Client(credentials).list("crm.item.list", dict(TYPE), **kwargs)
    return [item["id"] for item in items], list(b24.requests)


@pytest.mark.parametrize(
    "count,requests_made",
    [
        (0, 1),
        (1, 1),
        (30, 1),
        (50, 1),
        (51, 1),
        (2500, 1),
        (2501, 2),
        (3000, 2),
        (5000, 2),
        (5001, 3),
        (10000, 4),
        (10001, 5),
    ],
)
def test_by_id_every_item_once_in_order(app, b24, count, requests_made):
    ids, sent = listed(app, b24, count)
    assert ids == list(range(1, count + 1))
    assert [r["method"] for r in sent] == ["batch"] * requests_made  # no page on its own, no count query
    assert all(r["status"] == 200 for r in sent)
    commands = [command for r in sent for command in r["params"]["cmd"].values()]
    assert all("start=-1" in command for command in commands)  # huge-data.md: nothing is counted


def test_by_id_chains_each_page_on_the_last_id_of_the_one_before(app, b24):
    _ids, [sent] = listed(app, b24, 120)
    cmd = {key: unquote(command) for key, command in sent["params"]["cmd"].items()}
    assert list(cmd) == ["top"] + [f"p{i}" for i in range(49)]
    assert cmd["top"] == "crm.item.list?entityTypeId=2&order[id]=DESC&start=-1"
    assert cmd["p0"] == "crm.item.list?entityTypeId=2&order[id]=ASC&filter[>id]=0&start=-1"
    assert cmd["p1"] == "crm.item.list?entityTypeId=2&order[id]=ASC&filter[>id]=$result[p0][items][49][id]&start=-1"


@pytest.mark.parametrize(
    "count,requests_made",
    [
        (0, 1),
        (1, 1),
        (50, 1),
        (51, 2),
        (2500, 2),
        (2550, 2),
        (2551, 3),
        (3000, 3),
        (10000, 5),
    ],
)
def test_by_start_every_item_once_in_order(app, b24, count, requests_made):
    ids, sent = listed(app, b24, count, paging="start")
    assert ids == list(range(1, count + 1))
    assert [r["method"] for r in sent] == ["crm.item.list"] + ["batch"] * (requests_made - 1)


def test_a_method_without_id_paging_pages_by_offset(app, b24):
    assert "crm.item.list" in paging.ID_PAGING and "some.entity.list" not in paging.ID_PAGING
    credentials, _ = app
    b24.crm_items = 120
    ids = [item["id"] for item in Client(credentials).list("crm.item.list", dict(TYPE), paging="start")]
    assert ids == list(range(1, 121))
    with pytest.raises(ValueError):
        Client(credentials).list("crm.item.list", dict(TYPE), paging="pages")


@pytest.mark.parametrize(
    "params", [{"order": {"title": "ASC"}}, {"order": {"id": "DESC"}}, {"filter": {"<=id": 9}}, {"filter": {">ID": 9}}]
)
def test_by_id_refuses_another_order_or_id_filter(app, b24, params):
    """Paging by id owns the order and the id condition; such a call says paging="start" outright."""
    credentials, _ = app
    with pytest.raises(ValueError):
        Client(credentials).list("crm.item.list", {**TYPE, **params})
    assert b24.requests == []


def test_by_id_keeps_the_callers_other_filters_and_order_by_id_ascending(app, b24):
    credentials, _ = app
    b24.crm_items = 60
    items = Client(credentials).list("crm.item.list", {**TYPE, "order": {"ID": "asc"}, "filter": {"stageId": "NEW"}})
    assert [item["id"] for item in items] == list(range(1, 61))
    assert all("filter[stageId]=NEW" in command for command in b24.requests[0]["params"]["cmd"].values())


def test_a_limit_inside_a_list_batch_is_retried_for_those_pages(app, b24):
    """OPERATION_TIME_LIMIT is per nested command: the chain goes on from the last id it has."""
    b24.fail_next("crm.item.list", "OPERATION_TIME_LIMIT", 429)
    ids, _sent = listed(app, b24, 3000)
    assert ids == list(range(1, 3001))


def test_a_page_refused_for_good_is_raised(app, b24):
    b24.fail_next("crm.item.list", "ACCESS_DENIED", 403)
    with pytest.raises(RestError) as info:
        listed(app, b24, 3000)
    assert info.value.code == "ACCESS_DENIED" and len(b24.requests) == 1


class _Absurd(QuietHandler):
    def do_POST(self):  # noqa: N802
        self.body()
        self.answer(200, {"result": [{"ID": "1"}], "total": 10**12, "next": 50})


def test_an_absurd_total_is_refused_before_anything_is_planned(app):
    """The offset form plans its pages from the portal's `total`: a portal answering 10**12 gets an error,
    not a memory spike (a host answering like a portal, at the HTTP boundary)."""
    credentials, _ = app
    with local_server(_Absurd) as server:
        moved = type(credentials)(**{**vars(credentials), "client_endpoint": f"{server.url}/rest/"})
        with pytest.raises(RestError) as info:
            Client(moved).list("some.entity.list", paging="start")
    assert info.value.code == "bad_answer"
