"""The inbox's Celery tasks (their names predate the app: tasks queued by an older release still run).

- process_inbox_item: one stored event (inbox/queue.py claims it once, whatever re-delivers it), then its
  portal lane's next ordered events while the task's budget lasts (B24_INBOX_CHAIN_EVENTS / _SECONDS);
- sweep_inbox: re-send tasks that were lost, release held rows (beat, every B24_INBOX_SWEEP_INTERVAL);
- prune_inbox: delete finished rows past their retention (beat, daily; B24_INBOX_RETENTION_DAYS);
- pull_offline_events (beat, every B24_OFFLINE_PULL_INTERVAL): one pull_offline_chunk per
  B24_FANOUT_CHUNK portals whose offline events are bound; a chunk pulls each portal's offline queue into
  the inbox (inbox/offline.py) and queues a portal again when its pull stopped at B24_OFFLINE_PULL_MAX.

A task that carries work (an event, a channel's delivery) and finds the database away is sent again by Celery
(RETRY_WHILE_DATABASE_AWAY) rather than acknowledged as failed: otherwise its row or channel waits for the
sweeper's "lost task" delay (B24_INBOX_REQUEUE_AFTER, OPENLINES_REQUEUE_AFTER: 120 s), which a broker coming
back with a backlog into a database outage showed (bench/soak.py, bench/RESULTS.md).
"""

import logging
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from . import offline, queue
from .registry import directory

log = logging.getLogger(__name__)

# Celery's autoretry: the same task sent again after at most 2, 4, then 5 s (full jitter: 0 to that), 200 times
# (~8 min on average, at most ~16), while the database cannot be reached; then it fails as before and the sweepers
# find its rows. The wait after the database is back is the last draw, at most 5 s: with waits of up to 30 s a
# channel's or an event's task came back up to 28 s after a 20 s database stop (bench/RESULTS.md, "broker and
# database stops"), and the channel's mark kept newer messages behind it meanwhile. A task that finds the
# database away costs a connection attempt and a publish: cheap next to a worker kept idle.
RETRY_WHILE_DATABASE_AWAY: dict[str, Any] = {
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 2,
    "retry_backoff_max": 5,
    "retry_jitter": True,
    "max_retries": 200,
}


@shared_task(
    name="portals.process_inbox_item",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    **RETRY_WHILE_DATABASE_AWAY,
)
def process_inbox_item(self, item_id: int) -> str:
    return queue.process(item_id, task_id=self.request.id or "")


@shared_task(name="portals.sweep_inbox", acks_late=True, ignore_result=True)
def sweep_inbox() -> int:
    return queue.sweep()


@shared_task(name="inbox.prune", acks_late=True, ignore_result=True)
def prune_inbox() -> int:
    return queue.prune().deleted


@shared_task(name="inbox.pull_offline_events", acks_late=True, ignore_result=True)
def pull_offline_events() -> int:
    """Fan out the pulls: one task per chunk of portals, so every worker takes a share. Returns the chunks."""
    chunk: list[str] = []
    sent = 0
    for member_id in directory().offline_portals():
        chunk.append(member_id)
        if len(chunk) >= settings.B24_FANOUT_CHUNK:
            pull_offline_chunk.delay(chunk)
            sent, chunk = sent + 1, []
    if chunk:
        pull_offline_chunk.delay(chunk)
        sent += 1
    log.info("offline pull fanned out", extra={"chunks": sent})
    return sent


@shared_task(name=offline.PULL_TASK, acks_late=True, ignore_result=True)
def pull_offline_chunk(member_ids: list[str]) -> dict:
    """Pull each portal's offline queue (a pull already running for a portal is skipped, not waited for)."""
    counts = {"pulled": 0, "skipped": 0, "failed": 0, "stored": 0}
    for member_id in member_ids:
        pulled = offline.pull(member_id)
        kind = "skipped" if pulled.skipped else "failed" if pulled.failed else "pulled"
        counts[kind] += 1
        counts["stored"] += pulled.stored
        if pulled.more:
            offline.request_pull(member_id)
    log.info("offline pull chunk done", extra=counts)
    return counts
