"""What the portal maintenance commands share: portal ids read in pages, a bounded pool of worker
threads (each with its own database connection, closed when the thread ends), a budget for
--limit, and a tally that prints progress lines and the summary.

The leading underscore keeps Django from taking this module for a command.
"""
import contextlib
import logging
import queue
import signal
import threading
from collections import Counter
from dataclasses import dataclass

from django.db import connections

log = logging.getLogger("portals.commands")

FAILED = "failed"
SKIPPED = "skipped"
BLOCKED = "blocked"
# Claimed after --limit was reached: released untouched, not counted.
OVER_LIMIT = "over_limit"


@dataclass(frozen=True)
class Outcome:
    """What happened to one portal; `code`/`description` say why it failed or was blocked."""

    kind: str
    label: str = ""
    code: str = ""
    description: str = ""


class Budget:
    """At most `limit` portals are worked on (None: no limit); taken while the portal is claimed.

    `stop()` (SIGTERM, a deployment error) ends the run: nothing new is claimed, work in flight finishes.
    """

    def __init__(self, limit: int | None):
        self.limit = limit
        self.used = 0
        self.stopped = ""
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.stopped or (self.limit is not None and self.used >= self.limit):
                return False
            self.used += 1
            return True

    def stop(self, reason: str) -> None:
        with self._lock:
            self.stopped = self.stopped or reason

    @property
    def exhausted(self) -> bool:
        with self._lock:
            return bool(self.stopped) or (self.limit is not None and self.used >= self.limit)


class Tally:
    """Counts outcomes, prints one progress line per `every` portals and the summary line."""

    def __init__(self, command, kinds: tuple[str, ...], *, every: int, total: int):
        self.command = command
        self.kinds = kinds
        self.every = every
        self.total = total
        self.counts = Counter()
        self.failure_codes = Counter()
        self.done = 0
        self._lock = threading.Lock()

    def add(self, outcome: Outcome) -> None:
        if outcome.kind == OVER_LIMIT:
            return
        with self._lock:
            self.counts[outcome.kind] += 1
            self.done += 1
            if outcome.kind == FAILED:
                self.failure_codes[outcome.code or "error"] += 1
                self.command.stderr.write(f"failed {outcome.label}: {outcome.code} {outcome.description}".rstrip())
            elif outcome.kind == BLOCKED:
                self.command.stdout.write(f"blocked {outcome.label}: {outcome.code}")
            if self.every and self.done % self.every == 0:
                self.command.stdout.write(f"progress {self.done}/{max(self.total, self.done)} {self._counts()}")

    def _counts(self) -> str:
        return " ".join(f"{kind}={self.counts[kind]}" for kind in self.kinds)

    def summary(self) -> str:
        with self._lock:
            line = self._counts()
            if self.failure_codes:
                codes = ",".join(f"{code}:{n}" for code, n in sorted(self.failure_codes.items()))
                line += f" failure_codes={codes}"
            return line


def ids_in_pages(queryset, batch_size: int):
    """Primary keys of `queryset`, read `batch_size` at a time (keyset pagination: rows that change
    or disappear while the command runs do not shift the pages)."""
    last = None
    while True:
        page = queryset.order_by("pk")
        if last is not None:
            page = page.filter(pk__gt=last)
        ids = list(page.values_list("pk", flat=True)[:batch_size])
        yield from ids
        if len(ids) < batch_size:
            return
        last = ids[-1]


def run(ids, work, *, workers: int, tally: Tally, budget: Budget) -> None:
    """Run `work(pk) -> Outcome` for each id on `workers` threads; an exception counts as failed.

    An interrupt stops the feeding; portals already being worked on are finished (a refresh
    token spent at the OAuth server must be stored) before it propagates.
    """
    pending = queue.Queue(maxsize=workers * 2)

    def worker():
        try:
            while True:
                pk = pending.get()
                if pk is None:
                    return
                if budget.stopped:
                    continue  # stopping: claim nothing new
                try:
                    outcome = work(pk)
                except Exception as exc:  # one portal's bug must not stop the others
                    log.exception("portal id %s: unexpected error", pk)
                    outcome = Outcome(FAILED, label=f"id={pk}", code=type(exc).__name__, description=str(exc)[:255])
                tally.add(outcome)
        finally:
            connections.close_all()  # this thread's connections only

    threads = [threading.Thread(target=worker, name=f"portal-worker-{n}") for n in range(workers)]
    for thread in threads:
        thread.start()
    try:
        for pk in ids:
            if budget.exhausted:
                break
            pending.put(pk)
    except BaseException:
        while True:  # drop what is queued; in-flight portals finish below
            try:
                pending.get_nowait()
            except queue.Empty:
                break
        raise
    finally:
        for _ in threads:
            pending.put(None)
        for thread in threads:
            thread.join()


@contextlib.contextmanager
def stop_on_sigterm(budget: Budget):
    """SIGTERM (what systemd and Kubernetes send) stops the run gracefully: in-flight portals finish and
    commit (a spent refresh token must be stored), nothing new is claimed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: budget.stop("SIGTERM"))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def add_arguments(parser, *, verb: str) -> None:
    """The options every portal-walking command shares (--workers, --batch-size, --limit, --progress-every)."""
    parser.add_argument("--workers", type=int, default=4, metavar="N",
                        help=f"portals {verb} at once, each thread with its own database connection (default 4)")
    parser.add_argument("--batch-size", type=int, default=100, metavar="N",
                        help="portal ids read from the database per query (default 100)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="handle at most N portals in this run")
    parser.add_argument("--progress-every", type=int, default=100, metavar="N",
                        help="print a progress line every N portals (default 100; 0: none)")


def check_options(options) -> None:
    """Refuse nonsensical values of the shared options with a clear message."""
    from django.core.management.base import CommandError

    for name in ("workers", "batch_size"):
        if options[name] < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
    if options["limit"] is not None and options["limit"] < 1:
        raise CommandError("--limit must be at least 1")
    if options["progress_every"] < 0:
        raise CommandError("--progress-every must not be negative")
