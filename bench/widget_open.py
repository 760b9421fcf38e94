"""Widget open (POST /placement/ with a cached verdict) through gunicorn, next to a bare Django view.

Run: .venv/bin/python bench/widget_open.py [--connections 16] [--duration 15] [--rounds 2]

What it does, in one run:
  * starts the Bitrix24 stand-in (sandbox/standin/) and gunicorn with the project's config
    (b24widget/gunicorn.py) on bench.settings: DEBUG off, PostgreSQL (DATABASE_URL, default the
    throw-away database b24bench), the verdict cache in Redis (CACHE_URL, default db 3, keys under a
    per-run prefix) so every worker shares it, B24_OAUTH_URL at the stand-in;
  * installs a stand-in portal through the running server (POST /install/, then ONAPPINSTALL to
    /events/) and opens the widget once, which verifies the user with the stand-in and caches the verdict;
  * loads POST /placement/ (that same open again: same AUTH_ID, so the verdict is cached) and a bare
    `HttpResponse("ok")` view (bench/urls.py, same middleware, same POST) with the same concurrency
    and duration, alternating, --rounds times each, with wrk (bench/wrk_post.lua), or with
    bench/_loadgen.py when wrk is not installed;
  * prints requests/s and p50/p99 latency per run and the widget/bare ratio (goal >= 0.8); then, in
    this process, the queries, cache calls and decryptions of one cached open.
Sanity checks (not timing): every widget response logged during the load is 200, and the stand-in saw
no user.current call, no other REST call and no OAuth request during the load.
Logs: test-artifacts/bench/widget_open/ (gunicorn's access and error logs).
"""

import argparse
import contextlib
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as common

HERE = Path(__file__).resolve().parent
LOGS = common.ARTIFACTS / "widget_open"
_ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S*)" (?P<status>\d{3}) ')


