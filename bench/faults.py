"""Faults around token rotation, one scenario after the other, with the figures that say "nothing lost".

Run: .venv/bin/python bench/faults.py [--portals 40] [--scenarios late,sigterm,sigkill,secret,slow_oauth]

Scenarios (PostgreSQL bench database, the stand-in, `manage.py refresh_tokens` and gunicorn as in
production; bench.settings):
  late        the OAuth server rotates at once and answers 2 s later, above B24_READ_TIMEOUT=1: refresh_tokens
              over every portal (the refresh has its own deadline, B24_OAUTH_DEADLINE)
  sigterm     refresh_tokens over every portal with a slow OAuth server, SIGTERM after 1 s
  sigkill     the same with SIGKILL while answers are late
  secret      refresh_tokens with a wrong B24_CLIENT_SECRET
  slow_oauth  gunicorn; the OAuth server takes 20 s per refresh; 40 install POSTs for one portal arrive at
              once while /healthz and another portal's verified (cached) open are probed
Printed per scenario: portals blocked, tokens lost (stored refresh tokens the OAuth server no longer
knows), OAuth requests, requests answered and their p99, exit status, wall time. Nothing asserts a time.
"""

import argparse
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as common


def _lost(standin, member_ids):
    from portals.models import Portal

    live = set(standin._refresh)
    rows = Portal.objects.filter(member_id__in=member_ids)
    return sum(1 for p in rows if p.refresh_token not in live)


def _blocked(member_ids):
    from portals.models import Portal

    return Portal.objects.filter(member_id__in=member_ids, status=Portal.Status.BLOCKED).count()


def _install_portals(standin, count):
    """`count` stand-in portals installed through the app's own install path (in-process), due for a refresh."""
    from datetime import timedelta

    from django.test import Client
    from django.utils import timezone

    from portals.models import Portal

    client, members = Client(), []
    for _ in range(count):
        b24 = standin.add_portal()
        response = client.post("/install/", b24.install_post())
        assert response.status_code == 200, response.content[:300]
        members.append(b24.member_id)
    Portal.objects.filter(member_id__in=members).update(refresh_renewed_at=timezone.now() - timedelta(days=160))
    return members


def _command(extra_env, *args):
    env = {**os.environ, **extra_env}
    return subprocess.Popen(
        [common.PYTHON, "manage.py", "refresh_tokens", "--workers", "4", *args],
        cwd=common.ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_command_scenario(standin, name, members, *, env=None, late=0.0, delay=0.0, stop=None):
    standin.oauth_late, standin.oauth_delay = late, delay
    before = len(standin.oauth_requests)
    started = time.monotonic()
    proc = _command(env or {})
    if stop is not None:
        time.sleep(1.0)
        proc.send_signal(stop)
    out, err = proc.communicate(timeout=600)
    elapsed = time.monotonic() - started
    standin.oauth_late = standin.oauth_delay = 0.0
    summary = next((line for line in reversed(out.splitlines()) if "failed=" in line), "")
    return [
        name,
        len(members),
        _blocked(members),
        _lost(standin, members),
        len(standin.oauth_requests) - before,
        proc.returncode,
        f"{elapsed:.1f}",
        summary or (err.strip().splitlines() or ["(killed)"])[-1][:90],
    ]


def _post(port, path, fields, timeout=60.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(
            "POST", path, body=urlencode(fields), headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def slow_oauth(standin):
    from bench.widget_open import Gunicorn, install_through_the_server

    target, other = standin.add_portal(), standin.add_portal()
    port = common.free_port()
    with Gunicorn(port, {}) as server:
        for b24 in (target, other):
            install_through_the_server(server.base, b24)
        verified = other.placement_post(user_id="2")
        assert _post(port, "/placement/", verified) == 200
        standin.oauth_delay = 20.0
        probes, stop, statuses, lock = [], threading.Event(), Counter(), threading.Lock()

        def probe():
            while not stop.is_set():
                for kind, call in (
                    ("healthz", lambda: _get(port)),
                    ("verified open", lambda: _post(port, "/placement/", verified)),
                ):
                    t0 = time.monotonic()
                    try:
                        status = call()
                    except OSError as exc:
                        status = type(exc).__name__
                    probes.append((kind, status, time.monotonic() - t0))
                time.sleep(0.1)

        def install():
            try:
                status = _post(port, "/install/", target.install_post())
            except OSError as exc:
                status = type(exc).__name__
            with lock:
                statuses[status] += 1

        prober = threading.Thread(target=probe)
        prober.start()
        started = time.monotonic()
        installs = [threading.Thread(target=install) for _ in range(40)]
        for t in installs:
            t.start()
        for t in installs:
            t.join()
        elapsed = time.monotonic() - started
        stop.set()
        prober.join()
        standin.oauth_delay = 0.0
    rows = []
    for kind in ("healthz", "verified open"):
        times = [t for k, _s, t in probes if k == kind]
        bad = sum(1 for k, s, _t in probes if k == kind and s != 200)
        rows.append(
            [kind, len(times), bad, common.ms(common.percentile(times, 50)), common.ms(common.percentile(times, 99))]
        )
    return statuses, elapsed, rows


def _get(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/healthz", headers={"Host": "localhost"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--portals", type=int, default=40)
    parser.add_argument("--scenarios", default="late,sigterm,sigkill,secret,slow_oauth")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    wanted = set(args.scenarios.split(","))

    with common.standin() as standin:
        common.setup_django(oauth_url=standin.oauth_url)
        with common.bench_database(keep=args.keep_db), common.bench_cache():
            common.print_header("faults: token rotation under failures")
            rows = []
            if "late" in wanted:
                members = _install_portals(standin, args.portals)
                rows.append(
                    run_command_scenario(
                        standin,
                        "late answer (2 s > read timeout 1 s)",
                        members,
                        env={"B24_READ_TIMEOUT": "1"},
                        late=2.0,
                    )
                )
            if "sigterm" in wanted:
                members = _install_portals(standin, args.portals)
                rows.append(run_command_scenario(standin, "SIGTERM after 1 s", members, delay=0.3, stop=signal.SIGTERM))
            if "sigkill" in wanted:
                members = _install_portals(standin, args.portals)
                rows.append(
                    run_command_scenario(
                        standin, "SIGKILL after 1 s (answers late)", members, late=0.3, stop=signal.SIGKILL
                    )
                )
            if "secret" in wanted:
                members = _install_portals(standin, args.portals)
                rows.append(
                    run_command_scenario(
                        standin, "wrong client secret", members, env={"B24_CLIENT_SECRET": "not-the-secret"}
                    )
                )
            if rows:
                print(
                    common.table(
                        rows,
                        [
                            "scenario",
                            "portals",
                            "blocked",
                            "tokens lost",
                            "OAuth requests",
                            "exit",
                            "seconds",
                            "summary / last line",
                        ],
                    )
                )
            if "slow_oauth" in wanted:
                statuses, elapsed, probe_rows = slow_oauth(standin)
                print(
                    f"\nslow OAuth server (20 s per refresh): 40 install POSTs for one portal at once -> "
                    f"{dict(statuses)} in {elapsed:.1f} s (unverified OAuth: one in flight per portal, "
                    f"B24_UNVERIFIED_OAUTH_CONCURRENCY per process, B24_UNVERIFIED_OAUTH_DEADLINE each)"
                )
                print(common.table(probe_rows, ["probe during it", "answered", "not 200", "p50 ms", "p99 ms"]))


if __name__ == "__main__":
    main()
