"""Celery tasks: small, idempotent, acknowledged late. They call the same services as the commands.

- keepalive_pass / sync_pass (beat): read the due portal ids and fan out one task per chunk, so
  every worker machine takes a share; each portal is claimed once (tokens.refresh_portal's lease,
  judged again under the row lock), so a chunk that runs twice refreshes nothing twice.
"""

import logging

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

from . import maintenance, tokens

log = logging.getLogger(__name__)


def _fan_out(task, ids, *args) -> int:
    chunk, sent = [], 0
    for pk in ids:
        chunk.append(pk)
        if len(chunk) >= settings.B24_FANOUT_CHUNK:
            task.delay(chunk, *args)
            sent, chunk = sent + 1, []
    if chunk:
        task.delay(chunk, *args)
        sent += 1
    return sent


@shared_task(name="portals.keepalive_pass", acks_late=True, ignore_result=True)
def keepalive_pass(older_than_days: int = 150, within_minutes: int | None = None) -> int:
    """Fan out refresh_chunk tasks over the portals due now; returns how many chunks were sent."""
    due = maintenance.due(older_than_days=older_than_days, within_minutes=within_minutes)
    ids = maintenance.ids_in_pages(maintenance.Portal.objects.filter(due), 500)
    sent = _fan_out(refresh_chunk, ids, older_than_days, within_minutes)
    log.info("keep-alive pass fanned out", extra={"chunks": sent})
    return sent


@shared_task(name="portals.refresh_chunk", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def refresh_chunk(self, ids: list[int], older_than_days: int = 150, within_minutes: int | None = None) -> dict:
    """Refresh each portal of the chunk that is still due (skipped when another worker has it)."""
    counts: dict = {}
    for pk in ids:
        due = maintenance.due(older_than_days=older_than_days, within_minutes=within_minutes)
        outcome = maintenance.refresh_if_due(pk, due)
        counts[outcome.kind] = counts.get(outcome.kind, 0) + 1
        if outcome.kind in (maintenance.FAILED, maintenance.MISCONFIGURED):
            log.warning(
                "keep-alive refresh failed", extra={"portal_id": pk, "code": outcome.code, "task_id": self.request.id}
            )
        if outcome.kind == maintenance.MISCONFIGURED:
            break  # our credentials are refused: nothing in this chunk can succeed
    log.info("keep-alive chunk done", extra={"task_id": self.request.id, **counts})
    return counts


@shared_task(name="portals.sync_pass", acks_late=True, ignore_result=True)
def sync_pass() -> int:
    ids = maintenance.ids_in_pages(maintenance.Portal.objects.filter(status=maintenance.Portal.Status.ACTIVE), 500)
    sent = _fan_out(sync_chunk, ids)
    log.info("sync pass fanned out", extra={"chunks": sent})
    return sent


@shared_task(name="portals.sync_chunk", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def sync_chunk(self, ids: list[int]) -> dict:
    counts: dict = {}
    for pk in ids:
        outcome = maintenance.sync_portal(pk)
        counts[outcome.kind] = counts.get(outcome.kind, 0) + 1
    log.info("sync chunk done", extra={"task_id": self.request.id, **counts})
    return counts


@shared_task(name="portals.store_held_grants", acks_late=True, ignore_result=True)
def store_held_grants() -> dict:
    """Store the rotated tokens held while the database was away (portals.tokens.store_held)."""
    return tokens.store_held()


@worker_ready.connect
def _store_held_grants_at_start(**_kwargs) -> None:
    """A worker that starts (after a crash, an outage) stores what was held before anything refreshes."""
    try:
        store_held_grants.delay()
    except Exception:  # the broker is not there yet: beat's next pass does it
        log.warning("could not queue the held-grants pass at start")
