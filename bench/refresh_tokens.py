"""`manage.py refresh_tokens` over 10,000 due portals against the stand-in: one copy, then two at once.

Run: .venv/bin/python bench/refresh_tokens.py [--portals 10000] [--fresh 1000] [--copies 2] [-- <command options>]

Setup: 10,000 portals whose refresh token was renewed 160 days ago (due: the command's default is
older than 150 days) plus --fresh portals renewed 10 days ago (not due), stored through bulk_create
with tokens the stand-in minted. The stand-in has no bulk API and a portal server per portal is far
too heavy for 10,000 (see add_virtual_portals in bench/_common.py): the portals share one stand-in
portal's address and are complete at its OAuth server, which is all a refresh talks to.

1. One copy of `manage.py refresh_tokens` (a separate process, bench.settings, B24_OAUTH_URL at the
   stand-in): wall time, the command's summary, and the OAuth requests the stand-in received (they
   must equal the portals due: both are printed).
2. The same portals made due again, and --copies copies started at once as separate processes: wall
   time, each copy's summary, OAuth requests, and whether any portal was refreshed twice: requests
   per refresh token and per portal (stand-in side), TOKEN_REFRESHED events per portal (database side).
Options after `--` go to every copy (e.g. `-- --workers 8 --batch-size 200`). Command output:
test-artifacts/bench/refresh_tokens/.
"""

import argparse
import os
import re
import secrets
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as common

LOGS = common.ARTIFACTS / "refresh_tokens"


def store_portals(virtual: list, *, renewed_days_ago: int) -> list[int]:
    """Bulk-create the app's Portal rows for stand-in portals (as a completed install leaves them)."""
    from django.utils import timezone

    from portals.models import Portal

    now = timezone.now()
    rows = []
    for b24, tokens in virtual:
        rows.append(
            Portal(
                member_id=b24.member_id,
                domain=b24.domain,
                client_endpoint=b24.client_endpoint,
                server_endpoint=b24._standin.server_endpoint,
                status=Portal.Status.ACTIVE,
                app_status=b24.app_status,
                scope=b24.scope,
                language="en",
                installed_by="1",
                app_version="1",
                access_token=tokens["access_token"],
                refresh_token=tokens["refresh_token"],
                application_token=secrets.token_hex(16),
                access_expires_at=now + timedelta(seconds=tokens["expires_in"]),
                refresh_renewed_at=now - timedelta(days=renewed_days_ago),
                created_at=now - timedelta(days=renewed_days_ago),
                installed_at=now - timedelta(days=renewed_days_ago),
            )
        )
    return [p.pk for p in Portal.objects.bulk_create(rows, batch_size=1000)]


def stored_refresh_tokens(pks) -> dict:
    """refresh token -> member_id, as stored now (decrypted)."""
    from portals.models import Portal

    return {
        p.refresh_token: p.member_id
        for p in Portal.objects.filter(pk__in=pks).only("member_id", "refresh_token").iterator(chunk_size=2000)
    }


def start_copy(name: str, extra_args: list[str]) -> tuple:
    LOGS.mkdir(parents=True, exist_ok=True)
    command = [common.PYTHON, "manage.py", "refresh_tokens", *extra_args]
    # The copy writes to its own copies of the descriptors: ours are closed once it has started.
    with open(LOGS / f"{name}.out", "w") as out, open(LOGS / f"{name}.err", "w") as err:
        process = subprocess.Popen(
            command,
            cwd=common.ROOT,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "bench.settings"},
            stdout=out,
            stderr=err,
        )
    return name, process, common.time.perf_counter()


def finish_copy(copy) -> dict:
    name, process, started = copy
    process.wait()
    seconds = common.time.perf_counter() - started
    text = (LOGS / f"{name}.out").read_text()
    lines = [line for line in text.splitlines() if "failed=" in line and not line.startswith("progress")]
    summary = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])} if lines else {}
    if process.returncode != 0 or not summary:
        tail = "\n".join((LOGS / f"{name}.err").read_text().splitlines()[-20:])
        raise SystemExit(f"{name}: manage.py refresh_tokens exited with {process.returncode}\n{text[-2000:]}\n{tail}")
    due_line = next((line for line in text.splitlines() if line.startswith("due:")), "")
    return {"name": name, "seconds": seconds, "summary": summary, "due_line": due_line}


def analyze(requests: list[dict], tokens: dict, due_members: set, phase_start) -> dict:
    """Who was refreshed how often: by the stand-in's log of OAuth requests and by the database."""
    from django.db.models import Count

    from portals.models import Portal, PortalEvent

    per_token = Counter(r.get("refresh_token") for r in requests)
    per_member = Counter(tokens.get(r.get("refresh_token"), "?") for r in requests)
    unknown = per_member.pop("?", 0)  # a token not stored at the start: a portal's second refresh
    events = Counter(
        row["n"]
        for row in PortalEvent.objects.filter(kind=PortalEvent.Kind.TOKEN_REFRESHED, created_at__gte=phase_start)
        .values("portal_id")
        .annotate(n=Count("id"))
    )
    return {
        "requests": len(requests),
        "tokens_used_twice": sum(1 for n in per_token.values() if n > 1),
        "portals_by_requests": Counter(per_member.values()),
        "unknown_tokens": unknown,
        "not_due_touched": sum(1 for member in per_member if member not in due_members),
        "due_missed": len(due_members - set(per_member)),
        "portals_by_events": events,
        "blocked": Portal.objects.filter(status=Portal.Status.BLOCKED).count(),
    }


