"""Fair dispatch of the inbox (issue 23): one portal's backlog vs another portal's next events, on workers.

Run: .venv/bin/python bench/inbox_fairness.py [--backlog 2000] [--probes 10] [--windows 4,0] [--ordered]
       [--chains 50,1]

Portal A's user posts --backlog events with A's real application_token (ONOFFLINEEVENT: unordered, a cheap
handler that asks Bitrix24 nothing here, so the figures are the inbox's own; with --ordered
ONIMCONNECTORMESSAGEADD: ordered, one at a time per portal lane, rejected at once as no channel is connected,
so again nothing is asked of Bitrix24); then portal B sends --probes events of the same code, one every 0.2 s.
One Celery worker process (--concurrency 2) drains it all. For each B24_INBOX_PORTAL_WINDOW in --windows (0: no
window, every row sent at once as before issue 23) and each B24_INBOX_CHAIN_EVENTS in --chains (1: a task never
goes on with its lane's next event, as before issue 26's chain; it matters for --ordered only) it prints: A's
tasks in the broker when B's first event came, B's delay (accepted -> processed: p50, max) and the time A's
backlog took. Events are accepted in this process (inbox.queue.accept), the per-portal budget off.
The broker is the embedded one unless CELERY_BROKER_URL is set (e.g. amqp://guest:guest@127.0.0.1:5672//);
the queue is this run's own, deleted at the end. Logs: test-artifacts/bench/inbox/.
"""

import argparse
import contextlib
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as common
from bench.inbox import start_workers, stop_workers


def run(window: int, chain: int, args, portals) -> list:
    from django.conf import settings
    from django.db.models import Q

    from b24widget.celery import app
    from inbox import queue
    from inbox.models import InboxItem

    a, b = portals
    settings.B24_INBOX_PORTAL_WINDOW = window or 10**9
    os.environ["B24_INBOX_PORTAL_WINDOW"] = str(window or 10**9)  # the workers' setting
    os.environ["B24_INBOX_CHAIN_EVENTS"] = str(chain)
    code = "ONIMCONNECTORMESSAGEADD" if args.ordered else "ONOFFLINEEVENT"
    InboxItem.objects.all().delete()
    with contextlib.suppress(Exception), app.connection_for_write() as conn:  # (RabbitMQ: no queue yet)
        conn.default_channel.queue_purge(app.conf.task_default_queue)
    workers = start_workers(1, f"fairness-k{window}-c{chain}")
    try:
        time.sleep(3)  # the worker connects
        began = time.monotonic()
        for n in range(args.backlog):
            auth = {"member_id": a.member_id, "application_token": a.application_token}
            queue.accept(code, member_id=a.member_id, data={"N": str(n)}, auth=auth, ts=str(n))
        # A's tasks in the broker (queued or running) when B's first event comes: what B waits behind.
        ahead = (
            InboxItem.objects.filter(member_id=a.member_id, state__in=InboxItem.UNFINISHED)
            .filter(Q(state=InboxItem.State.PROCESSING) | Q(enqueued_at__isnull=False))
            .count()
        )
        probes = []
        for n in range(args.probes):
            auth = {"member_id": b.member_id, "application_token": b.application_token}
            item, _ = queue.accept(code, member_id=b.member_id, data={"N": str(n)}, auth=auth, ts=str(n))
            probes.append(item.pk)
            time.sleep(0.2)
        deadline = time.monotonic() + 600
        while InboxItem.objects.filter(state__in=InboxItem.UNFINISHED).exists() and time.monotonic() < deadline:
            queue.sweep()  # as beat does (every B24_INBOX_SWEEP_INTERVAL in production)
            time.sleep(0.5)
        drained = time.monotonic() - began
        delays = sorted(
            (item.finished_at - item.received_at).total_seconds()
            for item in InboxItem.objects.filter(pk__in=probes)
            if item.finished_at
        )
        left = InboxItem.objects.filter(state__in=InboxItem.UNFINISHED).count()
    finally:
        stop_workers(workers)
    return [
        window or "off",
        chain,
        args.backlog,
        ahead,
        common.ms(common.median(delays)) if delays else "-",
        common.ms(delays[-1]) if delays else "-",
        f"{drained:.1f} s",
        left,
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=2000, help="portal A's events (default 2,000)")
    parser.add_argument("--probes", type=int, default=10, help="portal B's events, one per 0.2 s (default 10)")
    parser.add_argument("--windows", default="4,0", help="B24_INBOX_PORTAL_WINDOW values; 0: none (default 4,0)")
    parser.add_argument("--ordered", action="store_true", help="ordered events (ONIMCONNECTORMESSAGEADD)")
    parser.add_argument("--chains", default="50", help="B24_INBOX_CHAIN_EVENTS values; 1: no chain (default 50)")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()

    tag = f"{os.getpid()}-{secrets.token_hex(3)}"
    broker_dir = common.ARTIFACTS / f"broker-{tag}"
    os.environ.setdefault("CELERY_QUEUE", f"b24bench-{tag}")
    os.environ.setdefault("CELERY_BROKER_DIR", str(broker_dir))
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["B24_INBOX_PORTAL_PER_MINUTE"] = "0"  # every user's events stored: the dispatch is measured
    common.setup_django()
    from django.conf import settings

    from b24widget.celery import app
    from portals.models import Portal

    with common.bench_database(keep=args.keep_db), common.bench_cache():
        common.print_header("inbox: one portal's backlog vs another portal's next events (fair dispatch)")
        print(f"broker: {settings.CELERY_BROKER_URL.split('@')[-1]}  queue: {settings.CELERY_TASK_DEFAULT_QUEUE}")
        portals = [
            Portal.objects.create(
                member_id=f"bench-fair-{name}",
                domain=f"{name}.bench.example.test",
                client_endpoint=f"https://{name}.bench.example.test/rest/",
                status=Portal.Status.ACTIVE,
                application_token=f"app-token-{name}-{secrets.token_hex(8)}",
            )
            for name in ("a", "b")
        ]
        rows = []
        try:
            for window in [int(w) for w in args.windows.split(",")]:
                for chain in [int(c) for c in args.chains.split(",")]:
                    rows.append(run(window, chain, args, portals))
        finally:
            if settings.CELERY_BROKER_URL.startswith("filesystem:"):
                shutil.rmtree(broker_dir, ignore_errors=True)
            else:
                with app.connection_for_write() as conn:
                    conn.default_channel.queue_delete(settings.CELERY_TASK_DEFAULT_QUEUE)
        header = ["window", "chain", "A's backlog", "A's tasks in the broker at B", "B delay p50", "B delay max"]
        header.append("all drained")
        print(common.table(rows, [*header, "left"]))


if __name__ == "__main__":
    main()
