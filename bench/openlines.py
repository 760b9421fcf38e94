"""The Open Lines channel under load: 1,000 inbound messages to one portal, 1,000 operator replies out.

Run: DATABASE_URL=postgres://postgres@127.0.0.1:5432/<name>_bench .venv/bin/python bench/openlines.py \
       [--messages 1000] [--chats 50] [--flaky 10]

In-process, over real HTTP to the stand-in, on the bench database and cache (bench.settings). The portal
runs the "others" plan's physical limit (settings/performance/limits.md: a burst of 50, then 2 requests/s;
past it the stand-in answers 503 QUERY_LIMIT_EXCEEDED).
  1. inbound: --messages signed POSTs to /channels/<id>/messages (Django's test Client; 202 each, the
     delivery queued, not run), spread over --chats chats; then one worker drains the channel
     (openlines.tasks.deliver_inbound, as Celery would run it): wall time, REST requests the portal took,
     messages per imconnector.send.messages call, limit errors the portal answered and those that reached
     a caller (rows not delivered), next to what the limit alone would allow.
  2. outbound: --messages operator replies (the OnImConnectorMessageAdd handler, as the inbox runs it, each
     confirmed with imopenlines.session.history.get; by default as a backlog: every event stored through
     /events/ first, then the inbox processed as a worker would (a history miss asks for up to 50 waiting
     chats in one batch request); --live: each event handled as soon as its reply is written) to a local
     webhook receiver that answers 503 to every --flaky-th POST once; one worker drains
     (deliver_outbound, re-run until nothing is due, the backoff skipped): wall time, webhook POSTs,
     retries, duplicates received (must be 0), delivery-status calls to Bitrix24.
Asserts only that every message arrived exactly once.
"""

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as common
from bench.rest_list import install


