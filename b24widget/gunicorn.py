"""gunicorn settings: `gunicorn -c python:b24widget.gunicorn b24widget.wsgi`. Each value can be overridden
from the environment (GUNICORN_CMD_ARGS, or the variables read below).

Capacity: every gthread thread may hold one database connection (CONN_MAX_AGE keeps them open), so
workers x threads is bounded by DB_CONNECTION_BUDGET, the share of PostgreSQL's max_connections this
web replica may use. Worked example (README, "Capacity"): max_connections 100, 10 kept for
superusers and maintenance, 2 web replicas and 1 Celery worker host of 8 processes -> (100 - 10 - 8) / 2
= 41 per web replica; with 4 threads that allows 10 workers, whatever the core count says.
"""

import multiprocessing
import os
import subprocess
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "b24widget.settings")  # before the app's modules

from django.conf import settings
from django.utils.functional import empty

from b24widget import metrics
from b24widget.config import web_capacity


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, not {value!r}") from None


bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
try:
    workers, threads, connection_budget = web_capacity(os.environ, multiprocessing.cpu_count())
except ValueError as exc:
    raise SystemExit(str(exc)) from None
if workers * threads > connection_budget:
    raise SystemExit(
        f"GUNICORN_WORKERS x GUNICORN_THREADS = {workers * threads} exceeds DB_CONNECTION_BUDGET = "
        f"{connection_budget} (each thread may hold a database connection); lower one of them or "
        "raise the budget"
    )
worker_class = "gthread"  # widget opens wait on Bitrix24 on a cache miss: threads keep workers responsive
timeout = _int("GUNICORN_TIMEOUT", 60)
graceful_timeout = 30
keepalive = 5
# Recycle workers rarely (a guard against slow leaks): each restart imports Django again.
max_requests = _int("GUNICORN_MAX_REQUESTS", 20000)
max_requests_jitter = 2000
# Import the app once in the master; workers fork with it loaded (faster starts and restarts). A HUP then
# restarts the workers with the code the master loaded: where deploys reload gunicorn in place (systemd's
# `systemctl reload`, README "Zero-downtime restarts") set GUNICORN_PRELOAD=false, so that each new worker
# imports the new release (and checks its settings) while the old ones finish their requests.
_preload = os.environ.get("GUNICORN_PRELOAD", "true").strip().lower()
if _preload not in ("true", "false"):
    raise SystemExit(f"GUNICORN_PRELOAD must be true or false, not {_preload!r}")
preload_app = _preload == "true"
# Behind a TLS-terminating proxy: trust its X-Forwarded-* headers (restrict with FORWARDED_ALLOW_IPS).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# One log stream: gunicorn's error and access lines go through the app's LOGGING (JSON in production),
# an access line as a record with method, path, status, bytes and duration_ms; never the query string
# (it may carry a portal's fields). b24widget/gunicornlog.py.
logger_class = "b24widget.gunicornlog.JsonLogger"
accesslog = "-"
errorlog = "-"
# gunicorn's control socket (gunicornc, 25.1+) defaults to one path per user ($XDG_RUNTIME_DIR/gunicorn.ctl or
# ~/.gunicorn/gunicorn.ctl): a second instance on the host takes it over from the first. Off unless
# GUNICORN_CONTROL_SOCKET names a path of this instance's own; reloads and stops use signals (README).
_control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "")
if _control_socket:
    control_socket = _control_socket
else:
    control_socket_disable = True


# Prometheus multiprocess mode (b24widget/metrics.py): each worker writes its counters into
# PROMETHEUS_MULTIPROC_DIR, the web's own folder (the Celery worker keeps another). The folder must start
# empty (old files would add last run's counts), and a worker that exits is marked dead so that its files
# are merged, not double counted.
def on_starting(server):
    metrics.empty_multiprocess_folder()
    if not preload_app:
        # Without preloading, each worker would refuse bad settings on its own and gunicorn would start it
        # again, forever: the settings are checked once before any worker (one message, exit 1), in a
        # process of their own, so that this master keeps no module of the app (see post_fork).
        checked = subprocess.run([sys.executable, "-c", "import b24widget.wsgi"], stdin=subprocess.DEVNULL)
        if checked.returncode:
            raise SystemExit(checked.returncode)


# The app's own packages (and the settings module's): what a worker imports afresh after a reload (post_fork).
_OWN_PACKAGES = ("b24widget", "portals", "placements", "openlines", "inbox", "bitrix24", "vault", "sandbox")


def post_fork(server, worker):
    """Without preloading, a HUP's new workers must run the release now on disk. This master imported a few
    of the app's modules for its configuration and logs (b24widget's package, settings, metrics, logging),
    which a fork would hand down as they were at start: each worker drops them and Django's settings,
    so the app, the settings included, is imported from the files as they are now. Kept: this module and
    b24widget.metrics, whose series prometheus_client registers once per process (a change to it wants a
    restart)."""
    if preload_app:
        return
    kept = {__name__, metrics.__name__}
    roots = {*_OWN_PACKAGES, os.environ["DJANGO_SETTINGS_MODULE"].split(".", 1)[0]}
    for name in [n for n in sys.modules if n.split(".", 1)[0] in roots and n not in kept]:
        del sys.modules[name]
    settings._wrapped = empty


def child_exit(server, worker):
    metrics.mark_process_dead(worker.pid)
