"""The Celery app (`celery -A b24widget worker`, `celery -A b24widget beat`): Django's layout.

Its settings are the CELERY_* names in b24widget/settings.py (read from the environment there);
tasks live in each app's tasks.py and are found by autodiscover_tasks.

A worker and beat refuse bad settings as gunicorn does (b24widget/checks.py `refuse_to_start`: one
message, exit 1) before they take or send any task. A worker counts its tasks by name (task signals into
b24widget/metrics.py).

One log stream: with LOG_FORMAT=json (production) the worker and beat print no banners (Celery's `--quiet`,
forced), the worker's few direct prints (`worker: Warm shutdown`) become JSON lines, and Python warnings
(Celery's superuser warning) go through logging; everything else already goes through Django's LOGGING
(CELERY_WORKER_HIJACK_ROOT_LOGGER is off).
"""

import functools
import logging
import os
import sys

import django
from celery import Celery, signals
from celery.apps import beat as celery_beat
from celery.apps import worker as celery_worker
from celery.worker.consumer import Consumer as _CeleryConsumer
from django.apps import apps
from django.conf import settings
from kombu.utils.objects import cached_property

from b24widget import metrics
from b24widget.checks import refuse_to_start
from inbox import handoff

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "b24widget.settings")


def _json_logs() -> bool:
    return settings.LOG_FORMAT == "json"


class _Beat(celery_beat.Beat):
    """Celery's beat, quiet (no banner lines) when the logs are JSON."""

    def __init__(self, **kwargs):
        kwargs["quiet"] = bool(kwargs.get("quiet")) or _json_logs()
        super().__init__(**kwargs)


class _Celery(Celery):
    @cached_property
    def Beat(self, **kwargs):  # noqa: N802 (Celery's name)
        return self.subclass_with_self(_Beat)


def _say(message: str, f=None) -> None:
    """What Celery's worker prints straight to the terminal (in signal handlers), as one log line: formatted by
    the root handler's formatter and written without taking the handler's lock."""
    record = logging.getLogger("celery.apps.worker").makeRecord(
        "celery.apps.worker", logging.WARNING, __file__, 0, message, (), None
    )
    handlers = logging.getLogger().handlers
    line = handlers[0].format(record) if handlers else message
    stream = (getattr(handlers[0], "stream", None) if handlers else None) or f or sys.__stderr__
    if stream is not None:
        stream.write(line + "\n")
        stream.flush()


# A worker whose broker went away tries again after 1, 2, 3, 4, 5, 5 ... s (the consumer's `ensure_connected`
# passes kombu's defaults, 2, 4, 6 ... 30 s: after a 27 s RabbitMQ stop a worker came back up to 10 s after the
# broker, after a minute's up to 16 s, later still after longer ones; bench/RESULTS.md "broker and database
# stops"). A refused connection costs nothing, so trying every 5 s at most is cheap.
RECONNECT_INTERVALS = {"interval_start": 1.0, "interval_step": 1.0, "interval_max": 5.0}


class Consumer(_CeleryConsumer):
    """Celery's worker consumer (CELERY_WORKER_CONSUMER), reconnecting on RECONNECT_INTERVALS."""

    def ensure_connected(self, conn):
        conn.ensure_connection = functools.partial(conn.ensure_connection, **RECONNECT_INTERVALS)
        try:
            return super().ensure_connected(conn)
        finally:
            del conn.ensure_connection  # the class's method again


app = _Celery("b24widget")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _refuse_bad_settings() -> None:
    if not apps.ready:  # Celery's Django fixup has set Django up by now; this makes sure
        django.setup()
    refuse_to_start()


@signals.celeryd_init.connect
def _quiet_worker(sender=None, instance=None, **kwargs):
    """Before the worker prints its banner: none with JSON logs; direct prints become log lines."""
    if _json_logs():
        instance.quiet = True
        celery_worker.safe_say = _say
    logging.captureWarnings(True)


@signals.beat_init.connect
def _beat_warnings(sender=None, **kwargs):
    logging.captureWarnings(True)


@signals.worker_init.connect
def _worker_init(sender=None, **kwargs):
    """The worker's main process, before its pool starts: settings checked, then the worker's own metrics
    folder emptied (never the web's) and its `/metrics` served on WORKER_METRICS_PORT."""
    _refuse_bad_settings()
    metrics.empty_multiprocess_folder()
    metrics.serve_worker_metrics()


@signals.worker_ready.connect
def _worker_ready(sender=None, **kwargs):
    """The worker's main process, its pool started: the hand-off dispatcher (inbox/handoff.py), where it runs."""
    handoff.start()


@signals.worker_shutdown.connect
def _worker_shutdown(sender=None, **kwargs):
    handoff.stop()


@signals.worker_process_shutdown.connect
def _worker_process_shutdown(pid=None, **kwargs):
    metrics.mark_process_dead(pid or os.getpid())


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
