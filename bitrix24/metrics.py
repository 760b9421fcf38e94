"""The client's Prometheus series: REST calls, limit waits and limit answers (prometheus_client).

They live on prometheus_client's default registry, like every series of the app; `/metrics`
(b24widget/metrics.py) serves that registry, added up over processes in multiprocess mode.
"""

import re
import threading

from prometheus_client import Counter

REST_CALLS = Counter("b24widget_rest_calls", "REST requests sent to portals, by method.", ["method"])
LIMIT_WAITS = Counter(
    "b24widget_limit_waits", "REST calls that waited for a Bitrix24 limit, by limit and method.", ["limit", "method"]
)
LIMIT_WAIT_SECONDS = Counter(
    "b24widget_limit_wait_seconds", "Seconds REST calls waited for limits, by method.", ["method"]
)
LIMIT_ANSWERS = Counter(
    "b24widget_limit_answers",
    "Limit errors Bitrix24 answered (the client slows down and retries them), by code.",
    ["code"],
)

_LABEL = re.compile(r"[^A-Za-z0-9_.:-]")
_current = threading.local()  # the REST method being sent on this thread (for the limiter's waits)


def label(value: object) -> str:
    """Label values from outside (error codes) stay short and tame: a label never explodes the series."""
    return _LABEL.sub("_", str(value or "none"))[:48]


def rest_call(method: str) -> None:
    _current.method = label(method)
    REST_CALLS.labels(_current.method).inc()


def limit_wait(limit: str, seconds: float) -> None:
    """A call waits `seconds` for `limit` ("rate" or "operating"); the method is the one being sent."""
    if seconds > 0:
        method = getattr(_current, "method", "none")
        LIMIT_WAITS.labels(limit, method).inc()
        LIMIT_WAIT_SECONDS.labels(method).inc(seconds)


def limit_answer(code: str) -> None:
    """Bitrix24 answered a limit error (QUERY_LIMIT_EXCEEDED, OPERATION_TIME_LIMIT), directly or in a batch."""
    LIMIT_ANSWERS.labels(label(code)).inc()
