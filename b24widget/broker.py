"""The embedded broker: kombu's filesystem transport, with every message whole before a worker can see it.

kombu's filesystem transport creates a message's file under its final name and then writes into it; a worker
polling the folder in between moves the file away, reads nothing or half of it, fails to decode it and dies (the
message is gone with it: the inbox sweeper re-sends the event, a channel run is started again by its sweep, but
the worker restarts and everything it held waits). Here a message is written under a name no consumer looks at
(it does not end in `.<queue>.msg`) and renamed into place once complete: a rename within one folder is atomic, so
a consumer finds whole messages or none. Reading and the control folder are kombu's own.

Order: kombu's consumer takes the folder's messages in the sorted order of their names, and kombu names a message
by the milliseconds of the machine's monotonic clock, unpadded. Sorted as text, a name from after that count gains
a digit (at 16 min 40 s of uptime, then 2 h 47 min, 27 h 47 min, 11.6 days) comes before every older one: the
older messages wait until the queue is empty (a channel's next task, queued after a burst's, ran after all of
it). And the clock starts again at each boot, so a message left from before a reboot would wait behind every
new one. Here the name starts with `t` and the wall clock's nanoseconds, zero-padded to a fixed width
(`message_name`): text order is time order, across processes and reboots (a clock stepped back reorders only that
step's messages; nothing relies on the broker's order for correctness, the database keeps each channel's order).
The `t` sorts after every digit, so messages an older release named (digits first) are taken before any new one.

Used when CELERY_BROKER_URL is `filesystem://` (settings: CELERY_BROKER_TRANSPORT).
"""

import contextlib
import os
import time
import uuid

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


def message_name(queue: str, at_ns: int) -> str:
    """A message's file name: `t<nanoseconds, 20 digits>_<uuid>.<queue>.msg` (kombu's consumer takes what ends in
    `.<queue>.msg`, in sorted order; the fixed width makes that the order of `at_ns`, and the `t` puts it after
    what an older release left, named by digits alone)."""
    return f"t{at_ns:020d}_{uuid.uuid4()}.{queue}.msg"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        # Named by when it was put (the first part orders the queue), written under a hidden name first.
        name = message_name(queue, time.time_ns())
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(partial, "wb") as part:
                part.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(partial)
            raise ChannelError(f"Cannot add a message to {self.data_folder_out!r}") from exc


class Transport(filesystem.Transport):
    Channel = Channel
