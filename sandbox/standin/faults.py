"""Answer-shaping faults for tests of a client's deadlines and size caps: slow and oversized answers.

Not Bitrix24 behaviour anyone documents; networks and overloaded servers do it. Scripted per target
(a REST method name, or ``oauth.token`` / ``app.info`` on the OAuth server), consumed one per answer,
through ``StandIn.slow_answer``/``oversized_answer`` and ``Portal.slow_answer``/``oversized_answer``.
"""

from __future__ import annotations

__all__ = ["Faults", "shaped"]


class Faults:
    """The queue of scripted answer shapes per target (guarded by the stand-in's lock)."""

    def __init__(self, lock):
        self._lock = lock
        self._queue: dict[str, list] = {}

    def add(self, target, shape, times):
        with self._lock:
            self._queue.setdefault(target.lower(), []).extend([shape] * times)

    def take(self, target):
        with self._lock:
            queue = self._queue.get((target or "").lower())
            return queue.pop(0) if queue else None


def slow_shape(chunk, pause):
    if int(chunk) < 1 or float(pause) < 0:
        raise ValueError("chunk >= 1 byte and pause >= 0 seconds")
    return ("slow", int(chunk), float(pause))


def oversized_shape(megabytes):
    if float(megabytes) <= 0:
        raise ValueError("megabytes > 0")
    return ("big", int(float(megabytes) * 1024 * 1024))


def shaped(owner, target, response):
    """``response`` as the next scripted fault for ``target`` on ``owner`` (a StandIn or Portal) shapes it."""
    shape = owner._faults.take(target)
    if shape is None:
        return response
    if shape[0] == "slow":
        response.trickle = (shape[1], shape[2])
    elif shape[0] == "big" and response.body.endswith(b"}"):
        # Still valid JSON, just too large: only a client's size cap stops reading it.
        response.body = response.body[:-1] + b',"padding":"' + b"x" * shape[1] + b'"}'
    return response
