"""Is the relay keeping up? What /healthz and /metrics report about the channels' queues.

For each direction: how many conversation messages wait, how old the oldest one is (since it reached us),
and how long the most overdue one has been due without being sent (a message waiting for its retry is not
overdue; one whose channel is disconnected or whose portal is blocked is not counted). Claims: channel
leases past their end that nobody released (a worker died or lost its database mid-run; another takes over
at the next look, within the sweep's interval), and tasks queued longer ago than OPENLINES_REQUEUE_AFTER
without starting (the workers are behind, or the broker lost them). `degraded` once a message has been
overdue longer than OPENLINES_STALL_SECONDS.
"""

from datetime import timedelta
from typing import TypedDict

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from .models import UNSENT, Channel, InboundMessage, OutboundMessage
from .tasks import INBOUND, OUTBOUND, inbound_due, outbound_due


class Direction(TypedDict):
    waiting: int
    oldest_waiting_seconds: int
    oldest_overdue_seconds: int


class Backlog(TypedDict):
    inbound: Direction
    outbound: Direction
    stalled_claims: int
    late_tasks: int
    degraded: bool


def _seconds(now, then) -> int:
    return max(int((now - then).total_seconds()), 0) if then else 0


def _direction(model, since: str, due: Q, now) -> Direction:
    waiting = model.objects.filter(state__in=UNSENT)
    oldest = waiting.order_by(since).values_list(since, flat=True).first()
    overdue = (
        model.objects.filter(due, state__in=UNSENT)
        .order_by("next_attempt_at")
        .values_list("next_attempt_at", flat=True)
        .first()
    )
    return {
        "waiting": waiting.count(),
        "oldest_waiting_seconds": _seconds(now, oldest),
        "oldest_overdue_seconds": _seconds(now, overdue),
    }


def backlog() -> Backlog:
    now = timezone.now()
    inbound = _direction(InboundMessage, "received_at", inbound_due(now), now)
    outbound = _direction(OutboundMessage, "created_at", outbound_due(now), now)
    stalled = Q()
    late = Q()
    for way in (INBOUND, OUTBOUND):
        stalled |= Q(**{f"{way.until}__lt": now})
        late |= Q(**{f"{way.queued}__lt": now - timedelta(seconds=settings.OPENLINES_REQUEUE_AFTER)})
    worst = max(inbound["oldest_overdue_seconds"], outbound["oldest_overdue_seconds"])
    return {
        "inbound": inbound,
        "outbound": outbound,
        "stalled_claims": Channel.objects.filter(stalled).count(),
        "late_tasks": Channel.objects.filter(late).count(),
        "degraded": worst > settings.OPENLINES_STALL_SECONDS,
    }


class BacklogCollector:
    """The relay's queues for /metrics, read from the database at each scrape (the database is their truth)."""

    def collect(self):
        try:
            figures = backlog()
        except Exception:  # the database is down: the other metrics are still served (and /healthz says why)
            return
        for name, help_text in (
            ("waiting", "Conversation messages not sent yet, by direction."),
            ("oldest_waiting_seconds", "Age of the oldest unsent conversation message, by direction."),
            ("oldest_overdue_seconds", "How long the most overdue conversation message has been due, by direction."),
        ):
            family = GaugeMetricFamily(f"b24widget_openlines_{name}", help_text, labels=["direction"])
            for direction in ("inbound", "outbound"):
                family.add_metric([direction], figures[direction][name])  # type: ignore[literal-required]
            yield family
        yield GaugeMetricFamily(
            "b24widget_openlines_stalled_claims",
            "Channel leases past their end and not released (a worker died mid-run).",
            value=figures["stalled_claims"],
        )
        yield GaugeMetricFamily(
            "b24widget_openlines_late_tasks",
            "Channels whose delivery task was queued longer than OPENLINES_REQUEUE_AFTER ago and has not started.",
            value=figures["late_tasks"],
        )
