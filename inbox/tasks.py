"""The inbox's Celery tasks (their names predate the app: tasks queued by an older release still run).

- process_inbox_item: one stored event (inbox/queue.py claims it once, whatever re-delivers it);
- sweep_inbox: re-send tasks that look lost (beat, every B24_INBOX_SWEEP_INTERVAL).
"""

from celery import shared_task

from . import queue


@shared_task(
    name="portals.process_inbox_item", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True
)
def process_inbox_item(self, item_id: int) -> str:
    return queue.process(item_id, task_id=self.request.id or "")


@shared_task(name="portals.sweep_inbox", acks_late=True, ignore_result=True)
def sweep_inbox() -> int:
    return queue.sweep()
