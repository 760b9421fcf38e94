"""A work task that finds the database away is sent again soon after it is back (bench/RESULTS.md, "broker and
database stops"): Celery's autoretry (inbox/tasks.py RETRY_WHILE_DATABASE_AWAY) waits at most 5 s between tries, so
the database's return costs a task at most that, and it keeps trying for minutes before the sweepers take over.
The waits are computed by Celery's own function from the tasks' options, as its autoretry does."""

import pytest
from celery.utils.time import get_exponential_backoff_interval
from django.db import InterfaceError, OperationalError

from inbox.tasks import process_inbox_item
from openlines.tasks import deliver_inbound, deliver_outbound

WORK_TASKS = [process_inbox_item, deliver_inbound, deliver_outbound]


def _longest_waits(task) -> list[float]:
    """Each retry's longest wait (jitter draws between 0 and it), as celery/app/autoretry.py computes it."""
    return [
        get_exponential_backoff_interval(
            factor=int(max(1.0, task.retry_backoff)),
            retries=retries,
            maximum=int(task.retry_backoff_max),
            full_jitter=False,
        )
        for retries in range(task.max_retries)
    ]


@pytest.mark.parametrize("task", WORK_TASKS, ids=lambda t: t.name)
def test_a_task_tries_again_within_5_seconds_while_the_database_is_away(task):
    assert set(task.autoretry_for) >= {OperationalError, InterfaceError}
    waits = _longest_waits(task)
    assert max(waits) <= 5  # main: 30 s, so a task came back up to 28 s after the database did


@pytest.mark.parametrize("task", WORK_TASKS, ids=lambda t: t.name)
def test_a_task_keeps_trying_for_minutes_before_the_sweepers_take_over(task):
    waits = _longest_waits(task)
    assert task.retry_jitter
    assert sum(waits) / 2 >= 5 * 60  # on average (full jitter halves each wait): longer than a database restart
