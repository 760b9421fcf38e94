"""Process the inbox's due events in this process, oldest first, without a broker or a worker.

For deployments that run no Celery worker yet (cron every minute) and for a one-off drain after an
outage; with workers running it is safe too (each event is claimed once). Same service as the
worker's task: inbox.queue.
"""

from django.core.management.base import BaseCommand, CommandError

from inbox import queue
from inbox.models import InboxItem


class Command(BaseCommand):
    help = (
        "Process the events waiting in the inbox (pending and due, or abandoned by a dead worker) in "
        "this process, oldest first; print how many ran and what is left. Exit status 1 when events "
        "are left failed for good (dead letters to replay from the admin)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--limit", type=int, default=1000, metavar="N", help="at most N handler runs (default 1000)"
        )

    def handle(self, *args, limit: int, **options):
        if limit < 1:
            raise CommandError("--limit must be at least 1")
        before = set(InboxItem.objects.filter(state=InboxItem.State.FAILED).values_list("pk", flat=True))
        runs = queue.process_pending(limit=limit)
        backlog = queue.backlog()
        self.stdout.write(f"processed={runs} unfinished={backlog['unfinished']} failed={backlog['failed']}")
        new_failures = InboxItem.objects.filter(state=InboxItem.State.FAILED).exclude(pk__in=before).count()
        if new_failures:
            raise CommandError(f"{new_failures} event(s) failed for good; replay them from the admin once fixed")