class Gunicorn:
    """gunicorn -c python:b24widget.gunicorn b24widget.wsgi on bench.settings, logging to files."""

    def __init__(self, port: int, extra_env: dict):
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            **extra_env,
        }
        self.access_path = LOGS / "gunicorn-access.log"
        self.error_path = LOGS / "gunicorn-error.log"

    def __enter__(self):
        LOGS.mkdir(parents=True, exist_ok=True)
        self._access = open(self.access_path, "wb")
        self._error = open(self.error_path, "wb")
        gunicorn = common.VENV_BIN / "gunicorn"
        # --no-control-socket: gunicorn 27 otherwise binds ~/.gunicorn/gunicorn.ctl, one path for every
        # gunicorn of the user, and would take it from (or lose it to) another server on this machine.
        command = [
            str(gunicorn) if gunicorn.exists() else "gunicorn",
            "-c",
            "python:b24widget.gunicorn",
            "--no-control-socket",
            "b24widget.wsgi",
        ]
        # accesslog and errorlog are "-": stdout is the access log, stderr the error log (and the app's log).
        self.process = subprocess.Popen(
            command, cwd=common.ROOT, env=self.env, stdout=self._access, stderr=self._error, start_new_session=True
        )
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self, timeout: float = 60.0):
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"gunicorn exited with {self.process.returncode}:\n{self.error_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise SystemExit(f"gunicorn did not answer /healthz within {timeout:.0f} s:\n{self.error_tail()}")

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the master stops its workers gracefully
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._access.close()
        self._error.close()

    def error_tail(self, lines: int = 30) -> str:
        self._error.flush()
        return "\n".join(self.error_path.read_text(errors="replace").splitlines()[-lines:])

    def mark(self) -> tuple[int, int]:
        return self.access_path.stat().st_size, self.error_path.stat().st_size

    def since(self, mark: tuple[int, int]) -> tuple[str, str]:
        """Access and error log lines written since `mark`."""
        texts = []
        for path, offset in ((self.access_path, mark[0]), (self.error_path, mark[1])):
            with open(path, "rb") as handle:
                handle.seek(offset)
                texts.append(handle.read().decode("utf-8", "replace"))
        return texts[0], texts[1]


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int):
    """(command, parent pid, own CPU ticks, reaped children's CPU ticks) of a process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (
        text[text.index("(") + 1 : text.rindex(")")],
        int(fields[1]),
        int(fields[11]) + int(fields[12]),
        int(fields[13]) + int(fields[14]),
    )


class CpuMeter:
    """CPU time used during a run, by whom: gunicorn (master, workers, and workers that exited), the
    PostgreSQL backends serving the bench database, Redis, the load generator, this process (the
    stand-in), and everything else on the machine (from /proc/stat)."""

    def __init__(self, master_pid: int):
        self.master_pid = master_pid

    def _db_backends(self) -> list[int]:
        from django.db import connection

        if connection.vendor != "postgresql":
            return []
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return [row[0] for row in cursor.fetchall()]

    def snapshot(self) -> dict:
        import resource

        procs = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _proc_stat(int(entry))
                if stat:
                    procs[int(entry)] = stat
        tree, grew = {self.master_pid}, True
        while grew:
            grew = False
            for pid, (_comm, ppid, _own, _children) in procs.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        app = sum(procs[pid][2] for pid in tree if pid in procs) + procs.get(self.master_pid, ("", 0, 0, 0))[3]
        with open("/proc/stat") as handle:
            ticks = [int(v) for v in handle.readline().split()[1:]]
        self_usage, children_usage = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        return {
            "app": app / _TICK,
            "postgres": {pid: procs[pid][2] / _TICK for pid in self._db_backends() if pid in procs},
            "redis": sum(own for comm, _p, own, _c in procs.values() if comm.startswith("redis-server")) / _TICK,
            # wrk (or _loadgen.py) is this process's child and has been waited for when the run ends.
            "loadgen": (children_usage.ru_utime + children_usage.ru_stime),
            "bench": self_usage.ru_utime + self_usage.ru_stime,
            "busy": (sum(ticks[:8]) - ticks[3] - ticks[4]) / _TICK,  # user..steal, without idle and iowait
            "irq": (ticks[5] + ticks[6]) / _TICK,  # interrupts and softirqs (loopback TCP), no process's time
            "wall": time.monotonic(),
        }

    @staticmethod
    def delta(before: dict, after: dict) -> dict:
        out = {key: after[key] - before[key] for key in ("app", "redis", "loadgen", "bench", "busy", "irq", "wall")}
        out["postgres"] = sum(seconds - before["postgres"].get(pid, 0.0) for pid, seconds in after["postgres"].items())
        out["other"] = out["busy"] - sum(out[k] for k in ("app", "postgres", "redis", "loadgen", "bench", "irq"))
        return out


def gunicorn_config() -> dict:
    """The values b24widget/gunicorn.py computes in this environment (it reads the same variables)."""
    os.environ.setdefault("GUNICORN_BIND", "127.0.0.1:0")
    config = importlib.import_module("b24widget.gunicorn")
    return {
        name: getattr(config, name)
        for name in ("workers", "threads", "worker_class", "max_requests", "max_requests_jitter", "keepalive")
    }


def install_through_the_server(base: str, b24) -> None:
    """Install as Bitrix24 does: the install POST into the frame, then ONAPPINSTALL to /events/."""
    import requests

    from sandbox.standin import frame_query_and_body

    query, body = frame_query_and_body(b24.install_post())
    response = requests.post(f"{base}/install/?{urlencode(query)}", data=body, timeout=30)
    assert response.status_code == 200, (response.status_code, response.text[:500])
    response = requests.post(f"{base}/events/", data=b24.event_payload("ONAPPINSTALL"), timeout=30)
    assert response.status_code == 200, (response.status_code, response.text[:500])


def run_load(url: str, body_file: Path, args) -> dict:
    if args.loadgen == "wrk":
        command = [
            "wrk",
            "-t",
            str(args.threads),
            "-c",
            str(args.connections),
            "-d",
            f"{args.duration}s",
            "--timeout",
            "10s",
            "-s",
            str(HERE / "wrk_post.lua"),
            url,
        ]
    else:
        command = [
            common.PYTHON,
            str(HERE / "_loadgen.py"),
            url,
            str(body_file),
            str(args.connections),
            str(args.duration),
            str(args.threads),
        ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY_FILE": str(body_file)},
        timeout=args.duration + 120,
    )
    line = next((out for out in result.stdout.splitlines() if out.startswith("BENCH_JSON ")), None)
    if result.returncode != 0 or line is None:
        raise SystemExit(f"load generator failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    figures = json.loads(line[len("BENCH_JSON ") :])
    figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
    return figures


def logged_statuses(access_text: str, path: str) -> Counter:
    statuses = Counter()
    for match in _ACCESS_LINE.finditer(access_text):
        if match["path"] == path:
            statuses[match["status"]] += 1
    return statuses


class CacheCallCounter:
    """Counts calls on the default cache backend (each is one round trip to Redis)."""

    METHODS = (
        "get",
        "set",
        "add",
        "delete",
        "get_many",
        "set_many",
        "delete_many",
        "incr",
        "decr",
        "has_key",
        "touch",
        "get_or_set",
    )

    def __enter__(self):
        from django.core.cache import caches

        self.backend, self.calls = caches["default"], Counter()
        for name in self.METHODS:
            original = getattr(self.backend, name)

            def counting(*a, __name=name, __original=original, **k):
                self.calls[__name] += 1
                return __original(*a, **k)

            setattr(self.backend, name, counting)
        return self

    def __exit__(self, *exc):
        for name in self.METHODS:
            with contextlib.suppress(AttributeError):
                delattr(self.backend, name)


@contextlib.contextmanager
def patched(target, name: str, wrapper_factory):
    original = getattr(target, name)
    setattr(target, name, wrapper_factory(original))
    try:
        yield
    finally:
        setattr(target, name, original)


class Stages:
    """Wall time spent in named steps of the widget view, per request (wrappers around module attributes)."""

    def __init__(self):
        self.seconds = Counter()

    def timed(self, label):
        def factory(original):
            def wrapper(*a, **k):
                started = time.perf_counter()
                try:
                    return original(*a, **k)
                finally:
                    self.seconds[label] += time.perf_counter() - started

            return wrapper

        return factory

    @contextlib.contextmanager
    def installed(self):
        from django.core.cache import caches

        import placements.auth
        import placements.request
        import placements.views
        import placements.widget_token
        from portals import lifecycle

        with contextlib.ExitStack() as stack:
            stack.enter_context(patched(placements.request, "parse", self.timed("parse and validate the POST")))
            stack.enter_context(patched(placements.auth, "find_portal", self.timed("find_portal (the SQL query)")))
            stack.enter_context(patched(caches["default"], "get", self.timed("verdict cache get (Redis)")))
            stack.enter_context(patched(lifecycle, "touch", self.timed("lifecycle.touch")))
            stack.enter_context(patched(placements.widget_token, "issue", self.timed("widget token (signing)")))
            stack.enter_context(patched(placements.views, "_page", self.timed("the page (rendered once, then reused)")))
            stack.enter_context(patched(placements.views, "framed_by", self.timed("framing headers")))
            yield self


class WsgiClient:
    """Requests through Django's WSGIHandler, as gunicorn calls it: request_started/finished signals,
    hence connection health checks, included (Django's test Client switches those off)."""

    def __init__(self, query: dict, body: dict):
        from django.core.handlers.wsgi import WSGIHandler
        from django.test import RequestFactory

        self.handler = WSGIHandler()
        self.factory = RequestFactory(SERVER_NAME="127.0.0.1")
        self.query = urlencode(query)
        self.body = urlencode(body)

    def post(self, path: str):
        environ = self.factory.post(
            f"{path}?{self.query}", self.body, content_type="application/x-www-form-urlencoded"
        ).environ
        status = []
        response = self.handler(environ, lambda s, h, *a: status.append(s))
        b"".join(response)
        response.close()  # fires request_finished, as a WSGI server does
        return int(status[0].split()[0])


@contextlib.contextmanager
def decrypt_counter():
    from vault import fields as crypto

    original, counter = crypto.decrypt, Counter()

    def counting(value):
        counter["decrypt"] += 1
        return original(value)

    crypto.decrypt = counting
    try:
        yield counter
    finally:
        crypto.decrypt = original


def in_process_profile(query: dict, body: dict, b24, repeat: int) -> None:
    """Cached opens through Django's WSGIHandler in this process (same settings, database and cache,
    no HTTP server): queries, health checks, cache calls and decryptions of one open; the median time
    of `repeat` opens and of `repeat` bare requests; where an open's time goes."""
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    client = WsgiClient(query, body)
    calls_before = b24.calls("user.current")
    assert client.post("/placement/") == 200
    health_checks = Counter()
    with patched(connection, "is_usable", lambda original: lambda: health_checks.update(["SELECT 1"]) or original()):
        reset_queries()
        with (
            CaptureQueriesContext(connection) as queries,
            CacheCallCounter() as cache_calls,
            decrypt_counter() as decrypts,
        ):
            status = client.post("/placement/")
        captured = list(queries.captured_queries)
    assert status == 200
    timings = {}
    for label, path in (("widget", "/placement/"), ("bare", "/bench/bare/")):
        times = []
        for _ in range(repeat):
            with common.Timer() as timer:
                client.post(path)
            times.append(timer.seconds)
        timings[label] = common.median(times)
    stages = Stages()
    with stages.installed(), common.Timer() as staged:
        for _ in range(repeat):
            client.post("/placement/")
    assert b24.calls("user.current") == calls_before, "an in-process open asked the stand-in again"

    print(
        "\nin-process, cached opens through Django's WSGIHandler (same settings, database and cache; no HTTP server):"
    )
    print(
        f"  SQL queries per open: {len(captured)}, plus {health_checks['SELECT 1']} connection health check "
        f"(SELECT 1, CONN_HEALTH_CHECKS) = {len(captured) + health_checks['SELECT 1']} database round trips"
    )
    for q in captured:
        sql = re.sub(r"\s+", " ", q["sql"])
        sql = re.sub(r'SELECT "portals_portal"\."id", .*? FROM', "SELECT <every portal column> FROM", sql)
        print(f"    {sql[:170]}{'...' if len(sql) > 170 else ''}")
    print(
        f"  cache calls per open: {sum(cache_calls.calls.values())} "
        f"({', '.join(f'{k} x{v}' for k, v in cache_calls.calls.items())})"
    )
    print(
        f"  stored secrets decrypted per open: {decrypts['decrypt']} (the portal row's tokens; a cached open uses none)"
    )
    print(
        f"  median of {repeat}: widget open {common.ms(timings['widget'])} ms, "
        f"bare view {common.ms(timings['bare'])} ms"
    )
    total = staged.seconds / repeat
    print(f"  where a widget open's time goes (mean of {repeat}, {common.ms(total)} ms each):")
    for label, seconds in stages.seconds.most_common():
        print(f"    {common.ms(seconds / repeat):>6} ms  {label}")
    rest = total - sum(stages.seconds.values()) / repeat
    print(f"    {common.ms(rest):>6} ms  the rest (middleware, request handling, translation, view code)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=16, help="concurrent keep-alive connections (default 16)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="wrk threads (or load-generator processes); default 1, to leave the CPUs to the server",
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run (default 15)")
    parser.add_argument(
        "--warmup", type=int, default=3, help="seconds of unmeasured load per endpoint first (default 3)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="measured runs per endpoint, alternating (default 2)")
    parser.add_argument("--loadgen", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument(
        "--max-requests", type=int, default=None, help="override GUNICORN_MAX_REQUESTS (default: the project's config)"
    )
    parser.add_argument("--profile-repeat", type=int, default=300, help="in-process opens timed (default 300)")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the bench database afterwards")
    args = parser.parse_args()
    extra_env = {} if args.max_requests is None else {"GUNICORN_MAX_REQUESTS": str(args.max_requests)}

    with common.standin() as standin:
        common.setup_django(oauth_url=standin.oauth_url)
        from portals.models import Portal
        from sandbox.standin import frame_query_and_body

        with common.bench_database(keep=args.keep_db), common.bench_cache():
            common.print_header("widget_open: POST /placement/ (cached verdict) vs a bare view, through gunicorn")
            os.environ.update(extra_env)
            config = gunicorn_config()
            print(
                f"gunicorn (b24widget/gunicorn.py): {config['workers']} workers x {config['threads']} threads "
                f"({config['worker_class']}), max_requests {config['max_requests']}+-{config['max_requests_jitter']}, "
                f"keepalive {config['keepalive']} s; access log on; --no-control-socket"
            )
            print(
                f"load: {args.loadgen}, {args.threads} thread(s), {args.connections} connections, "
                f"{args.duration} s per run, {args.rounds} round(s) per endpoint alternating, "
                f"after {args.warmup} s warm-up each"
            )
            sys.stdout.flush()

            b24 = standin.add_portal()
            with Gunicorn(common.free_port(), extra_env) as server:
                install_through_the_server(server.base, b24)
                portal = Portal.objects.get(member_id=b24.member_id)
                assert portal.status == Portal.Status.ACTIVE, portal.status

                query, body = frame_query_and_body(b24.placement_post())
                body_file = LOGS / "placement-body.txt"
                body_file.write_text(urlencode(body))
                widget_url = f"{server.base}/placement/?{urlencode(query)}"
                bare_url = f"{server.base}/bench/bare/?{urlencode(query)}"

                import requests

                opened = requests.post(widget_url, data=body, timeout=30)  # verifies with the stand-in, caches
                assert opened.status_code == 200, (opened.status_code, opened.text[:500])
                assert b24.calls("user.current") == 1, b24.calls("user.current")
                assert "frame-ancestors" in opened.headers.get("Content-Security-Policy", "")

                user_current, rest_requests = b24.calls("user.current"), len(b24.requests)
                oauth_requests = len(standin.oauth_requests)
                start_mark = server.mark()
                for url in (bare_url, widget_url):
                    run_load(url, body_file, argparse.Namespace(**{**vars(args), "duration": args.warmup}))

                meter = CpuMeter(server.process.pid)
                cpu = {"bare": Counter(), "widget": Counter()}
                rows, totals = [], {"bare": [0, 0.0], "widget": [0, 0.0]}
                widget_statuses, restarts_total = Counter(), 0
                for round_no in range(1, args.rounds + 1):
                    for label, url, path in (("bare", bare_url, "/bench/bare/"), ("widget", widget_url, "/placement/")):
                        mark = server.mark()
                        before = meter.snapshot()
                        figures = run_load(url, body_file, args)
                        cpu[label].update(CpuMeter.delta(before, meter.snapshot()))
                        time.sleep(0.3)  # let the last access-log lines land
                        access, errors = server.since(mark)
                        statuses = logged_statuses(access, path)
                        restarts = errors.count("Autorestarting worker")
                        restarts_total += restarts
                        if label == "widget":
                            widget_statuses += statuses
                            assert figures["errors"]["status"] == 0, figures["errors"]
                        socket_errors = sum(v for k, v in figures["errors"].items() if k != "status")
                        totals[label][0] += figures["requests"]
                        totals[label][1] += figures["duration_us"] / 1e6
                        lat = figures["latency_us"]
                        rows.append(
                            [
                                f"{round_no}",
                                label,
                                figures["requests"],
                                f"{figures['rps']:.0f}",
                                f"{lat['p50'] / 1000:.2f}",
                                f"{lat['p99'] / 1000:.2f}",
                                sum(v for k, v in statuses.items() if k != "200"),
                                socket_errors,
                                restarts,
                            ]
                        )
                        sys.stdout.flush()

                # Sanity (not timing): every widget answer was 200, and the cache spared the stand-in.
                assert widget_statuses and set(widget_statuses) == {"200"}, widget_statuses
                assert b24.calls("user.current") == user_current, (user_current, b24.calls("user.current"))
                assert len(b24.requests) == rest_requests and len(standin.oauth_requests) == oauth_requests
                warm_access, _ = server.since(start_mark)

            print()
            print(
                common.table(
                    rows,
                    [
                        "round",
                        "endpoint",
                        "requests",
                        "req/s",
                        "p50 ms",
                        "p99 ms",
                        "non-200",
                        "socket errors",
                        "worker restarts",
                    ],
                )
            )
            rps = {k: v[0] / v[1] for k, v in totals.items()}
            print(f"\nwidget open: {rps['widget']:.0f} req/s; bare view: {rps['bare']:.0f} req/s (all measured runs)")
            print(f"ratio widget/bare: {rps['widget'] / rps['bare']:.2f} (goal >= 0.8)")
            print(
                f"sanity: {sum(widget_statuses.values())} widget answers logged during the measured runs, all 200; "
                f"{sum(logged_statuses(warm_access, '/placement/').values())} in all including warm-up. Stand-in "
                f"during the load: user.current +{b24.calls('user.current') - user_current}, REST requests "
                f"+{len(b24.requests) - rest_requests}, OAuth requests +{len(standin.oauth_requests) - oauth_requests}"
            )
            print(f"gunicorn worker restarts (max_requests) during the measured runs: {restarts_total}")
            cpu_rows = []
            for label in ("bare", "widget"):
                used, requests_made = cpu[label], totals[label][0]
                per = lambda key, used=used, n=requests_made: f"{used[key] / n * 1000:.2f}"  # noqa: E731
                cpu_rows.append(
                    [
                        label,
                        per("app"),
                        per("postgres"),
                        per("redis"),
                        per("loadgen"),
                        per("bench"),
                        per("irq"),
                        f"{used['other'] / used['wall']:.2f}",
                        f"{used['busy'] / used['wall'] / (os.cpu_count() or 1) * 100:.0f}%",
                    ]
                )
            print(
                "\nCPU during the measured runs (/proc), in ms per request; 'other processes' is not per request "
                "but the cores the rest of the machine kept busy meanwhile (other work, daemons):"
            )
            print(
                common.table(
                    cpu_rows,
                    [
                        "endpoint",
                        "gunicorn",
                        "PostgreSQL",
                        "Redis",
                        "load gen",
                        "stand-in",
                        "kernel irq",
                        "other processes (cores)",
                        "machine busy",
                    ],
                )
            )
            own = {
                label: sum(cpu[label][k] for k in ("app", "postgres", "redis", "loadgen", "bench", "irq"))
                / totals[label][0]
                for label in cpu
            }
            print(
                f"ratio from CPU per request (everything but other processes: the throughput ratio this bench "
                f"would see with the machine to itself): {own['bare'] / own['widget']:.2f}"
            )
            in_process_profile(query, body, b24, args.profile_repeat)


if __name__ == "__main__":
    main()
