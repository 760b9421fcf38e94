"""The ingest hot paths' storing step, folded (one statement) against apart (two), CPU of this thread per call.

Run: .venv/bin/python bench/ingest_steps.py [--calls 2000] [--blocks 5]

bench/ingest.py measures whole requests; a change of one round trip (~0.05 ms of CPU) is within its noise on
a shared machine. Here each step runs alone, in this process, on the bench database (PostgreSQL, or SQLite
with DATABASE_URL=sqlite:///...bench...), in alternating blocks of --calls calls, and prints the CPU time of
this thread per call (time.thread_time: waits on the database left out), the CPU of its PostgreSQL backend per
call (/proc; PostgreSQL on this machine) and the wall time:
  - /events/' store (inbox/queue.py `_store`): the duplicate check inside the INSERT (`rows.insert_unless`)
    against the check as a SELECT of its own, then the INSERT (as before issue 26's second pass);
  - the channel API's store and hand-off with a task pending: the INSERT, then `queue_channel`'s mark (the
    product's path) against both in one PostgreSQL statement with the channel row locked to the commit (the
    fold issue 26 tried and left out, built here as it was: `FOLDED` below; bench/RESULTS.md says why).
Nothing here asserts a time.
"""

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as common

# The channel API's INSERT and its channel's conditional mark as one statement (PostgreSQL), as tried in issue 26:
# the channel row locked first (`held`, FOR NO KEY UPDATE, kept to the commit: without it a run's take committed
# after the statement's snapshot goes unseen and the message waits for the sweep), the mark judged on the row as
# locked. Parameters: the channel id, the INSERT's values, the mark, the channel id, "lost" and "now".
FOLDED = (
    "WITH held AS (SELECT {queued} AS queued FROM {channels} WHERE id = %s FOR NO KEY UPDATE), "
    "stored AS ({insert}), "
    "marked AS (UPDATE {channels} SET {queued} = %s WHERE id = %s AND EXISTS "
    "(SELECT 1 FROM held WHERE queued IS NULL OR queued < %s OR queued > %s) RETURNING 1) "
    "SELECT (SELECT id FROM stored), (SELECT COUNT(*) FROM marked)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="calls per block")
    parser.add_argument("--blocks", type=int, default=5, help="alternating blocks per variant")
    args = parser.parse_args()
    common.setup_django()
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from inbox import queue, rows
    from inbox.models import InboxItem
    from openlines import tasks
    from openlines.models import Channel, InboundMessage
    from tests.helpers import make_portal

    with common.bench_database():
        common.print_header("ingest_steps: the hot paths' storing step, one statement against two")
        portal = make_portal("active", member_id="bench-steps", domain="steps.example.test")
        channel = Channel.objects.create(portal=portal, connector_id="b24widget_http", line_id="1")
        Channel.objects.filter(pk=channel.pk).update(inbound_queued_at=timezone.now())  # a task is pending
        absorbing = queue._absorbing_sql(True)
        apart_check = absorbing.replace("SELECT 1 FROM", "SELECT id FROM") + " ORDER BY id LIMIT 1"
        counter = iter(range(10**9))

        def item() -> InboxItem:
            n = next(counter)
            now = timezone.now()
            return InboxItem(
                portal_id=portal.pk,
                member_id=portal.member_id,
                event="ONIMCONNECTORMESSAGEADD",
                data={"MESSAGES": [{"message": {"id": [str(n)], "text": f"reply {n}"}}]},
                sealed_auth='{"access_token": "a", "application_token": "t"}',
                idempotency_key=f"{n:064d}",
                received_at=now,
                next_attempt_at=now,
            )

        def events_folded() -> None:
            new = item()
            assert rows.insert_unless(new, absorbing, [new.idempotency_key, str(InboxItem.State.DONE)])

        def events_apart() -> None:
            new = item()
            with connection.cursor() as cursor:
                cursor.execute(apart_check, [new.idempotency_key, str(InboxItem.State.DONE)])
                assert cursor.fetchone() is None
            rows.insert(new)

        def message() -> InboundMessage:
            n = next(counter)
            return InboundMessage(
                channel=channel, action="add", key=f"add:c:{n}", external_chat_id="c", payload={"message": {"id": n}}
            )

        def channel_folded() -> None:
            row = message()
            now = timezone.now()
            adapt = connection.ops.adapt_datetimefield_value
            lost = now - timedelta(seconds=settings.OPENLINES_REQUEUE_AFTER)
            insert, values = rows.statement(row, tail="FROM held")
            sql = FOLDED.format(queued="inbound_queued_at", channels=Channel._meta.db_table, insert=insert)
            with connection.cursor() as cursor:
                cursor.execute(sql, [channel.pk, *values, adapt(now), channel.pk, adapt(lost), adapt(now)])
                pk, marked = cursor.fetchone()
            assert pk and not marked  # (a task is pending: nothing to publish)

        def channel_apart() -> None:
            rows.insert(message())
            tasks.queue_channel(tasks.deliver_inbound, channel.pk)

        variants = {
            "/events/ store, check inside the INSERT": events_folded,
            "/events/ store, check then INSERT": events_apart,
            "channel store, then the mark's UPDATE": channel_apart,
        }
        if connection.vendor == "postgresql":
            variants["channel store + mark, one statement (tried)"] = channel_folded
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        server: dict[str, list[float]] = {name: [] for name in variants}
        wall: dict[str, list[float]] = {name: [] for name in variants}
        backend = None
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                (backend,) = cursor.fetchone()

        def server_cpu() -> float:
            if backend is None:
                return 0.0
            fields = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

        for work in variants.values():  # warm-up: statements built, connection open
            for _ in range(50):
                work()
        for _block in range(args.blocks):
            for name, work in variants.items():
                started, started_cpu, started_server = time.perf_counter(), time.thread_time(), server_cpu()
                for _ in range(args.calls):
                    work()
                cpu[name].append((time.thread_time() - started_cpu) / args.calls)
                server[name].append((server_cpu() - started_server) / args.calls)
                wall[name].append((time.perf_counter() - started) / args.calls)
        print(f"{connection.vendor}; {args.blocks} blocks of {args.calls} calls per variant, alternating")
        print(f"{'step':<48} {'CPU ms/call (median, min-max)':>30} {'PostgreSQL CPU ms/call':>24} {'wall ms/call':>14}")
        for name in variants:
            c, p = cpu[name], server[name]
            print(
                f"{name:<48} {statistics.median(c) * 1000:>12.3f} ({min(c) * 1000:.3f}-{max(c) * 1000:.3f})"
                + (
                    f"{statistics.median(p) * 1000:>14.3f} ({min(p) * 1000:.3f}-{max(p) * 1000:.3f})"
                    if backend is not None
                    else f"{'-':>24}"
                )
                + f"{statistics.median(wall[name]) * 1000:>14.3f}"
            )


if __name__ == "__main__":
    main()
