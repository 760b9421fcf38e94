"""The `/metrics` endpoint for operators (prometheus_client), and the seam apps register collectors through.

Each app defines its own series where it counts them (bitrix24/metrics.py: REST calls and limits;
portals/tokens.py: refresh failures; placements/metrics.py: widget opens), on prometheus_client's
default registry; collectors that read shared state at scrape time are named in
settings.METRICS_COLLECTORS (a collector yields nothing while its source is down). Under gunicorn's
several worker processes, set PROMETHEUS_MULTIPROC_DIR (an empty folder, wiped at start by
b24widget/gunicorn.py): each process then writes its counters there and `/metrics` adds them up
(prometheus_client's multiprocess mode). `/metrics` is not public: without METRICS_TOKEN it does not
exist (404); with it, it answers only to `Authorization: Bearer <METRICS_TOKEN>` (403 otherwise).
"""

import hmac
import os
from functools import lru_cache

from django.conf import settings
from django.http import Http404, HttpResponse, HttpResponseForbidden
from django.utils.module_loading import import_string
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess


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
