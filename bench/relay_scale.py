"""The Open Lines relay at scale, on Celery worker processes: throughput across many portals, the others'
delay while one portal bursts, one portal's burst against its bucket's floor, and one message's profile.

Run: .venv/bin/python bench/relay_scale.py [--broker embedded|rabbitmq] [--portals 100] [--chats 10]
       [--per-chat 3] [--workers 1,2,4] [--burst 1000]
(RabbitMQ: amqp://guest:guest@127.0.0.1:5672// or RABBITMQ_URL, on a queue of this run's own, deleted at the
end; the embedded broker in a folder of its own.) Inbound messages go in through the channel API (signed POSTs,
Django's test Client in this process), out through `imconnector.send.messages` to the stand-in.

  1. throughput: --portals portals x --chats chats x --per-chat messages stored with no worker running (the
     queue then holds one task per channel), then one `celery worker --concurrency N` for each N of --workers:
     messages/s between the first and the last message at Bitrix24.
  2. fairness: 2 worker processes; the others (every portal but one) write 10 messages/s for a while, quiet,
     then again while one portal takes --burst messages at once: the others' delay (accepted -> at Bitrix24)
     p50/p99, quiet vs during the burst.
  3. one portal at its bucket ("others" plan: 50 at once, then 2 requests/s; settings/performance/limits.md)
     with our pacing on: --bucket messages stored at once, then 2 worker processes; time from the first to
     the last message at Bitrix24, next to the floor the bucket and OPENLINES_SEND_BATCH imply.
  4. one message's path in this process (cProfile of the channel API POST and the delivery run).
  5. operator replies out, one portal at its bucket (issue 26: "300 operator replies at once -> the outside
     system"): --replies N:C (N replies written at once over C chats, each event POSTed to /events/ as Bitrix24
     does right after the write), 2 worker processes take the inbox's events and the channel's runs, our
     pacing on: time from the first reply written to the last one at the webhook receiver, and to the last
     delivery status Bitrix24 took; REST requests by method (imopenlines.session.history.get confirms each
     reply, imconnector.send.status.delivery reports it) next to the floor those requests imply under the
     bucket, and the floor of the fewest requests the work needs (one history answer per chat, batch.md's 50
     per request; OPENLINES_STATUS_BATCH statuses per call).
  6. the per-event path (issue 26): --event-profile N reply events of one portal stored through /events/, then
     the inbox task's body (`inbox.queue.process`) for each, in this process under cProfile: wall and CPU per
     event, SQL statements and REST requests per event, where the time goes.
Asserts only that every message arrived (and every reply exactly once).
"""

import argparse
import contextlib
import cProfile
import io
import math
import os
import pstats
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from amqp.exceptions import NotFound

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as common
from bench.rest_list import install

LOGS = common.ARTIFACTS / "relay_scale"


