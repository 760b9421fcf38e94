"""The Celery app (`celery -A b24widget worker`, `celery -A b24widget beat`): Django's layout.

Its settings are the CELERY_* names in b24widget/settings.py (read from the environment there);
tasks live in each app's tasks.py and are found by autodiscover_tasks.

A worker and beat refuse bad settings as gunicorn does (b24widget/checks.py `refuse_to_start`: one
message, exit 1) before they take or send any task. A worker counts its tasks by name (task signals into
b24widget/metrics.py).
"""

import os

import django
from celery import Celery, signals
from django.apps import apps
from kombu.transport import TRANSPORT_ALIASES

from b24widget import metrics
from b24widget.checks import refuse_to_start

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "b24widget.settings")

# filesystem:// (the embedded broker) is kombu's filesystem transport with each message written whole before
# a worker can take it (b24widget/broker.py); set before any connection is made (kombu keeps what it resolved).
TRANSPORT_ALIASES["filesystem"] = "b24widget.broker:Transport"

app = Celery("b24widget")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _refuse_bad_settings() -> None:
    if not apps.ready:  # Celery's Django fixup has set Django up by now; this makes sure
        django.setup()
    refuse_to_start()


@signals.worker_init.connect
def _worker_init(sender=None, **kwargs):
    """The worker's main process, before its pool starts."""
    _refuse_bad_settings()


@signals.beat_init.connect
def _beat_init(sender=None, **kwargs):
    _refuse_bad_settings()


@signals.task_prerun.connect
def _task_prerun(task_id=None, task=None, **kwargs):
    metrics.task_started(task_id)


@signals.task_postrun.connect
def _task_postrun(task_id=None, task=None, **kwargs):
    metrics.task_finished(task_id, task.name)


@signals.task_failure.connect
def _task_failure(sender=None, **kwargs):
    metrics.task_failed(sender.name)


@signals.task_retry.connect
def _task_retry(sender=None, **kwargs):
    metrics.task_retried(sender.name)
