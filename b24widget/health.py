"""/healthz: is the database (and the cache, when one is configured) answering? Are our OAuth credentials
accepted, is the Celery broker reachable, how big is the event inbox's backlog, is the Open Lines relay
keeping up (openlines/health.py: the oldest waiting message each way, stuck claims)? The last four are
reported, not failed on: the widget keeps serving and events are still stored (the database is the
inbox's source of truth; the sweeper re-sends what the broker missed).

A refusal of our credentials is recorded when an OAuth answer says so; /healthz itself asks the OAuth
server again while one is recorded (bitrix24.oauth.recheck_client), so it recovers without waiting for
some other OAuth call to succeed."""

from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from b24widget.celery import app
from bitrix24 import oauth
from inbox import handoff
from inbox import queue as inbox
from openlines import health as relay


def _broker() -> str:
    """Whether the broker answers: a connection made (bounded by CELERY_BROKER_CONNECTION_TIMEOUT), then a channel
    opened and closed on it, round trips a frozen broker leaves unanswered (each bounded by B24_BROKER_IO_TIMEOUT
    on AMQP; local on the embedded broker). A connection alone was "ok" for a broker that answered the handshake
    and then froze, while every hand-off to it failed."""
    try:
        with app.connection_for_write() as conn:
            conn.connect()
            channel: Any = conn.channel()  # (kombu's StdChannel stub names no close; every transport's has one)
            channel.close()
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


@never_cache
@require_GET
def healthz(request):
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        checks["database"] = "ok"
    except Exception as exc:  # a health check reports every failure instead of raising
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        cache.set("healthz", "1", 10)
        checks["cache"] = "ok" if cache.get("healthz") == "1" else "error: value not kept"
    except Exception as exc:
        checks["cache"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())  # (the database and the cache: the rest only degrade)
    # A recorded refusal is put to the OAuth server again (at most once a minute per deployment, within a
    # short deadline), so the status recovers by itself once the operator has fixed the credentials.
    rejected = oauth.recheck_client(
        interval=settings.B24_CLIENT_CHECK_INTERVAL, deadline=settings.B24_CLIENT_CHECK_DEADLINE
    )
    # Not a reason to take the process out of rotation: an operator must fix B24_CLIENT_SECRET.
    checks["oauth_client"] = f"error: {rejected} (check B24_CLIENT_ID / B24_CLIENT_SECRET)" if rejected else "ok"
    checks["broker"] = _broker()
    # Who queues what the requests store (inbox/handoff.py): on PostgreSQL a worker's dispatcher must listen.
    try:
        checks["handoff"] = handoff.health()
    except Exception as exc:
        checks["handoff"] = f"error: {type(exc).__name__}"
    try:
        backlog = inbox.backlog()
    except Exception as exc:
        backlog = {"error": type(exc).__name__}
    # The relay's queues: a conversation message due for longer than OPENLINES_STALL_SECONDS (workers down,
    # behind, or a claim stuck) degrades the status; nothing is refused for it.
    try:
        openlines = dict(relay.backlog())
    except Exception as exc:
        openlines = {"error": type(exc).__name__}
    degraded = (
        bool(rejected)
        or checks["broker"] != "ok"
        or checks["handoff"] != "ok"
        or bool(openlines.get("degraded"))
        or bool(isinstance(backlog, dict) and backlog.get("degraded"))
    )
    status = "ok" if healthy and not degraded else ("degraded" if healthy else "error")
    return JsonResponse(
        {"status": status, "checks": checks, "inbox": backlog, "openlines": openlines}, status=200 if healthy else 503
    )
