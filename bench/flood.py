"""Forged widget opens against gunicorn (the project's config): does the deployment keep answering?

Run: .venv/bin/python bench/flood.py [--connections 50,200,1000] [--duration 10] [--processes 4]

For each concurrency: a stranger who knows one portal's member_id POSTs /placement/ with made-up
AUTH_IDs from that many keep-alive connections for --duration seconds, while one prober measures
GET /healthz and an already verified open (same user, cached verdict) every 0.1 s. Printed per run:
forged requests and their statuses, p50/p99 of /healthz and of the verified open during the flood,
probes that failed, calls the forged opens caused at the stand-in (OAuth server + portal) per forged
request, and database rows written (history + refusal counters). PostgreSQL and Redis as in
bench/widget_open.py (bench.settings; DATABASE_URL, CACHE_URL). Nothing here asserts a time.
"""

import argparse
import http.client
import multiprocessing
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as common
from bench.widget_open import Gunicorn, install_through_the_server


def _post(port, body, timeout=30.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/placement/", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _flood_process(port, fields, connections, seconds, tag, queue):
    """`connections` threads, each on its own keep-alive connection, sending forged opens until time is up."""
    statuses, lock = Counter(), threading.Lock()
    ends = time.monotonic() + seconds

    def loop(thread_no):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine, n = Counter(), 0
        while time.monotonic() < ends:
            n += 1
            body = urlencode(dict(fields, AUTH_ID=f"{tag:04x}{thread_no:06x}{n:022x}"))
            try:
                conn.request(
                    "POST", "/placement/", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
                )
                response = conn.getresponse()
                response.read()
                mine[response.status] += 1
            except OSError as exc:
                mine[type(exc).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.close()
        with lock:
            statuses.update(mine)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put(dict(statuses))


def _probe(port, verified_body, stop, out):
    while not stop.is_set():
        for kind in ("healthz", "verified"):
            started = time.monotonic()
            try:
                if kind == "healthz":
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    conn.request("GET", "/healthz", headers={"Host": "localhost"})
                    response = conn.getresponse()
                    response.read()
                    conn.close()
                    status = response.status
                else:
                    status = _post(port, verified_body)
            except OSError as exc:
                status = type(exc).__name__
            out.append((kind, status, time.monotonic() - started))
        time.sleep(0.1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", default="50,200,1000", help="comma-separated concurrencies")
    parser.add_argument("--duration", type=float, default=10, help="seconds of flood per concurrency (default 10)")
    parser.add_argument("--processes", type=int, default=4, help="load-generator processes (default 4)")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    levels = [int(x) for x in args.connections.split(",") if x]

    with common.standin() as standin:
        common.setup_django(oauth_url=standin.oauth_url)
        from portals.models import Portal, PortalEvent, Rejection

        with common.bench_database(keep=args.keep_db), common.bench_cache():
            common.print_header("flood: forged widget opens for one portal, through gunicorn")
            b24 = standin.add_portal()
            port = common.free_port()
            with Gunicorn(port, {}) as server:
                install_through_the_server(server.base, b24)
                assert Portal.objects.get(member_id=b24.member_id).status == Portal.Status.ACTIVE
                verified = b24.placement_post(user_id="2")
                assert _post(port, urlencode(verified)) == 200  # verified once: cached in Redis for every worker
                rows = []
                for level in levels:
                    before = (
                        len(standin.server_requests),
                        len(b24.requests),
                        len(standin.oauth_requests),
                        PortalEvent.objects.count(),
                        Rejection.objects.count(),
                    )
                    probes, stop = [], threading.Event()
                    prober = threading.Thread(target=_probe, args=(port, urlencode(verified), stop, probes))
                    prober.start()
                    queue = multiprocessing.Queue()
                    shares = [
                        level // args.processes + (1 if i < level % args.processes else 0)
                        for i in range(args.processes)
                    ]
                    procs = [
                        multiprocessing.Process(
                            target=_flood_process, args=(port, verified, n, args.duration, i + level, queue)
                        )
                        for i, n in enumerate(shares)
                        if n
                    ]
                    for p in procs:
                        p.start()
                    statuses = Counter()
                    for _ in procs:
                        statuses.update(queue.get())
                    for p in procs:
                        p.join()
                    stop.set()
                    prober.join()
                    forged = sum(statuses.values())
                    outbound = (
                        (len(standin.server_requests) - before[0])
                        + (len(b24.requests) - before[1])
                        + (len(standin.oauth_requests) - before[2])
                    )
                    written = (PortalEvent.objects.count() - before[3]) + (Rejection.objects.count() - before[4])
                    health = [t for k, s, t in probes if k == "healthz"]
                    open_ = [t for k, s, t in probes if k == "verified"]
                    failed = [(k, s) for k, s, _t in probes if s != 200]
                    rows.append(
                        [
                            level,
                            forged,
                            ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=str)),
                            common.ms(common.percentile(health, 50)),
                            common.ms(common.percentile(health, 99)),
                            common.ms(common.percentile(open_, 50)),
                            common.ms(common.percentile(open_, 99)),
                            len(failed),
                            outbound,
                            f"{outbound / max(forged, 1):.4f}",
                            written,
                        ]
                    )
                    print(f"  {level} connections done", flush=True)
            print()
            print(
                common.table(
                    rows,
                    [
                        "connections",
                        "forged requests",
                        "statuses",
                        "/healthz p50 ms",
                        "/healthz p99 ms",
                        "verified open p50 ms",
                        "verified open p99 ms",
                        "probes failed",
                        "calls to Bitrix24",
                        "calls per forged request",
                        "rows written",
                    ],
                )
            )


if __name__ == "__main__":
    main()
