"""Events for portals nobody installed (issue 23): a stranger's flood stays within the documented budgets.

Run: .venv/bin/python bench/unproven.py [--events 10000]

In-process (bench.settings, the bench database and cache), over real HTTP to the stand-in's OAuth server. A
stranger POSTs --events forged ONAPPINSTALLs to /events/, each for a made-up member_id with made-up tokens (so
each portal's own budget never binds: only the deployment-wide one can), as fast as one thread can; then the
stored rows are processed here as a worker would (inbox.process_pending, repeated until nothing is left that
can run now). Prints the answers by status, the rows stored and the OAuth requests made, next to what the
settings allow: B24_INBOX_UNPROVEN_BURST + B24_INBOX_UNPROVEN_PER_MINUTE x minutes rows (and at most
B24_INBOX_UNPROVEN_MAX_WAITING unfinished at once), B24_UNVERIFIED_OAUTH_GLOBAL_PER_MINUTE / 6 (its burst,
bitrix24/oauth.py) + B24_UNVERIFIED_OAUTH_GLOBAL_PER_MINUTE x minutes OAuth requests. Asserts nothing about time.
"""

import argparse
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as common


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("LOG_LEVEL", "ERROR")
    with common.standin() as standin:
        common.setup_django(oauth_url=standin.oauth_url)
        from celery import current_app
        from django.conf import settings
        from django.test import Client

        from inbox import queue as inbox
        from inbox.models import InboxItem

        current_app.conf.broker_url = "memory://"  # this process is the one worker
        with common.bench_database(keep=args.keep_db), common.bench_cache():
            common.print_header(f"unproven: {args.events:,} forged ONAPPINSTALLs for made-up portals")
            client = Client()
            b24 = standin.add_portal()  # a template for the payload's shape; never installed
            answers: Counter = Counter()
            oauth_before = len(standin.oauth_requests)
            started = time.monotonic()
            for n in range(args.events):
                payload = b24.event_payload("ONAPPINSTALL", application_token=f"made-up-{n}")
                payload["auth[member_id]"] = f"{n:032x}"
                payload["auth[access_token]"] = f"forged-access-{n}"
                payload["auth[refresh_token]"] = f"forged-refresh-{n}"
                answers[client.post("/events/", payload).status_code] += 1
            posted = time.monotonic() - started
            stored = InboxItem.objects.count()
            while inbox.process_pending():
                pass
            minutes = (time.monotonic() - started) / 60
            oauth = len(standin.oauth_requests) - oauth_before
            states = Counter(InboxItem.objects.values_list("state", flat=True))
            rows_allowed = settings.B24_INBOX_UNPROVEN_BURST + math.ceil(
                settings.B24_INBOX_UNPROVEN_PER_MINUTE * posted / 60
            )
            global_per_minute = settings.B24_UNVERIFIED_OAUTH_GLOBAL_PER_MINUTE  # its burst: 10 s worth (oauth.py)
            oauth_allowed = max(int(global_per_minute // 6), 1) + math.ceil(global_per_minute * minutes)
            print(f"posted in {posted:.1f} s ({args.events / posted:.0f}/s); processed until {minutes * 60:.1f} s")
            print(
                common.table(
                    [
                        ["answers", ", ".join(f"{k}: {v:,}" for k, v in sorted(answers.items())), ""],
                        ["rows stored", f"{stored:,}", f"at most {rows_allowed:,} (burst + per minute)"],
                        [
                            "rows waiting at once",
                            f"{stored:,} (none processed while posting)",
                            f"at most {settings.B24_INBOX_UNPROVEN_MAX_WAITING:,}",
                        ],
                        ["OAuth requests", f"{oauth:,}", f"at most {oauth_allowed:,} (global burst + per minute)"],
                        ["rows by state after", ", ".join(f"{k}: {v:,}" for k, v in sorted(states.items())), ""],
                    ],
                    ["what", "measured", "the budget"],
                )
            )


if __name__ == "__main__":
    main()
