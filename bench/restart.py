"""A web restart under a steady stream of requests: gunicorn's graceful reload (HUP, what `systemctl reload`
does with the README's unit) against a stop and start (what `systemctl restart` does). Prints, for each,
the requests answered, refused (connection refused or reset), answered with something other than Django's
own 404, and the latency percentiles overall and in the second after the signal.

    .venv/bin/python bench/restart.py [--clients 8] [--seconds 12]

Needs no database or cache: the requests go to an address no URL matches (Django answers 404 without a
query), so what is measured is the server's hand-over, not the app.
"""

import argparse
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import _env  # noqa: E402
from bench._common import free_port, ms, percentile  # noqa: E402


def _get(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/bench-nothing-here/", headers={"Host": "localhost"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _start(env: dict, port: int, log) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:b24widget.gunicorn", "b24widget.wsgi"],
        cwd=ROOT,
        env={**env, "GUNICORN_BIND": f"127.0.0.1:{port}"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            _get(port)
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("gunicorn did not start") from None
            time.sleep(0.1)


def run(mode: str, clients: int, seconds: float) -> dict:
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="b24bench-restart-"))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "DATABASE_URL": f"sqlite:///{folder / 'bench.sqlite3'}",
        "CACHE_URL": "locmemcache://b24bench-restart",
        "LOG_LEVEL": "WARNING",
        "GUNICORN_WORKERS": "2",
        "GUNICORN_THREADS": "4",
        "GUNICORN_PRELOAD": "false",
    }
    log = open(folder / "gunicorn.log", "wb")  # noqa: SIM115 (open for the processes' lifetimes)
    process = _start(env, port, log)
    samples: list[tuple[float, float, object]] = []  # (start, seconds, status or error)
    stop = threading.Event()

    def client():
        while not stop.is_set():
            started = time.monotonic()
            try:
                status: object = _get(port)
            except OSError as exc:
                status = type(exc).__name__
                time.sleep(0.01)
            samples.append((started, time.monotonic() - started, status))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(seconds / 3)
    signalled = time.monotonic()
    if mode == "reload (HUP)":
        process.send_signal(signal.SIGHUP)
    else:  # stop, then start: a restart
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        process = _start(env, port, log)
    time.sleep(seconds * 2 / 3)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    log.close()
    answered = [s for s in samples if isinstance(s[2], int)]
    window = [s[1] for s in answered if signalled <= s[0] < signalled + 1.0]
    return {
        "requests": len(samples),
        "refused": sum(1 for s in samples if not isinstance(s[2], int)),
        "not 404": sum(1 for s in answered if s[2] != 404),
        "p50": percentile([s[1] for s in answered], 50),
        "p99": percentile([s[1] for s in answered], 99),
        "max": max(s[1] for s in answered),
        "max in the second after": max(window) if window else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    _env.apply()
    print(f"gunicorn 2 workers x 4 threads, {args.clients} clients, {args.seconds:.0f} s, signal at 1/3")
    for mode in ("reload (HUP)", "stop and start"):
        r = run(mode, args.clients, args.seconds)
        print(
            f"{mode:14}  requests {r['requests']:6}  refused {r['refused']:4}  not 404 {r['not 404']:3}  "
            f"p50 {ms(r['p50'])}  p99 {ms(r['p99'])}  max {ms(r['max'])}  "
            f"max within 1 s of the signal {ms(r['max in the second after'])}"
        )


if __name__ == "__main__":
    main()
