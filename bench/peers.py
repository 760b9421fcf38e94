"""b24widget against b24pysdk and fast-bitrix24 on the same stand-in portals, with Bitrix24's documented limit.

Run: .venv/bin/python bench/peers.py [--rounds 3] [--plans standard,enterprise] [--peers-python PATH]
     (the peers come from bench/requirements.txt; --peers-python is a Python that has them, the project's
     own by default)

settings/performance/limits.md: a portal's counter takes 50 requests, then drains 2 per second (Enterprise:
250, then 5 per second); past it a request is answered 503 QUERY_LIMIT_EXCEEDED. The stand-in enforces that
(`set_plan`) over HTTPS (b24pysdk only calls https://). Each measurement gets a fresh portal (its bucket
empty), and the clients take turns within each round (the order rotates), so load on this shared machine
falls on all of them alike.

Workloads (per plan):
  list   every item of crm.item.list (--items, 10,000): b24widget `PortalClient.list`, b24pysdk
         `call_list_fast` (its start=-1 chain), fast-bitrix24 `get_all`;
         (b24widget reads the plan from the portal's LICENSE; fast-bitrix24, which has a bucket of its own,
         is given the plan's numbers; b24pysdk has no pacing, it retries what the portal refuses)
  calls  --calls (3,000) crm.item.get calls: b24widget `PortalClient.batch`, b24pysdk `call_batches`,
         fast-bitrix24 `call` (each packs 50 into a batch request);
  procs  --procs (4) processes at once, --proc-calls (1,000; the issue's 3,000 would take ~95 s per client
         and round on the standard plan) calls each, on one portal. b24widget's processes share their
         limiter through Redis (bench.settings: db 3 under a per-run prefix); the peers have no shared state.

Each client runs in its own process (started before the clock, so imports do not count); printed per client
and workload: wall time (median and range over the rounds), HTTP requests the portal received, limit errors
it answered (503 QUERY_LIMIT_EXCEEDED), errors surfaced to the caller (exceptions, failed processes), whether
every result came back exactly once (and whether in order: ids ascending, calls in the order given), the
client's CPU seconds, and the ratio to the physical minimum: the fewest requests
(ceil(items / 2,500) for a list, ceil(calls / 50) per process) and the time the bucket needs for them,
(requests - burst) / rate. Nothing is asserted about time.
"""

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLIENTS = ("b24widget", "b24pysdk", "fast-bitrix24")
PLANS = {"standard": ("others", 50, 2.0), "enterprise": ("enterprise", 250, 5.0)}  # stand-in name, burst, rate
ENTITY_TYPE_ID = 2


# --- the worker: one client, one workload, in its own process -------------------------------------------


def _expected_calls(spec):
    return range(spec["first_id"], spec["first_id"] + spec["calls"])


def _run_b24widget(spec):
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    import django

    django.setup()
    from bitrix24 import limits
    from portals.models import Portal
    from portals.tokens import PortalClient

    portal = Portal(
        member_id=spec["member_id"],
        domain=spec["domain"],
        client_endpoint=spec["client_endpoint"],
        access_token=spec["access_token"],
        status="active",
        rest_plan=spec["rest_plan"],
    )
    client = PortalClient(portal)

    def run():
        if spec["workload"] == "list":
            return [item["id"] for item in client.list("crm.item.list", {"entityTypeId": ENTITY_TYPE_ID})]
        ids = _expected_calls(spec)
        result = client.batch({f"i{n}": ("crm.item.get", {"entityTypeId": ENTITY_TYPE_ID, "id": n}) for n in ids})
        if result.errors:
            raise RuntimeError(f"{len(result.errors)} command errors, e.g. {next(iter(result.errors.values()))}")
        return [result.result[f"i{n}"]["item"]["id"] for n in ids]

    return run, limits.counters.snapshot


