"""PortalClient.list("crm.item.list") of 10,000 CRM items against the stand-in, against page by page.

Run: .venv/bin/python bench/rest_list.py [--items 10000] [--no-paced]

In-process, over real HTTP to the stand-in (sandbox/standin/), on the bench database and cache
(bench.settings: PostgreSQL b24bench, Redis db 3 under a per-run key prefix, which is where the
per-portal rate limiter keeps its state). Three stand-in portals, each installed through the app
(POST /install/ and ONAPPINSTALL, Django's test Client) and holding --items CRM items, so each
measurement starts with its own rate-limiter bucket:
  1. PortalClient.list: pages chained by id, 50 per `batch` request (portals/paging.py);
  2. page by page with plain PortalClient.call_raw loops (start = the previous answer's `next`), the
     rate limiter switched off (B24_RATE_LIMIT_PER_SECOND=0): the transport cost of 200 requests;
  3. the same loop with the limiter as configured (the standard plan's bucket, or B24_RATE_LIMIT_*):
     what the app would actually take on a real portal (skip with --no-paced; it takes ~80 s).
For each it prints the HTTP requests the portal received (by method), the crm.item.list calls it
served (batch sub-commands included) and the wall time. Asserts only that every item came back once.
"""

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as common

ENTITY_TYPE_ID = 2  # deals
FORM = "application/x-www-form-urlencoded"


def install(client, b24):
    """Install as Bitrix24 does: the install POST into the frame, then ONAPPINSTALL."""
    from portals.models import Portal
    from sandbox.standin import frame_query_and_body

    query, body = frame_query_and_body(b24.install_post())
    response = client.post(f"/install/?{urlencode(query)}", urlencode(body), content_type=FORM)
    assert response.status_code == 200, response.content[:500]
    b24.finish_install()  # settings/app-installation/installation-finish.md: no event before it
    response = client.post("/events/", urlencode(b24.event_payload("ONAPPINSTALL")), content_type=FORM)
    assert response.status_code == 200, response.content[:500]
    return Portal.objects.get(member_id=b24.member_id)


def page_by_page(client, params: dict) -> list:
    """Every item, one call_raw per page of 50, following `next`."""
    items, start = [], 0
    while True:
        answer = client.call_raw("crm.item.list", {**params, "start": start})
        items.extend(answer["result"]["items"])
        if "next" not in answer:
            return items
        start = answer["next"]


def measure(label: str, b24, fetch) -> list:
    before_requests, before_calls = len(b24.requests), b24.calls("crm.item.list")
    with common.Timer() as timer:
        items = fetch()
    requests = b24.requests[before_requests:]
    ids = [item["id"] for item in items]
    assert len(ids) == b24.crm_items and set(ids) == set(range(1, b24.crm_items + 1)), (label, len(ids))
    by_method = Counter(r["method"] for r in requests)
    assert all(r["status"] == 200 for r in requests), Counter(r["status"] for r in requests)
    return [
        label,
        len(requests),
        ", ".join(f"{m} x{n}" for m, n in by_method.items()),
        b24.calls("crm.item.list") - before_calls,
        len(items),
        f"{timer.seconds:.2f}",
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--no-paced", action="store_true", help="skip the page-by-page run under the rate limiter")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the bench database afterwards")
    args = parser.parse_args()

    os.environ.setdefault("LOG_LEVEL", "WARNING")  # the installs' event lines would bury the figures
    with common.standin() as standin:
        common.setup_django(oauth_url=standin.oauth_url)
        from django.test import Client, override_settings

        from portals.tokens import PortalClient

        with common.bench_database(keep=args.keep_db), common.bench_cache():
            common.print_header(f"rest_list: crm.item.list of {args.items:,} items against the stand-in")
            from bitrix24 import limits

            burst, rate = limits.bucket(limits.STANDARD)
            print(
                f"rate limiter (per portal, shared through the cache): burst {burst}, "
                f"{rate:g} requests/s; page size 50, batch size 50"
            )
            client = Client()
            portals = []
            for _ in range(3):
                b24 = standin.add_portal()
                b24.crm_items = args.items
                portals.append((install(client, b24), b24))
            params = {"entityTypeId": ENTITY_TYPE_ID}
            rows = []
            (stored, b24) = portals[0]
            rows.append(
                measure(
                    "PortalClient.list (pages chained by id in batches)",
                    b24,
                    lambda: PortalClient(stored).list("crm.item.list", params),
                )
            )
            sys.stdout.flush()
            (stored, b24) = portals[1]
            with override_settings(B24_RATE_LIMIT_PER_SECOND=0):
                rows.append(
                    measure(
                        "page by page, call_raw loop, limiter off",
                        b24,
                        lambda: page_by_page(PortalClient(stored), params),
                    )
                )
            sys.stdout.flush()
            if not args.no_paced:
                (stored, b24) = portals[2]
                rows.append(
                    measure(
                        "page by page, call_raw loop, limiter on",
                        b24,
                        lambda: page_by_page(PortalClient(stored), params),
                    )
                )
            print()
            print(
                common.table(rows, ["method", "HTTP requests", "by method", "crm.item.list calls", "items", "wall s"])
            )
            pages = -(-args.items // 50)
            print(
                f"\n{args.items:,} items = {pages} pages of 50: chained in batches, ceil({args.items:,} / 2,500) = "
                f"{-(-args.items // 2500)} requests; page by page, {pages}."
            )
            if not args.no_paced:
                print(
                    f"limiter on: after the {burst}-request burst (one already spent by the install) the rest "
                    f"goes at {rate:g}/s: about ({pages} - {burst - 1}) / {rate:g} = "
                    f"{(pages - burst + 1) / rate:.0f} s, which is what Bitrix24 itself would enforce."
                )


if __name__ == "__main__":
    main()
