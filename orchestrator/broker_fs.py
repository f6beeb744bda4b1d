"""Kombu's filesystem transport, with messages that appear in the queue folder only when whole.

The stock transport creates a message file under its final name, then locks and writes it. Its
reader does not take that (advisory) lock: it moves any file named like a message out of the
folder and reads it. A worker polling while a message is being written can therefore take an
empty or half-written file, fail to decode it, and stop (the embedded default's worker exited
with code 1 this way under load). Here a message is written under a name the reader ignores and
renamed into place, which is atomic within one directory. Used by the embedded default
(``CELERY_BROKER_URL=filesystem://``) through ``broker_transport``.
"""

from __future__ import annotations

import os
import time
import uuid

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(time.monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".part"  # the reader takes only names ending in "<queue>.msg"
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
