"""A portal's limits (settings/performance/limits.md): the request-rate leaky bucket and operating time.

- Rate: every HTTP request adds one to a counter that drains ``Y`` per second; past ``X`` the request
  answers 503 ``QUERY_LIMIT_EXCEEDED``. ``X``/``Y`` per plan: Enterprise 250/5, others 50/2. A batch is
  one request.
- Operating time: per app and method, summed in ten one-minute baskets; each basket leaves the sum 10
  minutes after its first call (``operating_reset_at``). A method whose sum already exceeds the limit
  (480 s in the docs' example) answers 429 ``OPERATION_TIME_LIMIT``; other methods go on. The outer
  ``batch`` is not counted; its nested methods are, each against its own sum.
"""

from __future__ import annotations

import time

__all__ = ["PLANS", "Limits"]

# settings/performance/limits.md, "Request Rate Limits": (limit before blocking X, drain per second Y)
PLANS = {"enterprise": (250, 5.0), "others": (50, 2.0)}
BASKET_SECONDS = 60
WINDOW_SECONDS = 600  # ten one-minute baskets
DEFAULT_OPERATING_LIMIT = 480.0  # the docs' example limit; the cloud's own value is configuration


class Limits:
    """Operating-time baskets per (client_id, method); the rate bucket lives on the Portal (its knobs)."""

    def __init__(self):
        self.operating_limit = DEFAULT_OPERATING_LIMIT
        # Seconds each call of a method counts for (instead of its real, tiny duration): set to make a
        # method expensive, e.g. {"crm.item.list": 20.0}.
        self.operating_cost: dict[str, float] = {}
        self._baskets: dict[tuple, list] = {}  # (client_id, method) -> [[first_call_at, seconds], ...]

    def _live(self, key, now):
        baskets = [b for b in self._baskets.get(key, []) if b[0] + WINDOW_SECONDS > now]
        self._baskets[key] = baskets
        return baskets

    def blocked(self, client_id, method, now=None) -> bool:
        """True when the method's sum already exceeds the limit (checked before each call)."""
        now = time.time() if now is None else now
        return sum(b[1] for b in self._live((client_id, method), now)) > self.operating_limit

    def spend(self, client_id, method, seconds, now=None) -> tuple[float, int]:
        """Count a finished call; return (operating, operating_reset_at) for its ``time`` block."""
        now = time.time() if now is None else now
        key = (client_id, method)
        baskets = self._live(key, now)
        seconds = self.operating_cost.get(method, seconds)
        if baskets and now < baskets[-1][0] + BASKET_SECONDS:
            baskets[-1][1] += seconds
        else:
            baskets.append([now, seconds])
        return sum(b[1] for b in baskets), int(baskets[0][0] + WINDOW_SECONDS)
