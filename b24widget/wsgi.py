"""WSGI entry point (gunicorn b24widget.wsgi). Refuses to start, with one message, on bad settings."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "b24widget.settings")
application = get_wsgi_application()

from b24widget.checks import refuse_to_start  # noqa: E402  (needs the apps loaded)

refuse_to_start()
