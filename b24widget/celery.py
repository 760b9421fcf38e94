"""The Celery app (`celery -A b24widget worker`, `celery -A b24widget beat`): Django's layout.

Its settings are the CELERY_* names in b24widget/settings.py (read from the environment there);
tasks live in each app's tasks.py and are found by autodiscover_tasks.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "b24widget.settings")

app = Celery("b24widget")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
