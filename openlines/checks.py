"""System checks of the channel's settings (`manage.py check --deploy` runs the deploy ones)."""

from django.conf import settings
from django.core.checks import Error, register


@register(deploy=True)
def private_webhooks_in_production(app_configs, **kwargs):
    """Webhooks to loopback or private addresses turn the channel into a way into the deployment's network."""
    if settings.OPENLINES_ALLOW_PRIVATE_WEBHOOKS and not settings.DEBUG:
        return [
            Error(
                "OPENLINES_ALLOW_PRIVATE_WEBHOOKS is on without DEBUG",
                hint="Turn it off in production: channel webhooks must go to public https hosts.",
                id="openlines.E001",
            )
        ]
    return []
