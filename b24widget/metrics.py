"""The `/metrics` endpoint for operators (prometheus_client), and the seam apps register collectors through.

Each app defines its own series where it counts them (bitrix24/metrics.py: REST calls and limits;
portals/tokens.py: refresh failures; placements/metrics.py: widget opens), on prometheus_client's
default registry; collectors that read shared state at scrape time are named in
settings.METRICS_COLLECTORS (a collector yields nothing while its source is down). Under gunicorn's
several worker processes, set PROMETHEUS_MULTIPROC_DIR (an empty folder, wiped at start by
b24widget/gunicorn.py): each process then writes its counters there and `/metrics` adds them up
(prometheus_client's multiprocess mode). `/metrics` is not public: without METRICS_TOKEN it does not
exist (404); with it, it answers only to `Authorization: Bearer <METRICS_TOKEN>` (403 otherwise).

Each process type keeps its own PROMETHEUS_MULTIPROC_DIR (Prometheus' guidance: a multiprocess folder per
application server, wiped when it starts): the web's gunicorn wipes its folder at start, so a folder shared
with the worker would lose the worker's counters at every web restart. A Celery worker serves its own
series on WORKER_METRICS_PORT (`serve_worker_metrics`, same bearer token); Prometheus scrapes both.

The project's own series: requests by view (`RequestMetrics`, a middleware that labels with the resolved
URL name, never the path) and Celery tasks by task name (b24widget/celery.py connects the task signals
to `task_started`, `task_finished`, `task_failed`, `task_retried`).
"""

import hmac
import os
import threading
import time
from functools import lru_cache
from wsgiref.simple_server import WSGIRequestHandler, make_server

from django.conf import settings
from django.http import Http404, HttpResponse, HttpResponseForbidden
from django.utils.module_loading import import_string
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import ThreadingWSGIServer

# --- the project's series ---------------------------------------------------------------------------
# Seconds; a web request is bounded by B24_REQUEST_DEADLINE (15 s), a task by its deadlines (minutes).
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUESTS = Counter(
    "b24widget_http_requests",
    "HTTP requests answered, by view (URL name), method and status.",
    ["view", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "b24widget_http_request_duration_seconds", "Time to answer a request, by view.", ["view"], buckets=_REQUEST_BUCKETS
)
TASKS = Counter("b24widget_celery_tasks", "Celery task runs finished (any outcome), by task.", ["task"])
TASK_FAILURES = Counter("b24widget_celery_task_failures", "Celery task runs that raised, by task.", ["task"])
TASK_RETRIES = Counter("b24widget_celery_task_retries", "Celery task runs that asked to be retried, by task.", ["task"])
TASK_SECONDS = Histogram(
    "b24widget_celery_task_duration_seconds", "Time a Celery task run took, by task.", ["task"], buckets=_TASK_BUCKETS
)


@lru_cache(maxsize=1)
def _collectors() -> CollectorRegistry:
    """The collectors named in settings.METRICS_COLLECTORS (dotted paths of classes whose figures are read
    at each scrape, e.g. the inbox's backlog from the database), in a registry of their own: in
    multiprocess mode the default registry is not what is served. This module imports no app."""
    registry = CollectorRegistry(auto_describe=False)
    for path in settings.METRICS_COLLECTORS:
        registry.register(import_string(path)())
    return registry


def _registry():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # every worker's counters, added up
        return registry
    return REGISTRY


@never_cache
@require_GET
def metrics_view(request):
    token = getattr(settings, "METRICS_TOKEN", "")
    if not token:
        raise Http404()
    offered = request.headers.get("Authorization", "")
    expected = f"Bearer {token}"
    if not hmac.compare_digest(offered.encode(), expected.encode()):
        return HttpResponseForbidden("a valid bearer token is required\n", content_type="text/plain")
    return HttpResponse(generate_latest(_registry()) + generate_latest(_collectors()), content_type=CONTENT_TYPE_LATEST)


def empty_multiprocess_folder() -> None:
    """At a process type's start (gunicorn's master, a Celery worker's main process): last run's files would
    add last run's counts. Only this process type's folder: another's is not ours to wipe."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            if name.endswith(".db"):
                os.remove(os.path.join(folder, name))


def mark_process_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the stdlib's name); scrapes are not log lines
        pass


def _worker_app(environ, start_response):
    token = settings.METRICS_TOKEN
    offered = environ.get("HTTP_AUTHORIZATION", "")
    if environ.get("PATH_INFO") != "/metrics" or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    if not hmac.compare_digest(offered.encode(), f"Bearer {token}".encode()):
        start_response("403 Forbidden", [("Content-Type", "text/plain")])
        return [b"a valid bearer token is required\n"]
    start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Cache-Control", "no-store")])
    return [generate_latest(_registry())]


def serve_worker_metrics() -> ThreadingWSGIServer | None:
    """A Celery worker's own `/metrics` (its task series), in a thread of its main process; only with
    METRICS_TOKEN and WORKER_METRICS_PORT set. The database-backed collectors stay on the web's endpoint."""
    port = settings.WORKER_METRICS_PORT
    if not (port and settings.METRICS_TOKEN):
        return None
    server = make_server(
        settings.WORKER_METRICS_ADDRESS, port, _worker_app, ThreadingWSGIServer, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
    return server


class RequestMetrics:
    """Middleware (first in MIDDLEWARE): counts and times every request by the view that answered it.

    The label is the resolved URL's name (`resolver_match.view_name`: `placement`, `admin:index`, or the
    view's dotted path for an unnamed URL), `unmatched` when no URL matched: never the raw path, so a
    stranger's made-up addresses cannot grow the series.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        view = match.view_name if match is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        REQUESTS.labels(view, method, str(response.status_code)).inc()
        REQUEST_SECONDS.labels(view).observe(time.perf_counter() - started)
        return response


# --- Celery tasks (b24widget/celery.py connects these to the task signals) ---------------------------
_started: dict[str, float] = {}


def task_started(task_id: str) -> None:
    _started[task_id] = time.perf_counter()


def task_finished(task_id: str, task_name: str) -> None:
    TASKS.labels(task_name).inc()
    started = _started.pop(task_id, None)
    if started is not None:
        TASK_SECONDS.labels(task_name).observe(time.perf_counter() - started)


def task_failed(task_name: str) -> None:
    TASK_FAILURES.labels(task_name).inc()


def task_retried(task_name: str) -> None:
    TASK_RETRIES.labels(task_name).inc()