class Receiver:
    def __init__(self, flaky: int):
        self.seen, self.posts, self.refused, self.flaky, self.lock = Counter(), 0, 0, flaky, threading.Lock()
        self.arrived: dict[str, float] = {}  # message id -> when it first arrived (time.time())
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = body["message"]["id"]
                with receiver.lock:
                    receiver.posts += 1
                    fail = receiver.flaky and receiver.posts % receiver.flaky == 0
                    if fail:
                        receiver.refused += 1
                    else:
                        receiver.seen[key] += 1
                        receiver.arrived.setdefault(key, time.time())
                self.send_response(503 if fail else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server, self.url = common.serve_hook(Handler)


class Item:
    def __init__(self, portal, event, data):
        self.portal, self.event, self.data = portal, event, data


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--chats", type=int, default=50)
    parser.add_argument("--flaky", type=int, default=10, help="the receiver refuses every n-th POST once (0: never)")
    parser.add_argument(
        "--live",
        action="store_true",
        help="handle each reply's event as soon as it is written (one history call each), "
        "not as a backlog after all of them",
    )
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    with common.standin() as standin:
        common.setup_django(oauth_url=standin.oauth_url)
        from celery import current_app
        from django.conf import settings
        from django.test import Client

        from bitrix24 import limits
        from inbox import queue as inbox
        from openlines import events, lifecycle, registry, tasks
        from openlines.models import Delivery, InboundMessage, OutboundMessage
        from sandbox.standin import rest_imconnector as imc

        # The tasks are queued to a broker nobody reads: this process is the one worker, drained below.
        current_app.conf.broker_url = "memory://"
        settings.OPENLINES_ALLOW_PRIVATE_WEBHOOKS = True
        # The channel's own budget (OPENLINES_INBOUND_PER_MINUTE) is off: this measures the pipeline behind it.
        settings.OPENLINES_INBOUND_PER_MINUTE = 0
        with common.bench_database(keep=args.keep_db), common.bench_cache():
            common.print_header(f"openlines: {args.messages:,} messages in, {args.messages:,} replies out")
            client = Client()
            b24 = standin.add_portal()
            stored = install(client, b24)
            receiver = Receiver(args.flaky)
            channel, secret = lifecycle.connect(stored, registry.HTTP, "1", user_id="1", webhook_url=receiver.url)
            b24.set_plan("others")
            burst, rate = limits.bucket(stored.rest_plan)  # our pacing for the portal's plan (or the override)
            print(
                f"portal limit: burst {b24.rate_limit_burst}, {b24.rate_limit_drain:g}/s; our pacing: burst "
                f"{burst}, {rate:g}/s; {settings.OPENLINES_SEND_BATCH} messages per send.messages call"
            )

            # 1. inbound
            with common.Timer() as accepting:
                for i in range(args.messages):
                    payload = {
                        "chat": {"id": f"chat-{i % args.chats}"},
                        "user": {"id": f"u-{i % args.chats}"},
                        "message": {"id": f"m-{i}", "text": f"message {i}"},
                    }
                    answer = common.post_signed(client, channel, secret, payload)
                    assert answer.status_code == 202, answer.content
            before = len(b24.requests)
            with common.Timer() as draining:
                while InboundMessage.objects.exclude(state__in=[Delivery.SENT, Delivery.DEAD]).exists():
                    tasks.deliver_inbound(channel.pk)
                    InboundMessage.objects.filter(state=Delivery.FAILED).update(next_attempt_at=stored.created_at)
            requests = b24.requests[before:]
            calls = b24.calls("imconnector.send.messages")
            limit_errors = sum(1 for r in requests if r["status"] == 503)
            lost = InboundMessage.objects.exclude(state=Delivery.SENT).count()
            texts = [m["text"] for c in imc.conversations(b24) for m in c["messages"]]
            assert len(texts) == len(set(texts)) == args.messages, (len(texts), len(set(texts)))
            burst = b24.rate_limit_burst
            floor = max(calls - burst, 0) / b24.rate_limit_drain
            print(
                common.table(
                    [
                        [
                            args.messages,
                            f"{accepting.seconds:.2f}",
                            f"{1000 * accepting.seconds / args.messages:.1f}",
                            f"{draining.seconds:.2f}",
                            len(requests),
                            calls,
                            f"{args.messages / max(calls, 1):.1f}",
                            limit_errors,
                            lost,
                            f"{floor:.1f}",
                        ]
                    ],
                    [
                        "inbound",
                        "accept s",
                        "ms/POST",
                        "deliver s",
                        "REST requests",
                        "send.messages calls",
                        "msgs/call",
                        "503 limit answers",
                        "not delivered",
                        "limit floor s",
                    ],
                )
            )

            # 2. outbound: each reply's event is confirmed with the portal (imopenlines.session.history.get)
            chat_ids = [c["chat_id"] for c in imc.conversations(b24)]
            external_of = {c["chat_id"]: c["external_chat"] for c in imc.conversations(b24)}

            def handle(chat_id, message_id, i):
                events.on_message_add(
                    Item(
                        stored,
                        "ONIMCONNECTORMESSAGEADD",
                        {
                            "CONNECTOR": registry.HTTP.id,
                            "LINE": "1",
                            "MESSAGES": [
                                {
                                    "im": {"chat_id": chat_id, "message_id": message_id},
                                    "message": {"user_id": 1, "text": f"reply {i}"},
                                    "chat": {"id": external_of[chat_id]},
                                }
                            ],
                        },
                    )
                )

            history_before, batches_before = b24.calls("imopenlines.session.history.get"), b24.calls("batch")
            with common.Timer() as storing:
                for i in range(args.messages):
                    chat_id = chat_ids[i % len(chat_ids)]
                    message_id, _ = imc.operator_reply(b24, chat_id, f"reply {i}", handlers=[])
                    if args.live:  # each event handled as soon as its reply is written
                        handle(chat_id, message_id, i)
                    else:  # Bitrix24 delivers the event to /events/; the inbox stores it for a worker
                        answer = client.post(
                            "/events/",
                            b24.event_payload(
                                "ONIMCONNECTORMESSAGEADD",
                                data={
                                    "CONNECTOR": registry.HTTP.id,
                                    "LINE": "1",
                                    "MESSAGES": [
                                        {
                                            "im": {"chat_id": chat_id, "message_id": message_id},
                                            "message": {"user_id": 1, "text": f"reply {i}"},
                                            "chat": {"id": external_of[chat_id]},
                                        }
                                    ],
                                },
                                with_tokens=False,
                            ),
                        )
                        assert answer.status_code == 200, answer.content
                if not args.live:  # a worker catching up with the backlog of events
                    inbox.process_pending(limit=args.messages * 2)
            history_calls = b24.calls("imopenlines.session.history.get") - history_before
            history_batches = b24.calls("batch") - batches_before
            status_before = b24.calls("imconnector.send.status.delivery")
            with common.Timer() as sending:
                runs = 0
                while OutboundMessage.objects.exclude(state__in=[Delivery.SENT, Delivery.DEAD]).exists():
                    tasks.deliver_outbound(channel.pk)
                    OutboundMessage.objects.filter(state=Delivery.FAILED).update(next_attempt_at=stored.created_at)
                    runs += 1
            duplicates = sum(n - 1 for n in receiver.seen.values() if n > 1)
            assert len(receiver.seen) == args.messages and duplicates == 0, (len(receiver.seen), duplicates)
            print(
                common.table(
                    [
                        [
                            args.messages,
                            "live" if args.live else "backlog",
                            f"{storing.seconds:.2f}",
                            history_calls,
                            history_batches,
                            f"{sending.seconds:.2f}",
                            receiver.posts,
                            receiver.refused,
                            duplicates,
                            runs,
                            b24.calls("imconnector.send.status.delivery") - status_before,
                        ]
                    ],
                    [
                        "outbound",
                        "events",
                        "handler s",
                        "history calls",
                        "in batch requests",
                        "deliver s",
                        "webhook POSTs",
                        "retries (503)",
                        "duplicates",
                        "worker runs",
                        "send.status.delivery calls",
                    ],
                )
            )
            receiver.server.shutdown()


if __name__ == "__main__":
    main()
