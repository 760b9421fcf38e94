"""Ingest hot paths under gunicorn: the channel API and /events/ against a bare view that inserts one row.

Run: .venv/bin/python bench/ingest.py [--seconds 8] [--connections 16] [--rounds 2] [--channels 10] [--profile 300]

gunicorn (b24widget/gunicorn.py on bench.settings, as production runs it), loaded by wrk with pre-built
requests, each sent once (bench/wrk_requests.lua), endpoints alternating per round:
  - POST /bench/insert/: a bare view (bench/urls.py) doing one INSERT of an inbox row: the anchor;
  - POST /channels/<id>/messages: signed (version 2) "add" messages over --channels channels of one portal,
    each with its own message id, the channel's budget set out of reach (the Redis call still made);
  - POST /events/: OnImConnectorMessageAdd from the installed portal with its application_token, each with
    its own message id (the inbox stores it; the handler runs in a worker, and no worker runs here: the
    portal's lane is busy, as under a burst, so each stored event waits behind the first), the portal's
    budget set out of reach (the Redis call still made).
  - POST /bench/floor/channel/<id> and /bench/floor/events/ (bench/urls.py): each path's required work and
    nothing else (its rows read, its signature or token checked, its budget, its statements, by hand): the
    floor an implementation of the threat model's checks could reach, for judging the hot paths against.
Prints per endpoint: requests/s, p50/p99, non-2xx answers, and the CPU per request of gunicorn (workers
included), the PostgreSQL backends and Redis (/proc), then each endpoint's ratio to the bare insert by
requests/s and by gunicorn CPU per request (the goal: >= 0.8). Sanity: rows stored == 2xx answers.
Then --profile requests of the channel API, of /events/ (the lane busy) and of /events/ with the lane idle
(each event published), in this process through Django's WSGIHandler: SQL queries per request and
cProfile's top functions; and this thread's CPU per request (unprofiled, the requests built beforehand) for
the bare insert, both paths and both floors, with their ratios: steadier than gunicorn's on a busy machine.
The broker is the embedded one (test-artifacts/bench/broker-<run>/) unless CELERY_BROKER_URL is set; its
queue is the run's own. Needs wrk (apt-get install -y wrk).
"""

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import secrets
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as common

HERE = Path(__file__).resolve().parent
LOGS = common.ARTIFACTS / "ingest"
SEPARATOR = b"\x1e\x1e\x1e"


def raw_request(port: int, path: str, body: bytes, headers: dict) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Requests:
    """Builds each endpoint's requests for one run: every one distinct (a fresh id), signed when it must be."""

    def __init__(self, port: int, channels: list, b24):
        self.port, self.channels, self.b24, self.n = port, channels, b24, 0

    def _next(self) -> int:
        self.n += 1
        return self.n

    def insert(self) -> bytes:
        body = f"n={self._next()}".encode()
        return raw_request(self.port, "/bench/insert/", body, {"Content-Type": "application/x-www-form-urlencoded"})

    def channel(self, *, floor: str | None = None) -> bytes:
        """`floor`: None, the channel API; "" or "lean", its floor view (bench/urls.py)."""
        from openlines.outbound import INBOUND, sign

        n = self._next()
        channel, secret = self.channels[n % len(self.channels)]
        body = json.dumps(
            {
                "chat": {"id": f"chat-{n % 50}", "name": "Bench chat"},
                "user": {"id": f"u-{n % 50}", "name": "Ann", "last_name": "Bench"},
                "message": {"id": f"m-{n}", "text": f"message {n}: hello from the bench"},
            }
        ).encode()
        ts = str(int(time.time()))
        return raw_request(
            self.port,
            f"/bench/floor/channel/{channel.public_id}{'/' + floor if floor else ''}"
            if floor is not None
            else f"/channels/{channel.public_id}/messages",
            body,
            {
                "Content-Type": "application/json",
                "X-B24Widget-Timestamp": ts,
                "X-B24Widget-Signature": sign(secret, ts, body, INBOUND),
                "X-B24Widget-Signature-Version": "2",
            },
        )

    def event(self, *, floor: str | None = None) -> bytes:
        """`floor`: None, /events/; "" or "lean", its floor view (bench/urls.py)."""
        n = self._next()
        payload = self.b24.event_payload(
            "ONIMCONNECTORMESSAGEADD",
            data={
                "CONNECTOR": "b24widget_http",
                "LINE": "1",
                "MESSAGES": [
                    {
                        "im": {"chat_id": "7", "message_id": str(n)},
                        "message": {"id": [str(n)], "text": f"reply {n}"},
                        "chat": {"id": f"chat-{n % 50}"},
                    }
                ],
            },
        )
        body = urlencode(payload).encode()
        path = "/events/" if floor is None else f"/bench/floor/events/{floor}"
        return raw_request(self.port, path, body, {"Content-Type": "application/x-www-form-urlencoded"})


