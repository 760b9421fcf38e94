"""The event inbox and the keep-alive on Celery: event ingest under gunicorn, a keep-alive pass on workers.

Run: .venv/bin/python bench/inbox.py [--portals 1000] [--seconds 8] [--connections 8]

1. Ingest: gunicorn (b24widget/gunicorn.py, bench.settings) with the stand-in's OAuth server slowed to
   5 s per request. POST /events/ with distinct ONAPPINSTALL events carrying tokens (each would need
   the OAuth server to be believed: in the request before the inbox, in a worker now) for
   --seconds at --connections, then the same load on /bench/insert/, a bare Django view doing one
   INSERT (an inbox row) on the same server. Prints events/s, p50/p99 of each, non-200 answers and
   the OAuth requests made during the ingest (0: nothing waits for the slow server).
2. Keep-alive: --portals due portals (refresh token renewed 160 days ago, tokens minted by the
   stand-in, rows bulk-created as in bench/refresh_tokens.py); `portals.keepalive_pass` sent once to
   1 worker process, then (portals made due again) to 2 worker processes (each `celery -A b24widget
   worker --concurrency 2`). Prints wall time from sending the pass to the last portal refreshed,
   OAuth requests, and duplicates (portals refreshed more than once, stand-in and database side).
The broker is the embedded one in test-artifacts/bench/broker-<pid>/ unless CELERY_BROKER_URL is set
(e.g. amqp://guest:guest@127.0.0.1:5672//); the queue is this run's own (b24bench-<pid>), deleted at
the end. Logs: test-artifacts/bench/inbox/.
"""

import argparse
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as common

LOGS = common.ARTIFACTS / "inbox"
OAUTH_DELAY = 5.0


def load(url: str, bodies, *, seconds: float, connections: int) -> dict:
    """POST bodies (an iterator of dicts) from `connections` threads for `seconds`; latencies and statuses."""
    import requests

    lock = threading.Lock()
    latencies, statuses = [], Counter()
    stop_at = time.monotonic() + seconds

    def run():
        with requests.Session() as http:
            http.trust_env = False
            while time.monotonic() < stop_at:
                with lock:
                    body = next(bodies)
                began = time.perf_counter()
                try:
                    status = http.post(url, data=body, timeout=30).status_code
                except requests.RequestException as exc:
                    status = type(exc).__name__
                took = time.perf_counter() - began
                with lock:
                    latencies.append(took)
                    statuses[status] += 1

    threads = [threading.Thread(target=run) for _ in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "rps": len(latencies) / wall,
        "p50": common.percentile(latencies, 50),
        "p99": common.percentile(latencies, 99),
        "statuses": dict(statuses),
    }


def ingest(standin, args) -> None:
    from bench.widget_open import Gunicorn

    b24 = standin.add_portal()
    b24.install_post()
    b24.finish_install()
    template = b24.event_payload("ONAPPINSTALL", with_tokens=True)
    counter = iter(range(10**9))

    def events():
        while True:
            n = next(counter)
            yield {**template, "ts": str(1_700_000_000 + n), "auth[application_token]": f"bench-{n:09d}"}

    def inserts():
        while True:
            yield {"n": str(next(counter))}

    port = common.free_port()
    env = {
        "B24_INBOX_UNVERIFIED_BURST": "100000000",
        "B24_INBOX_UNVERIFIED_PER_MINUTE": "100000000",
        "GUNICORN_WORKERS": os.environ.get("GUNICORN_WORKERS", "2"),
    }
    with Gunicorn(port, env):
        standin.oauth_delay = OAUTH_DELAY
        base = f"http://127.0.0.1:{port}"
        load(f"{base}/bench/insert/", inserts(), seconds=1, connections=args.connections)  # warm-up
        before = len(standin.oauth_requests)
        events_figures = load(f"{base}/events/", events(), seconds=args.seconds, connections=args.connections)
        oauth_during = len(standin.oauth_requests) - before
        bare = load(f"{base}/bench/insert/", inserts(), seconds=args.seconds, connections=args.connections)
        standin.oauth_delay = 0
    print(
        f"\n1. ingest through gunicorn ({env['GUNICORN_WORKERS']} workers), OAuth server slowed to "
        f"{OAUTH_DELAY:.0f} s, {args.connections} connections, {args.seconds} s each"
    )
    print(
        common.table(
            [
                [
                    "POST /events/ (ONAPPINSTALL with tokens)",
                    events_figures["requests"],
                    f"{events_figures['rps']:.0f}",
                    common.ms(events_figures["p50"]),
                    common.ms(events_figures["p99"]),
                    events_figures["statuses"],
                ],
                [
                    "POST /bench/insert/ (bare view, one INSERT)",
                    bare["requests"],
                    f"{bare['rps']:.0f}",
                    common.ms(bare["p50"]),
                    common.ms(bare["p99"]),
                    bare["statuses"],
                ],
            ],
            ["endpoint", "requests", "per s", "p50", "p99", "answers"],
        )
    )
    print(
        f"  ratio events/bare: {events_figures['rps'] / max(bare['rps'], 1e-9):.2f}; OAuth requests during "
        f"the ingest: {oauth_during}"
    )
    # The stored events are not this bench's subject any further: drop them and their queued tasks,
    # so the keep-alive's workers do nothing else.
    from b24widget.celery import app
    from inbox.models import InboxItem

    InboxItem.objects.all().delete()
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(app.conf.task_default_queue)


