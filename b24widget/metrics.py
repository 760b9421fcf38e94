"""Prometheus metrics for operators (prometheus_client), and the `/metrics` endpoint that serves them.

The product code calls the one-line hooks below (`metrics.rest_call(method)` ...). Under gunicorn's
several worker processes, set PROMETHEUS_MULTIPROC_DIR (an empty folder, wiped at start by
b24widget/gunicorn.py): each process then writes its counters there and `/metrics` adds them up
(prometheus_client's multiprocess mode). `/metrics` is not public: without METRICS_TOKEN it does not
exist (404); with it, it answers only to `Authorization: Bearer <METRICS_TOKEN>` (403 otherwise).
"""
import hmac
import os
import re
import threading

from django.conf import settings
from django.http import Http404, HttpResponse, HttpResponseForbidden
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest, multiprocess
from prometheus_client import REGISTRY

WIDGET_OPENS = Counter("b24widget_widget_opens", "Widget opens, by result: shown, or the refusal's reason.",
                       ["result"])
VERIFICATIONS = Counter("b24widget_verifications", "Widget opens' user checks: from the verdict cache, or "
                        "asked of Bitrix24.", ["source"])
REST_CALLS = Counter("b24widget_rest_calls", "REST requests sent to portals, by method.", ["method"])
LIMIT_WAITS = Counter("b24widget_limit_waits", "REST calls that waited for a Bitrix24 limit, by limit and method.",
                      ["limit", "method"])
LIMIT_WAIT_SECONDS = Counter("b24widget_limit_wait_seconds", "Seconds REST calls waited for limits, by method.",
                             ["method"])
LIMIT_ANSWERS = Counter("b24widget_limit_answers", "Limit errors Bitrix24 answered (the client slows down and "
                        "retries them), by code.", ["code"])
REFRESH_FAILURES = Counter("b24widget_token_refresh_failures", "Failed token refreshes, by OAuth error code.",
                           ["code"])

_LABEL = re.compile(r"[^A-Za-z0-9_.:-]")
_current = threading.local()  # the REST method being sent on this thread (for the limiter's waits)


def _label(value) -> str:
    """Label values from outside (error codes) stay short and tame: a label never explodes the series."""
    return _LABEL.sub("_", str(value or "none"))[:48]


def widget_open(result: str) -> None:
    WIDGET_OPENS.labels(_label(result)).inc()


def verification(*, cached: bool) -> None:
    VERIFICATIONS.labels("cache" if cached else "bitrix24").inc()


def rest_call(method: str) -> None:
    _current.method = _label(method)
    REST_CALLS.labels(_current.method).inc()


def limit_wait(limit: str, seconds: float) -> None:
    """A call waits `seconds` for `limit` ("rate" or "operating"); the method is the one being sent."""
    if seconds > 0:
        method = getattr(_current, "method", "none")
        LIMIT_WAITS.labels(limit, method).inc()
        LIMIT_WAIT_SECONDS.labels(method).inc(seconds)


def limit_answer(code: str) -> None:
    """Bitrix24 answered a limit error (QUERY_LIMIT_EXCEEDED, OPERATION_TIME_LIMIT), directly or in a batch."""
    LIMIT_ANSWERS.labels(_label(code)).inc()


def refresh_failed(code: str) -> None:
    REFRESH_FAILURES.labels(_label(code)).inc()


class _InboxCollector:
    """The inbox backlog, read from the database at each scrape: the database is its truth, shared by
    every process, so no process keeps a copy that could drift."""

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from portals import inbox  # imported late: the metrics module is imported by the portals app

        try:
            figures = inbox.backlog()
        except Exception:  # the database is down: the other metrics are still served (and /healthz says why)
            return
        yield GaugeMetricFamily("b24widget_inbox_unfinished", "Inbox events not processed yet.",
                                value=figures["unfinished"])
        yield GaugeMetricFamily("b24widget_inbox_failed", "Inbox events given up on (dead letters; replayable).",
                                value=figures["failed"])
        yield GaugeMetricFamily("b24widget_inbox_oldest_unfinished_seconds",
                                "Age of the oldest unprocessed inbox event.", value=figures["oldest_unfinished_seconds"])


_inbox_registry = CollectorRegistry(auto_describe=False)
_inbox_registry.register(_InboxCollector())


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
    return HttpResponse(generate_latest(_registry()) + generate_latest(_inbox_registry),
                        content_type=CONTENT_TYPE_LATEST)