def run_wrk(url: str, requests: list[bytes], args) -> dict:
    LOGS.mkdir(parents=True, exist_ok=True)
    path = LOGS / "requests.bin"
    path.write_bytes(b"".join(r + SEPARATOR for r in requests))
    command = [
        "wrk",
        "-t",
        str(args.threads),
        "-c",
        str(args.connections),
        "-d",
        f"{max(1, round(args.seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(HERE / "wrk_requests.lua"),
        url,
    ]
    env = {**os.environ, "BENCH_REQUESTS_FILE": str(path), "BENCH_THREADS": str(args.threads)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.seconds + 120)
    line = next((out for out in result.stdout.splitlines() if out.startswith("BENCH_JSON ")), None)
    if result.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    figures = json.loads(line[len("BENCH_JSON ") :])
    figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
    return figures


def rows_stored() -> dict:
    from inbox.models import InboxItem
    from openlines.models import InboundMessage

    return {
        "insert": InboxItem.objects.filter(member_id="bench").count(),
        "channel": InboundMessage.objects.count(),
        "events": InboxItem.objects.exclude(member_id="bench").count(),
    }


def profile(
    label: str, environ_for, expect: int, count: int, name: str, *, prebuild: bool = True, quiet: bool = False
) -> float:
    """`count` requests (`environ_for(n)` builds each) through Django's WSGIHandler in this process: the
    SQL statements of one, the mean time and this thread's CPU per request (returned), then (unless `quiet`)
    cProfile's CPU time (the project's functions by cumulative time, everything by own time); the profile is
    kept in LOGS/<name>.prof."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.db import connection

    handler = WSGIHandler()

    def post(n: int, built: dict | None = None) -> int:
        status = []
        response = handler(built.pop(n) if built else environ_for(n), lambda s, h, *a: status.append(s))
        b"".join(response)
        response.close()  # request_finished, as a WSGI server sends it
        return int(status[0].split()[0])

    assert post(0) == expect
    queries = []  # (request_started resets connection.queries: a wrapper sees every one)

    def record(execute, sql, params, many, context):
        queries.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        assert post(1) == expect
    # The requests are built first unless building one changes the database (the idle lane): what is timed is
    # the server's side alone.
    built = {n: environ_for(n) for n in range(count + 2, 2 * count + 2)} if prebuild else None
    started, cpu = time.perf_counter(), time.thread_time()
    for n in range(count + 2, 2 * count + 2):
        post(n, built)
    plain, cpu = (time.perf_counter() - started) / count, (time.thread_time() - cpu) / count
    if quiet:
        print(f"\nin-process, {label}: {common.ms(cpu)} ms of this thread's CPU per request, {len(queries)} statements")
        return cpu
    profiler = cProfile.Profile(time.thread_time)  # CPU of this thread: waits on PostgreSQL or Redis left out
    started = time.perf_counter()
    profiler.enable()
    for n in range(2 * count + 2, 3 * count + 2):
        post(n)
    profiler.disable()
    LOGS.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(LOGS / f"{name}.prof")
    took = (time.perf_counter() - started) / count
    print(f"\nin-process, {label} through Django's WSGIHandler")
    print(
        f"  mean of {count}: {common.ms(plain)} ms per request, {common.ms(cpu)} ms of this thread's CPU "
        f"({common.ms(took)} ms under cProfile); SQL statements per request: {len(queries)}"
    )
    for q in queries:
        sql = re.sub(r"\s+", " ", q)
        print(f"    {sql[:150]}{'...' if len(sql) > 150 else ''}")
    stats = pstats.Stats(profiler)
    total = sum(t[3] for key, t in stats.stats.items() if key[2] == "__call__" and key[0].endswith("wsgi.py"))
    print(f"  CPU per request under cProfile: {common.ms(total / count)} ms; the project's functions, cumulative:")
    ours = sorted(
        (
            (t[3], key)
            for key, t in stats.stats.items()
            if key[0].startswith(str(common.ROOT)) and "/.venv/" not in key[0] and "/bench/" not in key[0]
        ),
        reverse=True,
    )
    for seconds, (path, line, function) in ours[:14]:
        print(f"    {common.ms(seconds / count):>6} ms  {Path(path).relative_to(common.ROOT)}:{line} {function}")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
    text = out.getvalue()
    print("  everything by own CPU time:")
    print("\n".join("    " + line for line in text[text.index("ncalls") :].rstrip().splitlines()))
    return cpu


def insert_environ():
    from django.test import RequestFactory

    factory = RequestFactory(SERVER_NAME="127.0.0.1")

    def environ_for(n: int) -> dict:
        return factory.post("/bench/insert/", f"n={n}", content_type="application/x-www-form-urlencoded").environ

    return environ_for


def channel_environ(channel, secret, *, floor: bool = False):
    from django.test import RequestFactory

    factory = RequestFactory(SERVER_NAME="127.0.0.1")
    path = f"/bench/floor/channel/{channel.public_id}" if floor else None

    def environ_for(n: int) -> dict:
        payload = {
            "chat": {"id": f"p-chat-{n % 50}", "name": "Bench chat"},
            "user": {"id": f"p-u-{n % 50}", "name": "Ann", "last_name": "Bench"},
            "message": {"id": f"p-{n}", "text": f"message {n}: hello from the bench"},
        }
        environ = common.post_signed(factory, channel, secret, payload).environ
        if path:
            environ["PATH_INFO"] = path
        return environ

    return environ_for


def events_environ(build: "Requests", *, idle: bool = False, floor: bool = False):
    """`idle`: before each request the portal's waiting rows are marked done (outside the measured handler), as
    if a worker had kept up: each event finds its lane idle and is published to the broker at once."""
    from django.test import RequestFactory

    from inbox.models import InboxItem

    factory = RequestFactory(SERVER_NAME="127.0.0.1")

    def environ_for(n: int) -> dict:
        if idle:
            InboxItem.objects.filter(member_id=build.b24.member_id, state__in=InboxItem.UNFINISHED).update(
                state=InboxItem.State.DONE, enqueued_at=None
            )
        raw = build.event()
        body = raw[raw.index(b"\r\n\r\n") + 4 :]
        path = "/bench/floor/events/" if floor else "/events/"
        return factory.post(path, body, content_type="application/x-www-form-urlencoded").environ

    return environ_for


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of load per endpoint and round")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--channels", type=int, default=10, help="connected channels the messages spread over")
    parser.add_argument("--profile", type=int, default=300, help="in-process profiled requests (0: none)")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--only", default="", help="endpoints, comma-separated (insert, channel, events-lean, ...)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (apt-get install -y wrk)")

    run = f"{os.getpid()}-{secrets.token_hex(3)}"
    broker_dir = common.ARTIFACTS / f"broker-{run}"
    os.environ.setdefault("CELERY_QUEUE", f"b24bench-{run}")
    os.environ.setdefault("CELERY_BROKER_DIR", str(broker_dir))
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # Out of reach, so the load is never refused, but taken: the budget's Redis call stays on the path.
    os.environ["OPENLINES_INBOUND_PER_MINUTE"] = "1000000000"
    os.environ["OPENLINES_INBOUND_BURST"] = "1000000000"
    # The same for the inbox's budget per portal (3,000 at once, then 50/s): every event here is one portal's, and
    # past its burst the run would measure cheap 429s, not stored events.
    os.environ["B24_INBOX_PORTAL_PER_MINUTE"] = "1000000000"
    os.environ["B24_INBOX_PORTAL_BURST"] = "1000000000"
    from bench.widget_open import LOGS as GUNICORN_LOGS
    from bench.widget_open import CpuMeter, Gunicorn, gunicorn_config, install_through_the_server

    with common.standin() as standin:
        common.setup_django(oauth_url=standin.oauth_url)
        from django.conf import settings

        from b24widget.celery import app
        from openlines import lifecycle, registry
        from portals.models import Portal

        config = gunicorn_config()
        with common.bench_database(keep=args.keep_db), common.bench_cache():
            common.print_header("ingest: the channel API and /events/ against a bare INSERT, under gunicorn")
            print(
                f"gunicorn: {config['workers']} workers x {config['threads']} threads ({config['worker_class']}); "
                f"wrk {args.threads} threads, {args.connections} connections, {args.seconds:g} s per endpoint, "
                f"{args.rounds} rounds; broker {settings.CELERY_BROKER_URL.split('@')[-1]}"
            )
            port = common.free_port()
            try:
                with Gunicorn(port, {}) as server:
                    b24 = standin.add_portal()
                    install_through_the_server(server.base, b24)
                    portal = Portal.objects.get(member_id=b24.member_id)
                    known = {line["ID"] for line in b24.open_lines}
                    b24.open_lines += [
                        {"ID": str(n), "LINE_NAME": f"Bench {n}", "ACTIVE": "Y"}
                        for n in range(1, args.channels + 1)
                        if str(n) not in known
                    ]
                    channels = [
                        lifecycle.connect(portal, registry.HTTP, str(line), user_id="1")
                        for line in range(1, args.channels + 1)
                    ]
                    build = Requests(port, channels, b24)
                    endpoints = {
                        "insert": ("POST /bench/insert/ (bare view, one INSERT)", build.insert),
                        "channel": ("POST /channels/<id>/messages (signed add)", build.channel),
                        "events": ("POST /events/ (OnImConnectorMessageAdd)", build.event),
                        # Each path's floors (bench/urls.py): its required work as it was, and as it is now.
                        **{
                            f"{path}-{kind}": (f"POST {floor_path}{suffix} ({what})", partial(make, floor=suffix[1:]))
                            for path, make, floor_path in (
                                ("channel", build.channel, "/bench/floor/channel/<id>"),
                                ("events", build.event, "/bench/floor/events"),
                            )
                            for kind, suffix, what in (
                                ("floor", "", "its required work only"),  # (/bench/floor/events/ itself)
                                ("lean", "/lean", "one statement, one Redis call"),
                            )
                        },
                    }
                    if args.only:
                        endpoints = {k: v for k, v in endpoints.items() if k in args.only.split(",")}
                    per_run = int(args.seconds * 2500)  # more than the server answers in that time
                    for _label, make in endpoints.values() if args.rounds else ():  # warm-up: every worker, every path
                        run_wrk(
                            f"{server.base}/",
                            [make() for _ in range(500)],
                            argparse.Namespace(**{**vars(args), "seconds": 2}),
                        )
                    results = {key: [] for key in endpoints}
                    stored_before = rows_stored()
                    meter = CpuMeter(server.process.pid)
                    for _round in range(args.rounds):
                        for key, (_label, make) in endpoints.items():
                            batch = [make() for _ in range(per_run)]
                            before = meter.snapshot()
                            figures = run_wrk(f"{server.base}/", batch, args)
                            figures["cpu"] = CpuMeter.delta(before, meter.snapshot())
                            results[key].append(figures)
                    stored_after = rows_stored()
                    if args.rounds:
                        report(endpoints, results, stored_before, stored_after)
                        print(f"  (gunicorn's logs: {GUNICORN_LOGS})")
                    if args.profile:
                        channel, secret = channels[0]
                        cpu = {
                            "insert": profile(
                                "bare INSERT requests", insert_environ(), 200, args.profile, "", quiet=True
                            ),
                            "channel": profile(
                                "channel API requests (one channel, its task pending)",
                                channel_environ(channel, secret),
                                202,
                                args.profile,
                                "channel",
                            ),
                            "events": profile(
                                "/events/ requests (OnImConnectorMessageAdd)",
                                events_environ(build),
                                200,
                                args.profile,
                                "events",
                            ),
                        }
                        profile(
                            "/events/ requests, the portal's lane idle (as if a worker kept up: each one published)",
                            events_environ(build, idle=True),
                            200,
                            args.profile,
                            "events-idle",
                            prebuild=False,
                        )
                        for path, environ_for, expect in (
                            ("channel", channel_environ(channel, secret, floor=True), 202),
                            ("events", events_environ(build, floor=True), 200),
                        ):
                            label = f"{path}'s floor (its required work only, bench/urls.py)"
                            cpu[f"{path}-floor"] = profile(label, environ_for, expect, args.profile, "", quiet=True)
                        print(
                            "\nin-process CPU per request (this thread, unprofiled; the server's own share left out): "
                            + ", ".join(f"{key} {common.ms(value)} ms" for key, value in cpu.items())
                            + "; ratio to the bare INSERT: "
                            + ", ".join(f"{key} {cpu['insert'] / cpu[key]:.2f}" for key in cpu if key != "insert")
                            + " (goal >= 0.8)"
                        )
            finally:
                if settings.CELERY_BROKER_URL.startswith("filesystem:"):
                    shutil.rmtree(broker_dir, ignore_errors=True)
                else:
                    with app.connection_for_write() as conn:
                        conn.default_channel.queue_delete(settings.CELERY_TASK_DEFAULT_QUEUE)


def spread(values: list[float], digits: int) -> str:
    low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return low if low == high else f"{low}-{high}"


def report(endpoints, results, stored_before, stored_after) -> None:
    rows, summary = [], {}
    for key, (label, _make) in endpoints.items():
        runs = results[key]
        count = sum(r["requests"] for r in runs)
        wall = sum(r["duration_us"] for r in runs) / 1e6
        bad = sum(r["errors"]["status"] for r in runs)
        socket_errors = sum(v for r in runs for k, v in r["errors"].items() if k != "status")
        cpu = {part: sum(r["cpu"][part] for r in runs) for part in ("app", "postgres", "redis")}
        summary[key] = {"rps": count / wall, "app_ms": cpu["app"] / count * 1000}
        rows.append(
            [
                label,
                count,
                f"{count / wall:.0f}",
                " / ".join(f"{r['rps']:.0f}" for r in runs),
                spread([r["latency_us"]["p50"] / 1000 for r in runs], 1),
                spread([r["latency_us"]["p99"] / 1000 for r in runs], 0),
                f"{bad}/{socket_errors}",
                f"{cpu['app'] / count * 1000:.2f}",
                f"{cpu['postgres'] / count * 1000:.2f}",
                f"{cpu['redis'] / count * 1000:.2f}",
            ]
        )
    print()
    print(
        common.table(
            rows,
            [
                "endpoint",
                "requests",
                "per s",
                "per round",
                "p50 ms",
                "p99 ms",
                "non-2xx/socket err",
                "gunicorn CPU ms/req",
                "PostgreSQL",
                "Redis",
            ],
        )
    )
    anchor = summary["insert"]
    for key in [k for k in results if k != "insert"]:
        print(
            f"  {key} / bare insert: requests/s {summary[key]['rps'] / anchor['rps']:.2f}, by gunicorn CPU per "
            f"request {anchor['app_ms'] / summary[key]['app_ms']:.2f} (goal >= 0.8)"
        )
    stored = {k: stored_after[k] - stored_before[k] for k in stored_after}
    answered = {k: sum(r["requests"] - r["errors"]["status"] for r in results[k]) for k in results}
    for path in ("channel", "events"):  # (a floor view stores its path's rows)
        answered[path] += answered.pop(f"{path}-floor", 0) + answered.pop(f"{path}-lean", 0)
    print(f"  rows stored during the runs {stored}; 2xx answers {answered}")


if __name__ == "__main__":
    main()
