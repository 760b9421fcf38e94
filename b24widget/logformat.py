"""The plain log format (the DEBUG default): the message, then the structured fields as key=value.

`log.info("portal event", extra={"member_id": ..., "event": ...})` prints
`... INFO portals.lifecycle portal event member_id=abc123 event=installed`; the JSON format carries the
same fields as keys. Which attributes are "extra" is python-json-logger's list of LogRecord's own.
"""

import json
import logging

from pythonjsonlogger.core import RESERVED_ATTRS

_OWN = set(RESERVED_ATTRS) | {"message", "asctime"}


def _value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    if text == "" or any(c in text for c in ' ="\n\t'):
        return json.dumps(text, ensure_ascii=False)  # quoted, so a field never reads as two
    return text


class PlainFormatter(logging.Formatter):
    """logging.Formatter plus ` key=value` for every field passed in `extra`, in the order given."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{key}={_value(value)}"
            for key, value in record.__dict__.items()
            if key not in _OWN and not key.startswith("_")
        ]
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # keep a traceback below the fields' line
        return f"{head} {' '.join(fields)}{newline}{rest}"
