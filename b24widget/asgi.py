"""ASGI entry point."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "b24widget.settings")
application = get_asgi_application()

from b24widget.checks import refuse_to_start  # noqa: E402  (needs the apps loaded)

refuse_to_start()
