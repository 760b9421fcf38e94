"""A portal's REST contract, driven by b24pysdk: call, batch, list (classic and start=-1), errors.

Doc paths: settings/how-to-call-rest-api/index.md (call and answer), settings/how-to-call-rest-api/batch.md,
settings/performance/huge-data.md (start=-1), settings/performance/limits.md (limits, operating time),
_includes/system-errors.md (codes). The table in docs/standin.md is checked against the method registry.
"""

import re
from pathlib import Path

import pytest
from b24pysdk.errors import (
    BitrixAPIAccessDenied,
    BitrixAPIOperationTimeLimit,
    BitrixAPIQueryLimitExceeded,
)

from sandbox.standin import METHODS
from tests.contracts.conftest import token_for

ROOT = Path(__file__).resolve().parents[2]


def test_docs_table_lists_every_method_with_its_doc_path():
    """docs/standin.md: method -> doc path -> module, for every method the stand-in answers."""
    text = (ROOT / "docs" / "standin.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z.]+)` \| `([^`]+)` \|", text, re.M))
    assert rows == {name: entry.doc for name, entry in METHODS.items()}


def test_a_call_and_its_time_block(sdk, portal):
    """settings/how-to-call-rest-api/index.md: {result, time}; limits.md: time.operating, operating_reset_at."""
    answer = token_for(portal, "2").call_method("user.current")
    assert answer["result"]["ID"] == "2"
    assert {
        "start",
        "finish",
        "duration",
        "processing",
        "date_start",
        "date_finish",
        "operating",
        "operating_reset_at",
    } <= set(answer["time"])


def test_an_expired_token_is_refreshed_by_the_sdk_and_the_call_repeated(sdk, portal):
    """_includes/system-errors.md: expired_token; settings/oauth/auto-renewal.md: refresh and retry."""
    token = token_for(portal)
    portal.expire_access_tokens()
    before = token.auth_token
    assert token.call_method("user.admin")["result"] is True
    assert token.auth_token != before


@pytest.mark.xfail(
    strict=True,
    reason="stand-in: its portals differ by port on 127.0.0.1, and b24pysdk keeps only "
    "the hostname of a 302's Location (real portals have no port); see docs/standin.md",
)
def test_a_moved_portal_is_followed_by_the_sdk(sdk, portal):
    """A renamed portal answers 302 to its new address; b24pysdk switches domain and repeats."""
    token = token_for(portal)
    old = portal.domain
    portal.rename()
    assert token.call_method("server.time")["result"]
    assert token.domain == portal.domain != old


def test_batch_is_parsed_by_the_sdk(sdk, portal):
    """settings/how-to-call-rest-api/batch.md: result, result_error, result_total, result_next, result_time."""
    portal.crm_items = 70
    answer = token_for(portal).call_batch(
        {
            "me": ("user.current", {}),
            "items": ("crm.item.list", {"entityTypeId": 2}),
            "bad": ("no.such.method", {}),
        }
    )
    result = answer["result"]
    assert result["result"]["me"]["ID"] == "1"
    assert result["result_total"] == {"items": 70} and result["result_next"] == {"items": 50}
    assert result["result_error"]["bad"]["error"] == "ERROR_METHOD_NOT_FOUND"
    assert "operating" in result["result_time"]["me"] and "operating" not in answer["time"]


def test_batch_result_references(sdk, portal):
    """settings/how-to-call-rest-api/batch.md: "$result[request_id][response_field]" in a later command."""
    portal.crm_items = 3
    answer = token_for(portal, "2").call_batch(
        {
            "me": ("user.current", {}),
            "items": ("crm.item.list", {"entityTypeId": "$result[me][ID]"}),
        }
    )
    assert [i["id"] for i in answer["result"]["result"]["items"]["items"]] == [1, 2, 3]


def test_classic_list_through_the_sdk(sdk, portal):
    """settings/performance/huge-data.md, limits.md: 50 per page, next/total, pages fetched in a batch."""
    portal.crm_items = 173
    answer = token_for(portal).call_list("crm.item.list", {"entityTypeId": 2})
    assert [i["id"] for i in answer["result"]] == list(range(1, 174))


def test_fast_list_with_start_minus_one_through_the_sdk(sdk, portal):
    """settings/performance/huge-data.md: start=-1 (no count) and a filter on the last id, chained in batch."""
    portal.crm_items = 260
    before = len(portal.requests)
    items = list(token_for(portal).call_list_fast("crm.item.list", {"entityTypeId": 2})["result"])
    assert [i["id"] for i in items] == list(range(1, 261))
    assert all(
        r["params"].get("start") in (-1, "-1", None) for r in portal.requests[before:] if r["method"] == "crm.item.list"
    )


def test_placement_get_refused_to_an_ordinary_user(sdk, portal):
    """api-reference/widgets/placement-get.md: "Who can execute the method: administrator"."""
    with pytest.raises(BitrixAPIAccessDenied):
        token_for(portal, "2").call_method("placement.get")


def test_rate_limit_error_is_the_documented_one(sdk, portal):
    """settings/performance/limits.md: past the plan's burst, 503 QUERY_LIMIT_EXCEEDED."""
    token = token_for(portal)
    portal.set_plan("others")
    portal.rate_limit_burst, portal.rate_limit_drain = 3, 0.001
    for _ in range(3):
        token.call_method("server.time")
    with pytest.raises(BitrixAPIQueryLimitExceeded):
        token.call_method("server.time")


def test_operating_time_limit_is_the_documented_one(sdk, portal):
    """settings/performance/limits.md: a method past its operating budget answers 429 OPERATION_TIME_LIMIT."""
    token = token_for(portal)
    portal.limits.operating_cost["crm.item.list"] = 500.0
    token.call_method("crm.item.list", {"entityTypeId": 2})
    with pytest.raises(BitrixAPIOperationTimeLimit):
        token.call_method("crm.item.list", {"entityTypeId": 2})
    assert token.call_method("server.time")["result"]  # other methods go on