def _run_b24pysdk(spec):
    from b24pysdk import BitrixApp, BitrixToken
    from b24pysdk.api.requesters import BitrixOAuthRequester

    # b24pysdk's OAuth host is a class constant: pointed at the stand-in (refreshes are not expected).
    BitrixOAuthRequester._OAUTH_TOKEN_URL = f"{spec['oauth_base']}/oauth/token/"
    BitrixOAuthRequester._APP_INFO_URL = f"{spec['oauth_base']}/rest/app.info/"
    token = BitrixToken(
        domain=spec["domain"],
        auth_token=spec["access_token"],
        refresh_token=spec["refresh_token"],
        expires_in=3600,
        bitrix_app=BitrixApp(client_id=spec["client_id"], client_secret=spec["client_secret"]),
    )

    def run():
        if spec["workload"] == "list":
            answer = token.call_list_fast("crm.item.list", {"entityTypeId": ENTITY_TYPE_ID})
            return [item["id"] for item in answer["result"]]
        ids = _expected_calls(spec)
        answer = token.call_batches({f"i{n}": ("crm.item.get", {"entityTypeId": ENTITY_TYPE_ID, "id": n}) for n in ids})
        result = answer["result"]
        if result.get("result_error"):
            raise RuntimeError(f"{len(result['result_error'])} command errors")
        return [result["result"][f"i{n}"]["item"]["id"] for n in ids]

    return run, dict


def _run_fast_bitrix24(spec):
    import logging

    from fast_bitrix24 import Bitrix

    logging.getLogger("fast_bitrix24").setLevel(logging.ERROR)

    async def token():
        return spec["access_token"]

    # ssl=False: the stand-in's certificate is its own (aiohttp does not read REQUESTS_CA_BUNDLE). Its
    # bucket is told the plan's documented numbers (its defaults are the standard plan's, 50 and 2/s).
    bitrix = Bitrix(
        spec["client_endpoint"],
        token_func=token,
        verbose=False,
        ssl=False,
        request_pool_size=spec["burst"],
        requests_per_second=spec["rate"],
    )

    def run():
        if spec["workload"] == "list":
            return [item["id"] for item in bitrix.get_all("crm.item.list", {"entityTypeId": ENTITY_TYPE_ID})]
        ids = _expected_calls(spec)
        results = bitrix.call("crm.item.get", [{"entityTypeId": ENTITY_TYPE_ID, "id": n} for n in ids])
        return [(r.get("item") or r)["id"] if isinstance(r, dict) else None for r in results]

    return run, dict


def worker(spec) -> None:
    """Set up, say "ready", wait for "go" on stdin, run, print one JSON line."""
    run, counters = {"b24widget": _run_b24widget, "b24pysdk": _run_b24pysdk, "fast-bitrix24": _run_fast_bitrix24}[
        spec["client"]
    ](spec)
    print("ready", flush=True)
    sys.stdin.readline()
    before = counters()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.time()
    error, got = None, None
    try:
        got = run()
    except BaseException as exc:  # noqa: BLE001 - a peer may raise anything; it is a surfaced error
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
    finished = time.time()
    after = resource.getrusage(resource.RUSAGE_SELF)
    expected = list(range(1, spec["items"] + 1)) if spec["workload"] == "list" else list(_expected_calls(spec))
    counted = counters()
    print(
        json.dumps(
            {
                "started": started,
                "finished": finished,
                "error": error,
                "correct": got == expected,
                "same_items": got is not None and sorted(got) == expected,
                "sample": None if got == expected else repr(got[:3] if isinstance(got, list) else got)[:200],
                "cpu": (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime),
                "counters": {k: v - before.get(k, 0) for k, v in counted.items()},
            }
        ),
        flush=True,
    )


# --- the conductor --------------------------------------------------------------------------------------


def _install(client, b24):
    """Install as Bitrix24 does: the install POST into the frame, installFinish, then ONAPPINSTALL."""
    from urllib.parse import urlencode

    from portals.models import Portal
    from sandbox.standin import frame_query_and_body

    form = "application/x-www-form-urlencoded"
    query, body = frame_query_and_body(b24.install_post())
    response = client.post(f"/install/?{urlencode(query)}", urlencode(body), content_type=form)
    assert response.status_code == 200, response.content[:500]
    b24.finish_install()
    response = client.post("/events/", urlencode(b24.event_payload("ONAPPINSTALL")), content_type=form)
    assert response.status_code == 200, response.content[:500]
    return Portal.objects.get(member_id=b24.member_id)