def report(facts: dict, due: int) -> None:
    by_requests = ", ".join(f"{n} portal(s) x{k}" for k, n in sorted(facts["portals_by_requests"].items()))
    by_events = ", ".join(f"{n} portal(s) x{k}" for k, n in sorted(facts["portals_by_events"].items()))
    print(f"  OAuth refresh requests made: {facts['requests']}   portals due: {due}")
    print(
        f"  stand-in side: requests per portal: {by_requests or 'none'}; refresh tokens presented more than once: "
        f"{facts['tokens_used_twice']}; tokens not stored at the start (a second refresh): {facts['unknown_tokens']}; "
        f"not-due portals refreshed: {facts['not_due_touched']}; due portals missed: {facts['due_missed']}"
    )
    print(
        f"  database side: TOKEN_REFRESHED events per portal: {by_events or 'none'}; "
        f"portals blocked: {facts['blocked']}"
    )


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--portals", type=int, default=10_000, help="due portals (default 10,000)")
    parser.add_argument("--fresh", type=int, default=1_000, help="portals not due, left alone (default 1,000)")
    parser.add_argument("--copies", type=int, default=2, help="copies run at once in phase 2 (default 2)")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the bench database afterwards")
    args = parser.parse_args(argv)
    command_args = ["--progress-every", "1000", *extra]

    os.environ.setdefault("LOG_LEVEL", "WARNING")  # this process's log; the copies log as configured
    with common.standin() as standin:
        common.setup_django(oauth_url=standin.oauth_url)
        from django.core.management import get_commands
        from django.utils import timezone

        from portals.models import Portal

        if "refresh_tokens" not in get_commands():
            raise SystemExit("portals/management/commands/refresh_tokens.py does not exist (yet)")

        with common.bench_database(keep=args.keep_db), common.bench_cache():
            common.print_header(
                f"refresh_tokens: manage.py refresh_tokens over {args.portals:,} due portals against the stand-in"
            )
            os.environ["LOG_LEVEL"] = os.environ.get("BENCH_COMMAND_LOG_LEVEL", "INFO")  # the copies' log level
            anchor = standin.add_portal()  # a real portal server: the address the virtual portals share
            with common.Timer() as made:
                due_virtual = common.add_virtual_portals(standin, args.portals, address=anchor.domain)
                fresh_virtual = common.add_virtual_portals(standin, args.fresh, address=anchor.domain)
                due_pks = store_portals(due_virtual, renewed_days_ago=160)
                fresh_pks = store_portals(fresh_virtual, renewed_days_ago=10)
            due_members = {b24.member_id for b24, _ in due_virtual}
            print(
                f"setup: {args.portals:,} due + {args.fresh:,} fresh portals (stand-in tokens minted, rows "
                f"bulk-created) in {made.seconds:.1f} s"
            )
            print(
                f"command: manage.py refresh_tokens {' '.join(command_args)}  (its defaults otherwise: "
                "--older-than-days 150, --workers 4, --batch-size 100)"
            )
            sys.stdout.flush()

            # 1. one copy
            tokens = stored_refresh_tokens(due_pks + fresh_pks)
            before, phase_start = len(standin.oauth_requests), timezone.now()
            with common.CpuClock() as clock, common.PostgresBackendCpu() as postgres:
                one = finish_copy(start_copy("single", command_args))
            facts = analyze(standin.oauth_requests[before:], tokens, due_members, phase_start)
            print(
                f"\n1. one copy: wall {one['seconds']:.1f} s ({args.portals / one['seconds']:.0f} portals/s), "
                f"process start to exit"
            )
            print(f"  {one['due_line']}")
            print(f"  summary: {' '.join(f'{k}={v}' for k, v in one['summary'].items())}")
            report(facts, args.portals)
            print(f"  {clock.describe('the command', postgres.seconds)}")
            print(
                f"  per portal: command {clock.children / args.portals * 1000:.1f} ms CPU, PostgreSQL "
                f"{postgres.seconds / args.portals * 1000:.1f} ms, stand-in {clock.self / args.portals * 1000:.1f} ms"
            )
            sys.stdout.flush()

            # 2. copies at once, over the same portals made due again
            Portal.objects.filter(pk__in=due_pks).update(refresh_renewed_at=timezone.now() - timedelta(days=160))
            tokens = stored_refresh_tokens(due_pks + fresh_pks)
            before, phase_start = len(standin.oauth_requests), timezone.now()
            with common.Timer() as together, common.CpuClock() as clock, common.PostgresBackendCpu() as postgres:
                copies = [start_copy(f"copy{n}", command_args) for n in range(1, args.copies + 1)]
                results = [finish_copy(copy) for copy in copies]
            facts = analyze(standin.oauth_requests[before:], tokens, due_members, phase_start)
            print(
                f"\n2. {args.copies} copies at once: wall {together.seconds:.1f} s "
                f"({args.portals / together.seconds:.0f} portals/s)"
            )
            for result in results:
                print(
                    f"  {result['name']}: {result['seconds']:.1f} s; "
                    f"{' '.join(f'{k}={v}' for k, v in result['summary'].items())}"
                )
            total = Counter()
            for result in results:
                total.update(result["summary"])
            print(
                f"  together: refreshed={total['refreshed']} skipped={total['skipped']} blocked={total['blocked']} "
                f"failed={total['failed']}"
            )
            report(facts, args.portals)
            print(f"  {clock.describe('the copies', postgres.seconds)}")
            if standin.errors:
                print(f"stand-in errors: {len(standin.errors)}")


if __name__ == "__main__":
    main()
