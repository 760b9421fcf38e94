"""WSGI entry point (gunicorn b24widget.wsgi)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "b24widget.settings")
application = get_wsgi_application()
