"""Admin changelist over 10,000 portals, as a logged-in superuser: queries and time per page.

Run: .venv/bin/python bench/admin_changelist.py [--portals 10000] [--repeat 20]

In-process (Django's test Client), on the bench database (DATABASE_URL, PostgreSQL by default).
For page 1, a middle page, the last page, two searches and a status filter it prints the SQL queries
per page (CaptureQueriesContext, each with its time), the time per page (median and p90 over
--repeat requests, measured without query capture), and how many stored secrets were decrypted to
render it. Asserts only that each page answered 200 with the rows expected.
"""

import argparse
import random
import re
import secrets
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as common

STATUS_MIX = (("active", 80), ("new", 8), ("blocked", 7), ("uninstalled", 5))
SCOPE = "placement,contact_center,imopenlines,user_brief,crm"


def make_portals(count: int) -> list:
    """`count` portals with realistic fields (tokens encrypted as stored), bulk-created."""
    from django.utils import timezone

    from portals.models import Portal

    rng = random.Random(24)
    statuses = [s for s, weight in STATUS_MIX for _ in range(weight)]
    now = timezone.now()
    rows = []
    for n in range(count):
        status = rng.choice(statuses)
        serving = status in ("new", "active")
        installed = now - timedelta(minutes=rng.randrange(1, 2 * 365 * 24 * 60))
        domain = f"portal{n:05d}.bitrix24.example"
        rows.append(
            Portal(
                member_id=secrets.token_hex(16),
                domain=domain,
                client_endpoint=f"https://{domain}/rest/",
                server_endpoint="https://oauth.bitrix.info/rest/",
                status=status,
                app_status=rng.choice("FDTPS"),
                payment_expired=False,
                license="en_project",
                language="en",
                scope=SCOPE,
                app_version="1",
                installed_by="1",
                access_token=secrets.token_hex(32) if serving else "",
                refresh_token=secrets.token_hex(32) if serving else "",
                application_token=secrets.token_hex(16) if status != "uninstalled" else "",
                access_expires_at=now + timedelta(minutes=rng.randrange(-600, 60)) if serving else None,
                refresh_renewed_at=installed + timedelta(days=rng.randrange(0, 170)),
                created_at=installed,
                installed_at=installed,
                uninstalled_at=now if status == "uninstalled" else None,
                last_seen_at=now - timedelta(minutes=rng.randrange(0, 60 * 24 * 30)),
            )
        )
    Portal.objects.bulk_create(rows, batch_size=1000)
    return rows


class QueryTimer:
    """Times each query with perf_counter (connection.queries keeps only milliseconds)."""

    def __init__(self, connection):
        self.connection, self.times = connection, []

    def __call__(self, execute, sql, params, many, context):
        started = common.time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.times.append(common.time.perf_counter() - started)

    def __enter__(self):
        self._wrapper = self.connection.execute_wrapper(self)
        self._wrapper.__enter__()
        return self

    def __exit__(self, *exc):
        self._wrapper.__exit__(*exc)


class DecryptCounter:
    """Counts vault.fields.decrypt calls (each stored secret read from the database is one)."""

    def __enter__(self):
        from vault import fields as crypto

        self.crypto, self.original, self.calls = crypto, crypto.decrypt, 0

        def counting(value):
            self.calls += 1
            return self.original(value)

        crypto.decrypt = counting
        return self

    def __exit__(self, *exc):
        self.crypto.decrypt = self.original


def decrypt_cost(n: int = 2000) -> float:
    """Seconds per vault.fields.decrypt of a 64-character token."""
    from vault import fields as crypto

    value = crypto.encrypt(secrets.token_hex(32))
    with common.Timer() as timer:
        for _ in range(n):
            crypto.decrypt(value)
    return timer.seconds / n


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--portals", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20, help="timed requests per page (after one warm-up)")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the bench database afterwards")
    args = parser.parse_args()

    common.setup_django()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from portals.models import Portal

    with common.bench_database(keep=args.keep_db), common.bench_cache():
        common.print_header(f"admin_changelist: /admin/portals/portal/ with {args.portals:,} portals")
        with common.Timer() as made:
            rows = make_portals(args.portals)
        print(f"setup: {args.portals:,} portals bulk-created in {made.seconds:.1f} s (3 encrypted secrets each)")

        user = get_user_model().objects.create_superuser("bench-admin", "admin@example.test", secrets.token_hex(8))
        client = Client()
        client.force_login(user)

        per_page = 50
        pages_total = -(-args.portals // per_page)
        middle = max(pages_total // 2, 1)
        full_member_id = rows[len(rows) // 3].member_id
        domain_part = f"portal{(args.portals // 2) // 10:04d}"  # matches 10 portals
        blocked = Portal.objects.filter(status="blocked").count()
        pages = [
            ("page 1", "", min(per_page, args.portals)),
            (f"middle page (p={middle} of {pages_total})", f"?p={middle}", per_page),
            (f"last page (p={pages_total})", f"?p={pages_total}", args.portals - (pages_total - 1) * per_page),
            (f"search q={domain_part} (domain part)", f"?q={domain_part}", 10),
            ("search q=<a full member_id>", f"?q={full_member_id}", 1),
            (f"status filter: blocked ({blocked} portals)", "?status__exact=blocked", min(per_page, blocked)),
        ]

        results, details = [], []
        for label, query, expected_rows in pages:
            url = f"/admin/portals/portal/{query}"
            response = client.get(url)  # warm-up (templates, translations, plan caches)
            assert response.status_code == 200, (url, response.status_code)
            shown = len(re.findall(rb'class="action-select"', response.content))
            assert shown == expected_rows, (url, shown, expected_rows)

            with (
                CaptureQueriesContext(connection) as queries,
                QueryTimer(connection) as timer,
                DecryptCounter() as decrypts,
            ):
                client.get(url)
            captured = list(queries.captured_queries)  # the next request resets connection.queries
            for query, seconds in zip(captured, timer.times, strict=True):
                query["seconds"] = seconds
            sql_ms = sum(timer.times) * 1000

            times = []
            for _ in range(args.repeat):
                with common.Timer() as timer:
                    client.get(url)
                times.append(timer.seconds)
            results.append(
                [
                    label,
                    shown,
                    len(captured),
                    f"{sql_ms:.2f}",
                    decrypts.calls,
                    common.ms(common.median(times)),
                    common.ms(common.percentile(times, 90)),
                ]
            )
            details.append((label, captured))

        decrypt_us = decrypt_cost() * 1e6
        print(f"\n{args.repeat} timed requests per page (Django test Client, in-process; logged-in superuser)")
        print(common.table(results, ["page", "rows", "queries", "SQL ms", "decrypts", "median ms", "p90 ms"]))
        print(
            f"decrypts: stored secrets decrypted while loading the page's rows (Fernet, ~{decrypt_us:.0f} us each "
            "here); the changelist shows none of them"
        )
        print("\nqueries per page (time ms, SQL abbreviated):")
        for label, captured in details:
            print(f"  {label}:")
            for q in captured:
                sql = re.sub(r"\s+", " ", q["sql"])
                sql = re.sub(r'SELECT "portals_portal"\."id", .*? FROM', "SELECT <all portal columns> FROM", sql)
                print(f"    {q['seconds'] * 1000:7.2f}  {sql[:150]}{'...' if len(sql) > 150 else ''}")


if __name__ == "__main__":
    main()
