"""A small HTTP load generator, the fallback when wrk is not installed (bench/widget_open.py --loadgen python).

Run as its own process: `python bench/_loadgen.py URL BODY_FILE CONNECTIONS SECONDS PROCESSES`. Keep-alive
connections (http.client), spread over PROCESSES processes with one thread per connection; prints the
same `BENCH_JSON {...}` line as bench/wrk_post.lua. Python is a far heavier client than wrk: on a small
machine it takes CPU from the server, so its figures are lower than wrk's.
"""

import http.client
import json
import multiprocessing
import sys
import threading
import time
from urllib.parse import urlsplit


def _worker(url, body, connections, seconds, queue):
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    deadline = time.perf_counter() + seconds
    latencies, errors = [], {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    lock = threading.Lock()

    def loop():
        mine, bad = [], dict.fromkeys(errors, 0)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                conn.request("POST", target, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
            except OSError:
                bad["read"] += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
                continue
            mine.append((time.perf_counter() - started) * 1e6)
            if response.status >= 400:
                bad["status"] += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            for k, v in bad.items():
                errors[k] += v

    threads = [threading.Thread(target=loop) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put((latencies, errors))


def main():
    url, body_file, connections, seconds, processes = sys.argv[1:6]
    connections, seconds, processes = int(connections), float(seconds), max(1, int(processes))
    with open(body_file, "rb") as handle:
        body = handle.read()
    queue = multiprocessing.Queue()
    shares = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    started = time.perf_counter()
    procs = [multiprocessing.Process(target=_worker, args=(url, body, n, seconds, queue)) for n in shares if n]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    duration = time.perf_counter() - started
    latencies = sorted(latency for part, _ in results for latency in part)
    errors = {k: sum(e[k] for _, e in results) for k in results[0][1]}

    def pct(q):
        return int(latencies[min(len(latencies) - 1, int(q / 100 * len(latencies)))]) if latencies else 0

    print(
        "BENCH_JSON "
        + json.dumps(
            {
                "requests": len(latencies),
                "duration_us": int(duration * 1e6),
                "errors": errors,
                "latency_us": {
                    "mean": sum(latencies) / len(latencies) if latencies else 0,
                    "p50": pct(50),
                    "p90": pct(90),
                    "p99": pct(99),
                    "max": int(latencies[-1]) if latencies else 0,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
