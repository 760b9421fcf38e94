"""The landing page at `/`: what this deployment is and where to go (admin, health; the sandbox with DEBUG)."""

from django.conf import settings
from django.shortcuts import render
from django.views.decorators.http import require_GET


@require_GET
def landing(request):
    app_url = settings.B24_APP_URL
    return render(
        request,
        "landing.html",
        {
            "app_url": app_url,
            "handler_url": f"{app_url}/placement/",
            "install_url": f"{app_url}/install/",
            "debug": settings.DEBUG,
            "metrics": bool(getattr(settings, "METRICS_TOKEN", "")),
        },
    )
