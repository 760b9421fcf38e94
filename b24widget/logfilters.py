"""Logging filters: no log line carries a query string or a request object.

Django's request loggers attach the request to 4xx/5xx records (its repr holds the full URL, query
string included) and runserver logs the request line; a portal's fields or a token may travel in a
query string. This filter keeps method and path only, in JSON and plain format alike.
"""

import logging
import re

_QUERY = re.compile(r"\?[^\s\"']*")


class NoRequestDetails(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        if request is not None and not isinstance(request, str):
            record.request = f"{getattr(request, 'method', '')} {getattr(request, 'path', '')}".strip()
        message = record.getMessage()
        if "?" in message:
            record.msg, record.args = _QUERY.sub("", message), ()
        return True


class CeleryTask(logging.Filter):
    """Inside a Celery task, every line carries the task's id and name (beside member_id and the rest),
    so one event's lines can be followed across retries and workers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "task_id", ""):
            from celery import current_task

            # celery-types declares current_task a Task; it is a Proxy, which has _get_current_object().
            task = current_task._get_current_object() if current_task else None  # type: ignore[attr-defined]
            request = getattr(task, "request", None)
            if task is not None and request is not None and getattr(request, "id", None):
                record.task_id = request.id
                record.task_name = task.name
        return True