def _portal(standin, django_client, client_name, plan, items):
    """A fresh portal on the plan, installed (b24widget through the app, the peers as Bitrix24 does),
    then its bucket emptied on both sides, as if the install were long past."""
    from django.core.cache import cache

    from portals.models import Portal

    b24 = standin.add_portal()
    b24.crm_items = items
    b24.set_plan(PLANS[plan][0])  # its LICENSE follows (en_ent250 / en_project): what the app reads at install
    if client_name == "b24widget":
        stored = _install(django_client, b24)
        tokens = {"access_token": stored.access_token, "refresh_token": stored.refresh_token}
        rest_plan = Portal.objects.get(pk=stored.pk).rest_plan
    else:
        b24.install_post()
        b24.finish_install()
        tokens = b24.issue_tokens("1")
        rest_plan = ""
    b24.set_plan(PLANS[plan][0])  # the stand-in's counter back to 0 ...
    cache.delete(f"b24widget:rl:{b24.member_id}")  # ... and our limiter's state with it
    return b24, tokens, rest_plan


def _measure(args, standin, django_client, client_name, plan, workload):
    items = args.items if workload == "list" else max(args.calls, args.procs * args.proc_calls)
    b24, tokens, rest_plan = _portal(standin, django_client, client_name, plan, items)
    processes = args.procs if workload == "procs" else 1
    calls = args.proc_calls if workload == "procs" else args.calls
    python = sys.executable if client_name == "b24widget" else args.peers_python
    procs = []
    for i in range(processes):
        spec = {
            "client": client_name,
            "workload": "list" if workload == "list" else "calls",
            "items": items,
            "calls": calls,
            "first_id": 1 + i * calls if workload == "procs" else 1,
            "member_id": b24.member_id,
            "domain": b24.domain,
            "client_endpoint": b24.client_endpoint,
            "oauth_base": f"https://{standin.address}",
            "client_id": standin.client_id,
            "client_secret": standin.client_secret,
            "rest_plan": rest_plan,
            "burst": PLANS[plan][1],
            "rate": PLANS[plan][2],
            **tokens,
        }
        procs.append(
            subprocess.Popen(
                [python, __file__, "--worker", json.dumps(spec)],
                cwd=ROOT,
                text=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    for p in procs:
        line = p.stdout.readline()
        if line.strip() != "ready":
            p.kill()
            raise SystemExit(f"{client_name} worker did not start: {line}{p.stderr.read()[-2000:]}")
    before = len(b24.requests)
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=args.timeout)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        reports.append(
            json.loads(lines[-1])
            if lines
            else {"error": f"exit {p.returncode}: {err[-300:]}", "correct": False, "cpu": 0.0, "counters": {}}
        )
    sent = b24.requests[before:]
    started = min(r.get("started", time.time()) for r in reports)
    finished = max(r.get("finished", started) for r in reports)
    return {
        "wall": finished - started,
        "requests": len(sent),
        "limit_errors": sum(1 for r in sent if r["status"] == 503),
        "surfaced": sum(1 for r in reports if r.get("error")),
        "processes": processes,
        "correct": sum(1 for r in reports if r.get("correct")),
        "same_items": sum(1 for r in reports if r.get("same_items")),
        "cpu": sum(r.get("cpu", 0.0) for r in reports),
        "errors": [r["error"] for r in reports if r.get("error")]
        + [f"wrong: {r['sample']}" for r in reports if not r.get("error") and not r.get("same_items")],
        "counters": reports[0].get("counters", {}),
    }


def physical_minimum(args, plan, workload):
    """(requests, seconds): the fewest requests and the time the portal's bucket needs for them."""
    _name, burst, rate = PLANS[plan]
    if workload == "list":
        requests = math.ceil(args.items / 2500)
    elif workload == "calls":
        requests = math.ceil(args.calls / 50)
    else:
        requests = args.procs * math.ceil(args.proc_calls / 50)
    return requests, max(requests - burst, 0) / rate


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plans", default="standard,enterprise")
    parser.add_argument("--workloads", default="list,calls,procs")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=3_000)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--proc-calls", type=int, default=1_000)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one client run may take")
    parser.add_argument(
        "--peers-python",
        default=sys.executable,
        help="a Python with bench/requirements.txt installed (default: this one)",
    )
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))

    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/b24bench_issue_16")
    from bench import _common as common

    folder = Path(tempfile.mkdtemp(prefix="b24bench-peers-"))
    from tests.tls import self_signed_context

    cert, context = self_signed_context(folder, "b24 bench stand-in")
    os.environ["REQUESTS_CA_BUNDLE"] = str(cert)  # for requests (b24widget, b24pysdk) here and in the workers
    os.environ["NO_PROXY"] = "127.0.0.1"
    from sandbox.standin import StandIn

    client_id, client_secret = common.client_credentials()
    standin = StandIn(client_id, client_secret, tls=context).start()
    try:
        common.setup_django(oauth_url=standin.oauth_url)
        from django.test import Client

        with common.bench_database(), common.bench_cache():
            clients = args.clients.split(",")
            plans, workloads = args.plans.split(","), args.workloads.split(",")
            common.print_header("peers: b24widget, b24pysdk, fast-bitrix24 on the stand-in with the documented limit")
            print(
                f"rounds {args.rounds}; list {args.items:,} items; calls {args.calls:,}; "
                f"{args.procs} processes x {args.proc_calls:,} calls; cache {common.cache_label()}"
            )
            django_client = Client()
            runs = {}
            for round_no in range(args.rounds):
                for plan in plans:
                    for workload in workloads:
                        order = clients[round_no % len(clients) :] + clients[: round_no % len(clients)]
                        for name in order:
                            result = _measure(args, standin, django_client, name, plan, workload)
                            runs.setdefault((plan, workload, name), []).append(result)
                            print(
                                f"  round {round_no + 1} {plan:10} {workload:5} {name:13} "
                                f"{result['wall']:7.2f} s  {result['requests']:4} requests  "
                                f"{result['limit_errors']:3} x 503  {result['surfaced']} surfaced  "
                                f"{result['same_items']}/{result['processes']} correct "
                                f"({result['correct']} in order)"
                                + (f"  ({result['errors'][0][:90]})" if result["errors"] else ""),
                                flush=True,
                            )
            print()
            print(report(args, runs, plans, workloads, clients))
    finally:
        standin.stop()


