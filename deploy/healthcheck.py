"""The image's HEALTHCHECK: GET /healthz from the web process in this container; exit 0 when it answers 200.

Like every URL, /healthz answers only to a Host in ALLOWED_HOSTS (README, Production deployment), so the
probe sends the first concrete one. A worker or beat container (same image, no web server) is healthy
while its process runs: there is nothing here to probe.
"""

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    try:
        with open("/proc/1/cmdline", "rb") as cmdline:
            if b"gunicorn" not in cmdline.read():
                return 0
    except OSError:
        pass
    bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000").split(",")[0].strip()
    if bind.startswith("unix:"):
        return 0
    port = bind.rsplit(":", 1)[-1] if ":" in bind else "8000"
    hosts = [h.strip().lstrip(".") for h in os.environ.get("ALLOWED_HOSTS", "").split(",")]
    host = next((h for h in hosts if h and "*" not in h), "localhost")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/healthz", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=8) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"/healthz: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