def start_worker(concurrency: int, name: str, *, pacing: bool = False):
    """One `celery worker --concurrency N`; `pacing`: with our per-portal bucket (off in parts 1 and 2)."""
    LOGS.mkdir(parents=True, exist_ok=True)
    command = [common.PYTHON, "-m", "celery", "-A", "b24widget", "worker", "--concurrency", str(concurrency)]
    command += ["-n", f"{name}@%h", "--without-mingle", "--without-gossip", "--loglevel", "WARNING"]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.settings"}
    if pacing:
        env.pop("B24_RATE_LIMIT_PER_SECOND", None)
    with open(LOGS / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            command, cwd=common.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_worker(process) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class Poster:
    """Signed POSTs to the channel API (this process, Django's test Client), one Client per thread."""

    def __init__(self):
        from django.test import Client

        self.local = threading.local()
        self.client_class = Client
        self.count = 0

    def post(self, channel, secret, chat: str, text: str) -> None:
        client = getattr(self.local, "client", None) or self.client_class()
        self.local.client = client
        self.count += 1
        payload = {
            "chat": {"id": chat},
            "user": {"id": f"u-{chat}"},
            "message": {"id": f"{text}-{secrets.token_hex(4)}", "text": text},
        }
        answer = common.post_signed(client, channel, secret, payload)
        assert answer.status_code == 202, answer.content


def wait_all_sent(timeout: float = 900) -> None:
    from openlines.models import Delivery, InboundMessage

    deadline = time.monotonic() + timeout
    while InboundMessage.objects.exclude(state__in=[Delivery.SENT, Delivery.DEAD]).exists():
        if time.monotonic() > deadline:
            raise SystemExit("messages still waiting after the timeout")
        time.sleep(0.2)
    dead = InboundMessage.objects.filter(state=Delivery.DEAD).count()
    assert dead == 0, f"{dead} dead letters"


def delays(rows) -> list[float]:
    return [(sent - received).total_seconds() for received, sent in rows]


def throughput(args, channels, poster) -> None:
    from django.db.models import Max, Min

    from openlines.models import InboundMessage

    total = len(channels) * args.chats * args.per_chat
    print(f"\n1. throughput: {len(channels)} portals x {args.chats} chats x {args.per_chat} = {total:,} messages")
    rows = []
    for concurrency in args.workers:
        InboundMessage.objects.all().delete()
        with common.Timer() as accepting:
            for n in range(args.per_chat):
                for chat in range(args.chats):
                    for channel, secret in channels:
                        poster.post(channel, secret, f"c{chat}", f"t{n}")
        queued = sum(
            1 for c, _ in channels if type(c).objects.filter(pk=c.pk, inbound_queued_at__isnull=False).exists()
        )
        worker = start_worker(concurrency, f"throughput-{concurrency}")
        wait_all_sent()
        stop_worker(worker)
        span = InboundMessage.objects.aggregate(first=Min("sent_at"), last=Max("sent_at"))
        seconds = max((span["last"] - span["first"]).total_seconds(), 1e-6)
        rows.append([concurrency, f"{accepting.seconds:.1f}", queued, f"{seconds:.2f}", f"{total / seconds:.0f}"])
    print(
        common.table(
            rows,
            ["worker processes", "accept s (this process)", "tasks queued", "first->last at Bitrix24 s", "msgs/s"],
        )
    )


def fairness(args, channels, poster) -> None:
    from openlines.models import InboundMessage

    others = channels[1:]
    busy, busy_secret = channels[0]
    print(
        f"\n2. fairness: the other {len(others)} portals write 10 msgs/s; portal 0 takes {args.burst:,} at once "
        "(2 worker processes)"
    )
    InboundMessage.objects.all().delete()
    worker = start_worker(2, "fairness")
    time.sleep(4)  # connected to the broker

    def trickle(seconds: float, tag: str):
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            channel, secret = others[n % len(others)]
            poster.post(channel, secret, f"c{n % args.chats}", f"{tag}{n}")
            n += 1
            time.sleep(0.1)

    trickle(5, "quiet")
    wait_all_sent()
    quiet = delays(InboundMessage.objects.filter(sent_at__isnull=False).values_list("received_at", "sent_at"))
    InboundMessage.objects.all().delete()
    others_ids = [c.pk for c, _ in others]
    background = threading.Thread(target=trickle, args=(max(10.0, args.burst / 100), "busy"))
    background.start()
    for n in range(args.burst):
        poster.post(busy, busy_secret, f"c{n % args.chats}", f"burst{n}")
    background.join()
    wait_all_sent()
    stop_worker(worker)
    during = delays(InboundMessage.objects.filter(channel_id__in=others_ids).values_list("received_at", "sent_at"))
    burst_rows = delays(InboundMessage.objects.filter(channel_id=busy.pk).values_list("received_at", "sent_at"))
    print(
        common.table(
            [
                ["others, quiet", len(quiet), common.ms(common.median(quiet)), common.ms(common.percentile(quiet, 99))],
                [
                    "others, during the burst",
                    len(during),
                    common.ms(common.median(during)),
                    common.ms(common.percentile(during, 99)),
                ],
                [
                    "the bursting portal",
                    len(burst_rows),
                    common.ms(common.median(burst_rows)),
                    common.ms(common.percentile(burst_rows, 99)),
                ],
            ],
            ["messages", "count", "p50 accepted->sent", "p99"],
        )
    )


def bucket(args, paced, b24, poster) -> None:
    from django.conf import settings
    from django.db.models import Max, Min

    from openlines.models import InboundMessage

    channel, secret = paced
    per_call = settings.OPENLINES_SEND_BATCH
    rows = []
    for count in args.bucket:
        calls = math.ceil(count / per_call)
        floor = max(calls - b24.rate_limit_burst, 0) / b24.rate_limit_drain
        InboundMessage.objects.all().delete()
        for n in range(count):  # stored at once, no worker running yet
            poster.post(channel, secret, f"c{n % args.chats}", f"bucket{n}")
        before = len(b24.requests)
        worker = start_worker(2, f"bucket-{count}", pacing=True)
        wait_all_sent()
        stop_worker(worker)
        span = InboundMessage.objects.aggregate(first=Min("sent_at"), last=Max("sent_at"))
        wall = (span["last"] - span["first"]).total_seconds()
        made = b24.requests[before:]
        sends = sum(1 for r in made if r["method"] == "imconnector.send.messages" and r["status"] == 200)
        limited = sum(1 for r in made if r["status"] == 503)
        rows.append([count, f"{wall:.1f}", sends, limited, f"{floor:.1f}", f"{wall / floor:.2f}" if floor else "-"])
        b24.set_plan("others")  # an empty bucket again for the next size
    print(
        f"\n3. one portal on the 'others' plan (burst {b24.rate_limit_burst}, {b24.rate_limit_drain:g}/s), "
        f"{per_call} messages per call, our pacing on: N messages stored at once, then 2 worker processes"
    )
    print(
        common.table(
            rows,
            ["messages", "first->last at Bitrix24 s", "send calls", "503s", "bucket floor s", "x floor"],
        )
    )


def profile(channels, poster, callers: str = "") -> None:
    from django.conf import settings

    from openlines import tasks
    from openlines.models import InboundMessage

    channel, secret = channels[-1]
    print("\n4. one message's path, in this process (cProfile, 200 messages one by one; top 25 by own time)")
    InboundMessage.objects.all().delete()
    settings.OPENLINES_TASKS_INLINE = True  # the delivery runs here, after the POST's commit
    profiler = cProfile.Profile()
    with common.Timer() as timer:
        profiler.enable()
        for n in range(200):
            poster.post(channel, secret, "c0", f"profile{n}")
        profiler.disable()
    settings.OPENLINES_TASKS_INLINE = False
    sent = InboundMessage.objects.filter(sent_at__isnull=False).count()
    print(f"  {sent} sent; {1000 * timer.seconds / 200:.1f} ms per message (POST + delivery run, profiled)")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    print("\n".join(out.getvalue().splitlines()[:45]))
    if callers:  # who calls the functions matching this pattern (to find what to remove)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_callers(callers)
        print("\n".join(out.getvalue().splitlines()[:60]))
    assert tasks  # (the run is the task's own code, not a stand-in)


def write_reply(client, b24, chat, text: str) -> None:
    """An operator writes `text` in `chat` and Bitrix24 posts its OnImConnectorMessageAdd to /events/ at once."""
    from openlines import registry
    from sandbox.standin import rest_imconnector as imc

    message_id, _ = imc.operator_reply(b24, chat["chat_id"], text, handlers=[])
    item = {"im": {"chat_id": chat["chat_id"], "message_id": message_id}, "chat": {"id": chat["external_chat"]}}
    data = {"CONNECTOR": registry.HTTP.id, "LINE": "1", "MESSAGES": [item]}
    answer = client.post("/events/", b24.event_payload("ONIMCONNECTORMESSAGEADD", data=data, with_tokens=False))
    assert answer.status_code == 200, answer.content


def replies(args, standin, client, poster) -> None:
    """Part 5: operator replies to the outside system, one portal on the "others" plan, 2 worker processes."""
    from django.conf import settings
    from django.utils import timezone

    from bench.openlines import Receiver
    from openlines import lifecycle, registry, tasks
    from openlines.models import Delivery, InboundMessage, OutboundMessage
    from sandbox.standin import rest_imconnector as imc

    print(
        "\n5. operator replies -> the outside system, one portal on the 'others' plan, 2 worker processes, our "
        f"pacing on, {settings.OPENLINES_STATUS_BATCH} statuses per call"
    )
    rows, detail = [], []
    for count, chats in args.replies:
        b24 = standin.add_portal()
        b24.set_plan("others")
        receiver = Receiver(0)
        channel, secret = lifecycle.connect(install(client, b24), registry.HTTP, "1", user_id="1", webhook_url="")
        settings.OPENLINES_TASKS_INLINE = True  # each chat's first message, delivered here: the chats exist
        for chat in range(chats):
            poster.post(channel, secret, f"r{chat}", f"hello {chat}")
        while InboundMessage.objects.filter(channel=channel).exclude(state=Delivery.SENT).exists():
            tasks.deliver_inbound(channel.pk)  # (the install's requests took part of the bucket: 503s come back)
            InboundMessage.objects.filter(state=Delivery.FAILED).update(next_attempt_at=timezone.now())
            time.sleep(0.5)
        settings.OPENLINES_TASKS_INLINE = False
        type(channel).objects.filter(pk=channel.pk).update(webhook_url=receiver.url)
        conversations = imc.conversations(b24)
        assert len(conversations) == chats, len(conversations)
        b24.set_plan("others")  # a full bucket for the replies
        worker = start_worker(2, f"replies-{count}", pacing=True)
        time.sleep(4)  # connected to the broker
        before = len(b24.requests)
        started = time.time()
        for i in range(count):  # Bitrix24 posts each reply's event right after the operator writes it
            chat = conversations[i % chats]
            write_reply(client, b24, chat, f"reply {i}")
        written = time.time() - started
        deadline = time.monotonic() + 900
        while len(receiver.seen) < count or OutboundMessage.objects.filter(status_reported_at__isnull=True).exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"{len(receiver.seen)} of {count} replies at the receiver after the timeout")
            time.sleep(0.1)
        stop_worker(worker)
        receiver.server.shutdown()
        assert len(receiver.seen) == count and max(receiver.seen.values()) == 1, receiver.seen.most_common(3)
        made = b24.requests[before:]
        last_post = max(receiver.arrived.values()) - started
        reported = max(OutboundMessage.objects.values_list("status_reported_at", flat=True)).timestamp() - started
        by_method: dict[str, int] = {}
        for r in made:
            by_method[r["method"]] = by_method.get(r["method"], 0) + 1
        history = by_method.get("imopenlines.session.history.get", 0)
        batches = by_method.get("batch", 0)
        statuses = by_method.get("imconnector.send.status.delivery", 0)
        limited = sum(1 for r in made if r["status"] == 503)
        burst, drain = b24.rate_limit_burst, b24.rate_limit_drain
        floor = max(len(made) - burst, 0) / drain
        fewest = math.ceil(chats / 50) + math.ceil(count / settings.OPENLINES_STATUS_BATCH)
        least = max(fewest - burst, 0) / drain
        rows.append(
            [
                f"{count} over {chats} chats",
                f"{written:.1f}",
                f"{last_post:.1f}",
                f"{reported:.1f}",
                f"{history} + {batches} batch",
                statuses,
                len(made),
                limited,
                f"{floor:.1f}",
                f"{fewest} -> {least:.1f}",
            ]
        )
        detail.append(f"  {count} replies: requests by method {dict(sorted(by_method.items()))}")
        print(f"  {rows[-1]}", flush=True)  # (each case as it ends; the table follows)
    print(
        common.table(
            rows,
            [
                "replies",
                "written s",
                "last at webhook s",
                "last status s",
                "history requests",
                "status calls",
                "REST requests",
                "503s",
                "their floor s",
                "fewest requests -> floor s",
            ],
        )
    )
    print("\n".join(detail))