def report(args, runs, plans, workloads, clients) -> str:
    from bench import _common as common

    rows = []
    labels = {
        "list": f"list {args.items:,} items",
        "calls": f"{args.calls:,} calls",
        "procs": f"{args.procs} processes x {args.proc_calls:,} calls",
    }
    for plan in plans:
        for workload in workloads:
            min_requests, min_seconds = physical_minimum(args, plan, workload)
            for name in clients:
                results = runs[(plan, workload, name)]
                walls = [r["wall"] for r in results]
                median = statistics.median(walls)
                requests = statistics.median(r["requests"] for r in results)
                rows.append(
                    [
                        f"{plan} / {labels[workload]}",
                        name,
                        f"{median:.2f} ({min(walls):.2f}-{max(walls):.2f})",
                        f"{requests:g}",
                        sum(r["limit_errors"] for r in results),
                        sum(r["surfaced"] for r in results),
                        f"{sum(r['same_items'] for r in results)}/{sum(r['processes'] for r in results)}"
                        f" ({sum(r['correct'] for r in results)} in order)",
                        f"{statistics.median(r['cpu'] for r in results):.2f}",
                        f"{requests / min_requests:.2f} x {min_requests}",
                        f"{median / min_seconds:.2f} x {min_seconds:.1f} s" if min_seconds else "- (0 s)",
                    ]
                )
    return common.table(
        rows,
        [
            "plan / workload",
            "client",
            "wall s median (range)",
            "requests",
            "503 seen",
            "errors surfaced",
            "correct (in order)",
            "client CPU s",
            "requests / minimum",
            "time / minimum",
        ],
    )


if __name__ == "__main__":
    main()
