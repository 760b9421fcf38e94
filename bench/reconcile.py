"""Reconciliation (issue 23): a backlog of operator replies whose events never came, recovered by the pass.

Run: DATABASE_URL=postgres://postgres@127.0.0.1:5432/<name>_bench .venv/bin/python bench/reconcile.py \
       [--replies 1000] [--chats 50]

In-process, over real HTTP to the stand-in, on the bench database and cache (bench.settings). The portal runs
the "others" plan's physical limit (settings/performance/limits.md: a burst of 50, then 2 requests/s). --chats
customers write once each (delivered to Bitrix24); then the app is unreachable (every event fails, and the
plan keeps no offline record) while operators write --replies replies over those chats. One reconciliation
pass (openlines.reconcile.reconcile, as beat runs it) and one worker draining the webhook deliveries
(deliver_outbound) recover them: wall time of each, REST requests the portal took by method, next to what the
limit alone would allow. Asserts only that every reply arrived exactly once and in order per chat.
"""

import argparse
import json
import os
import sys
import threading
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as common
from bench.rest_list import install


class Receiver:
    def __init__(self):
        self.got: dict[str, list[str]] = defaultdict(list)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.got[body["chat"]["id"]].append(body["message"]["text"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server, self.url = common.serve_hook(Handler)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replies", type=int, default=1000)
    parser.add_argument("--chats", type=int, default=50)
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("LOG_LEVEL", "ERROR")
    with common.standin() as standin:
        common.setup_django(oauth_url=standin.oauth_url)
        from celery import current_app
        from django.conf import settings
        from django.test import Client

        from openlines import lifecycle, reconcile, registry, tasks
        from openlines.models import Delivery, InboundMessage, OutboundMessage
        from sandbox.standin import rest_imconnector as imc

        current_app.conf.broker_url = "memory://"  # this process is the one worker, drained below
        settings.OPENLINES_ALLOW_PRIVATE_WEBHOOKS = True
        settings.OPENLINES_INBOUND_PER_MINUTE = 0
        with common.bench_database(keep=args.keep_db), common.bench_cache():
            common.print_header(f"reconcile: {args.replies:,} missed replies over {args.chats} chats")
            client = Client()
            b24 = standin.add_portal()
            stored = install(client, b24)
            receiver = Receiver()
            channel, secret = lifecycle.connect(stored, registry.HTTP, "1", user_id="1", webhook_url=receiver.url)
            b24.set_plan("others")
            b24.set_feature("rest_offline_extended", False)
            for i in range(args.chats):
                payload = {
                    "chat": {"id": f"chat-{i}"},
                    "user": {"id": f"u-{i}"},
                    "message": {"id": f"m-{i}", "text": "hi"},
                }
                answer = common.post_signed(client, channel, secret, payload)
                assert answer.status_code == 202, answer.content
            while InboundMessage.objects.exclude(state__in=[Delivery.SENT, Delivery.DEAD]).exists():
                tasks.deliver_inbound(channel.pk)
                InboundMessage.objects.filter(state=Delivery.FAILED).update(next_attempt_at=stored.created_at)
            conversations = imc.conversations(b24)
            b24.app_unreachable()
            written: dict[str, list[str]] = defaultdict(list)
            for i in range(args.replies):
                chat = conversations[i % len(conversations)]
                imc.operator_reply(b24, chat["chat_id"], f"reply {i}")
                written[chat["external_chat"]].append(f"reply {i}")
            channel.refresh_from_db()
            before = len(b24.requests)
            with common.Timer() as passing:
                counts = reconcile.reconcile(channel)
            pass_requests = Counter(r["method"] for r in b24.requests[before:])
            before = len(b24.requests)
            with common.Timer() as sending:
                while OutboundMessage.objects.exclude(state__in=[Delivery.SENT, Delivery.DEAD]).exists():
                    tasks.deliver_outbound(channel.pk)
                    OutboundMessage.objects.filter(state=Delivery.FAILED).update(next_attempt_at=stored.created_at)
            send_requests = Counter(r["method"] for r in b24.requests[before:])
            assert dict(receiver.got) == dict(written), "each reply once, in order per chat"
            total = sum(pass_requests.values()) + sum(send_requests.values())
            floor = max(total - b24.rate_limit_burst, 0) / b24.rate_limit_drain
            print(
                f"portal limit: burst {b24.rate_limit_burst}, {b24.rate_limit_drain:g}/s; "
                f"pass found {counts['add']} replies in {counts['chats']} chats"
            )
            print(
                common.table(
                    [
                        [
                            args.replies,
                            args.chats,
                            f"{passing.seconds:.2f}",
                            ", ".join(f"{m} {n}" for m, n in sorted(pass_requests.items())),
                            f"{sending.seconds:.2f}",
                            ", ".join(f"{m} {n}" for m, n in sorted(send_requests.items())),
                            total,
                            f"{floor:.1f}",
                            sum(len(v) for v in receiver.got.values()),
                        ]
                    ],
                    [
                        "replies",
                        "chats",
                        "pass s",
                        "pass REST requests",
                        "deliver s",
                        "deliver REST requests",
                        "total",
                        "limit floor s",
                        "received once",
                    ],
                )
            )
            receiver.server.shutdown()


if __name__ == "__main__":
    main()