def event_profile(args, standin, client, poster, callers: str = "") -> None:
    """Part 6: the per-event path of reply events in one process: --event-profile N reply events of one portal
    (over 5 chats) stored through /events/, then the inbox task's body (`inbox.queue.process`) for each, here
    under cProfile (the follow-up tasks go to the broker, no worker takes them): CPU per event, and where."""
    from django.conf import settings
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from inbox import queue
    from inbox.models import InboxItem
    from openlines import lifecycle, registry, tasks
    from openlines.models import Delivery, InboundMessage, OutboundMessage
    from sandbox.standin import rest_imconnector as imc

    count, chats = args.event_profile, 5
    print(f"\n6. the per-event path: {count} reply events of one portal over {chats} chats, the inbox task body here")
    b24 = standin.add_portal()
    channel, secret = lifecycle.connect(install(client, b24), registry.HTTP, "1", user_id="1", webhook_url="")
    settings.OPENLINES_TASKS_INLINE = True
    for chat in range(chats):
        poster.post(channel, secret, f"e{chat}", f"hello {chat}")
    while InboundMessage.objects.filter(channel=channel).exclude(state=Delivery.SENT).exists():
        tasks.deliver_inbound(channel.pk)
        time.sleep(0.2)
    settings.OPENLINES_TASKS_INLINE = False
    conversations = imc.conversations(b24)
    InboxItem.objects.all().delete()
    for i in range(count):
        chat = conversations[i % chats]
        write_reply(client, b24, chat, f"reply {i}")
    ids = list(InboxItem.objects.order_by("id").values_list("pk", flat=True))
    before = len(b24.requests)
    profiler = cProfile.Profile()
    with CaptureQueriesContext(connection) as queries, common.Timer() as timer:
        cpu = time.process_time()
        profiler.enable()
        marks = []
        for pk in ids:  # the Celery task's body, one event after the other, as one worker runs its lane
            marks.append(len(queries))
            queue.process(pk)
        profiler.disable()
        cpu = time.process_time() - cpu
    runs = InboxItem.objects.filter(state=InboxItem.State.DONE).count()
    stored = OutboundMessage.objects.filter(channel=channel).count()
    assert stored == count, (stored, count)
    print(
        f"  {runs} events processed, {stored} replies queued; {1000 * timer.seconds / count:.1f} ms wall, "
        f"{1000 * cpu / count:.1f} ms CPU per event (profiled); {len(queries) / count:.1f} SQL statements and "
        f"{(len(b24.requests) - before) / count:.2f} REST requests per event"
    )
    middle = count // 2
    print(f"  the statements of event {middle}:")
    for query in queries.captured_queries[marks[middle] : marks[middle + 1]]:
        print(f"    {query['time']}s  {query['sql'][:150]}")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(r"inbox|openlines|bitrix24", 30)
    print("\n".join(out.getvalue().splitlines()[:50]))
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
    print("\n".join(out.getvalue().splitlines()[:40]))
    if callers:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_callers(callers)
        print("\n".join(out.getvalue().splitlines()[:60]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=["embedded", "rabbitmq"], default="embedded")
    parser.add_argument("--portals", type=int, default=100)
    parser.add_argument("--chats", type=int, default=10)
    parser.add_argument("--per-chat", type=int, default=3)
    parser.add_argument("--workers", default="1,2,4", type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--burst", type=int, default=1000, help="messages at once to one portal in part 2")
    parser.add_argument(
        "--bucket", default="1000", type=lambda v: [int(x) for x in v.split(",")], help="part 3's sizes, e.g. 1000,3000"
    )
    parser.add_argument(
        "--replies",
        default="300:5,1000:50",
        type=lambda v: [tuple(int(x) for x in p.split(":")) for p in v.split(",")],
        help="part 5's cases, replies:chats, e.g. 300:5,1000:50",
    )
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to skip: throughput,fairness,bucket,profile,replies,events"
    )
    parser.add_argument("--profile-callers", default="", help="also print who calls the functions matching this")
    parser.add_argument("--event-profile", type=int, default=300, help="part 6's reply events")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    run = f"{os.getpid()}-{secrets.token_hex(3)}"
    broker_dir = common.ARTIFACTS / f"broker-relay-{run}"
    os.environ["CELERY_QUEUE"] = f"b24bench-relay-{run}"
    os.environ["CELERY_BROKER_DIR"] = str(broker_dir)
    if args.broker == "rabbitmq":
        os.environ["CELERY_BROKER_URL"] = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
    else:
        os.environ["CELERY_BROKER_URL"] = "filesystem://"
        os.environ.setdefault("CELERY_POLLING_INTERVAL", "0.05")
        os.environ["B24_SINGLE_MACHINE"] = "true"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["OPENLINES_INBOUND_PER_MINUTE"] = "0"  # the channel's own budget: this measures what is behind it
    os.environ.setdefault("B24_RATE_LIMIT_PER_SECOND", "0")  # no portal's bucket binds in 1 and 2
    os.environ["OPENLINES_ALLOW_PRIVATE_WEBHOOKS"] = "true"  # part 5's receiver listens on 127.0.0.1
    with common.standin() as standin:
        common.setup_django(oauth_url=standin.oauth_url)
        from django.conf import settings
        from django.test import Client

        from b24widget.celery import app
        from openlines import lifecycle, registry

        settings.OPENLINES_ALLOW_PRIVATE_WEBHOOKS = True
        with common.bench_database(keep=args.keep_db), common.bench_cache():
            common.print_header(f"relay at scale: {args.broker} broker, {args.portals} portals x {args.chats} chats")
            print(
                f"OPENLINES_SEND_BATCH {settings.OPENLINES_SEND_BATCH}, OPENLINES_RUN_BATCH "
                f"{settings.OPENLINES_RUN_BATCH}, OPENLINES_LEASE_SECONDS {settings.OPENLINES_LEASE_SECONDS}"
            )
            client = Client()
            channels = []
            for _ in range(args.portals):
                b24 = standin.add_portal()
                stored = install(client, b24)
                channels.append(lifecycle.connect(stored, registry.HTTP, "1", user_id="1", webhook_url=""))
            # Part 3's portal, on the "others" plan from the install on (its stored plan paces our calls).
            paced_b24 = standin.add_portal()
            paced_b24.set_plan("others")
            paced = lifecycle.connect(install(client, paced_b24), registry.HTTP, "1", user_id="1", webhook_url="")
            from inbox.models import InboxItem

            InboxItem.objects.all().delete()  # the installs' ONAPPINSTALL rows: not this bench's subject
            with app.connection_for_write() as conn, contextlib.suppress(NotFound):
                # (none when no task was ever sent: on PostgreSQL the requests send none, the dispatcher does)
                conn.default_channel.queue_purge(app.conf.task_default_queue)
            poster = Poster()
            try:
                if "throughput" not in skip:
                    throughput(args, channels, poster)
                if "fairness" not in skip:
                    fairness(args, channels, poster)
                if "bucket" not in skip:
                    bucket(args, paced, paced_b24, poster)
                if "profile" not in skip:
                    profile(channels, poster, args.profile_callers)
                if "replies" not in skip:
                    replies(args, standin, client, poster)
                if "events" not in skip:
                    event_profile(args, standin, client, poster, args.profile_callers)
            finally:
                common.drop_own_queue(broker_dir)


if __name__ == "__main__":
    main()
