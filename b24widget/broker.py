"""The embedded broker: kombu's filesystem transport, with a message written whole before it can be taken.

kombu's writer creates `<time>_<uuid>.<queue>.msg` in the queue folder and then writes into it; a worker
polling the folder may move and read it in between and get an empty or cut message, and the worker stops on
the JSON error ("Unrecoverable error: JSONDecodeError"; seen with the relay bench's burst of requeues). Here
the message is written to a hidden temporary name the reader skips (it takes only `*.<queue>.msg`) and then
renamed into place, which on one file system is atomic. Everything else is kombu's. b24widget/celery.py
makes it what `filesystem://` (CELERY_BROKER_URL's default) names.
"""

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        """Put `payload` onto `queue`: written under a temporary name, then renamed to kombu's."""
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        temporary = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(temporary, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(temporary, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