def start_workers(count: int, name: str) -> list:
    LOGS.mkdir(parents=True, exist_ok=True)
    workers = []
    for n in range(1, count + 1):
        command = [
            common.PYTHON,
            "-m",
            "celery",
            "-A",
            "b24widget",
            "worker",
            "--concurrency",
            "2",
            "-n",
            f"bench{n}@%h",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "WARNING",
        ]
        # The worker writes to its own copy of the descriptor: ours is closed once it has started.
        with open(LOGS / f"{name}-w{n}.log", "wb") as log:
            process = subprocess.Popen(
                command,
                cwd=common.ROOT,
                env={**os.environ, "DJANGO_SETTINGS_MODULE": "bench.settings"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        workers.append(process)
    return workers


def stop_workers(workers) -> None:
    import signal

    for process in workers:
        process.send_signal(signal.SIGTERM)
    for process in workers:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def keepalive(standin, args) -> None:
    from django.utils import timezone

    from bench.refresh_tokens import store_portals
    from portals import tasks
    from portals.models import Portal, PortalEvent

    anchor = standin.add_portal()
    virtual = common.add_virtual_portals(standin, args.portals, address=anchor.domain)
    pks = store_portals(virtual, renewed_days_ago=160)
    members = {b24.member_id for b24, _ in virtual}
    print(
        f"\n2. keep-alive pass over {args.portals:,} due portals (fan-out chunks of "
        f"{os.environ.get('B24_FANOUT_CHUNK', '50')}), each worker process --concurrency 2"
    )
    rows = []
    for count in (1, 2):
        Portal.objects.filter(pk__in=pks).update(refresh_renewed_at=timezone.now() - timedelta(days=160))
        workers = start_workers(count, f"keepalive-{count}")
        time.sleep(3)  # let them connect to the broker
        before, started_at = len(standin.oauth_requests), timezone.now()
        began = time.perf_counter()
        tasks.keepalive_pass.delay()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if not Portal.objects.filter(pk__in=pks, refresh_renewed_at__lt=started_at).exists():
                break
            time.sleep(0.2)
        wall = time.perf_counter() - began
        stop_workers(workers)
        requests_made = standin.oauth_requests[before:]
        per_token = Counter(r.get("refresh_token") for r in requests_made)
        events = Counter(
            PortalEvent.objects.filter(
                kind=PortalEvent.Kind.TOKEN_REFRESHED, created_at__gte=started_at, portal_id__in=pks
            ).values_list("portal_id", flat=True)
        )
        missed = len(pks) - len(events)
        rows.append(
            [
                count,
                f"{wall:.1f} s",
                f"{args.portals / wall:.0f}",
                len(requests_made),
                sum(1 for n in per_token.values() if n > 1),
                sum(1 for n in events.values() if n > 1),
                missed,
            ]
        )
    print(
        common.table(
            rows,
            [
                "workers",
                "wall",
                "portals/s",
                "OAuth requests",
                "tokens sent twice",
                "portals refreshed twice",
                "portals missed",
            ],
        )
    )
    print(f"  ({len(members):,} portals due each time)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--portals", type=int, default=1000, help="due portals for the keep-alive (default 1,000)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of load per endpoint (default 8)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections (default 8)")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-keepalive", action="store_true")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()

    run = f"{os.getpid()}-{secrets.token_hex(3)}"
    broker_dir = common.ARTIFACTS / f"broker-{run}"
    os.environ.setdefault("CELERY_QUEUE", f"b24bench-{run}")
    os.environ.setdefault("CELERY_BROKER_DIR", str(broker_dir))
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("B24_RATE_LIMIT_PER_SECOND", "0")
    with common.standin() as standin:
        common.setup_django(oauth_url=standin.oauth_url)
        from django.conf import settings

        with common.bench_database(keep=args.keep_db), common.bench_cache():
            common.print_header("inbox: event ingest under gunicorn, keep-alive pass on Celery workers")
            print(f"broker: {settings.CELERY_BROKER_URL.split('@')[-1]}  queue: {settings.CELERY_TASK_DEFAULT_QUEUE}")
            try:
                if not args.skip_ingest:
                    ingest(standin, args)
                if not args.skip_keepalive:
                    keepalive(standin, args)
            finally:
                common.drop_own_queue(broker_dir)


if __name__ == "__main__":
    main()
