"""The embedded broker: kombu's filesystem transport, with every message whole before a worker can see it.

kombu's filesystem transport creates a message's file under its final name and then writes into it; a worker
polling the folder in between moves the file away, reads nothing or half of it, fails to decode it and dies (the
message is gone with it: the inbox sweeper re-sends the event, a channel run is started again by its sweep, but
the worker restarts and everything it held waits). Here a message is written under a name no consumer looks at
(it does not end in `.<queue>.msg`) and renamed into place once complete: a rename within one folder is atomic, so
a consumer finds whole messages or none. Reading, ordering and the control folder are kombu's own.

Used when CELERY_BROKER_URL is `filesystem://` (settings: CELERY_BROKER_TRANSPORT).
"""

import contextlib
import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        # The name kombu gives a message (its first part orders the queue), written under a hidden name first.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
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
