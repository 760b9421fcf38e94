"""/healthz: is the database (and the cache, when one is configured) answering? Are our OAuth credentials
accepted? The last is reported, not failed on: the widget keeps serving verified users meanwhile."""
from django.core.cache import cache
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from portals import oauth


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
    healthy = all(v == "ok" for v in checks.values())
    rejected = oauth.client_rejected()
    # Not a reason to take the process out of rotation: an operator must fix B24_CLIENT_SECRET.
    checks["oauth_client"] = f"error: {rejected} (check B24_CLIENT_ID / B24_CLIENT_SECRET)" if rejected else "ok"
    status = "ok" if healthy and not rejected else ("degraded" if healthy else "error")
    return JsonResponse({"status": status, "checks": checks}, status=200 if healthy else 503)
