"""The switches tests turn on a portal: expired tokens, blocks, scripted errors, plans, features, an unreachable
app, slow and big answers."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .errors import REST_ERROR_DESCRIPTION
from .faults import Faults, oversized_shape, slow_shape
from .limits import PLANS

if TYPE_CHECKING:  # core imports portal, which imports this module
    from .core import StandIn

__all__ = ["Switches"]


class Switches:
    """Mixed into ``Portal``; every switch takes the stand-in's lock."""

    # The portal's state the switches turn, set up by Portal.__init__ (declared here for the type checker).
    _standin: StandIn
    _blocked: str | None  # the OAuth error a blocked portal answers
    _failures: dict[str, list[tuple[str, str, int]]]  # method -> scripted (error, description, status)
    _faults: Faults
    license: str
    features: dict[str, bool]  # feature.get codes this portal has (rest_offline_extended ...)
    _app_unreachable: bool

    def expire_access_tokens(self) -> None:
        """Every access token minted so far answers expired_token."""
        with self._standin.lock:
            for grant in self._standin._access.values():
                if grant.portal is self:
                    grant.expires = 0

    def block(self, error: str) -> None:
        """OAuth refresh answers ``error`` from now on; REST answers the matching error if any."""
        with self._standin.lock:
            self._blocked = error

    def unblock(self) -> None:
        with self._standin.lock:
            self._blocked = None

    def app_unreachable(self, on: bool = True) -> None:
        """The app's server is down (a deployment, an outage): every online event delivery of this portal
        fails, unsent, while the offline queue keeps recording (api-reference/events/index.md: "If your
        server does not respond or returns an error ... will not resend the event"; offline-events.md).
        ``app_unreachable(False)``: the app is back."""
        with self._standin.lock:
            self._app_unreachable = bool(on)

    def set_feature(self, code: str, available: bool = True) -> None:
        """Whether the portal's plan has a ``feature.get`` code (api-reference/common/system/feature-get.md);
        ``set_feature("rest_offline_extended", False)`` is a plan without offline events."""
        with self._standin.lock:
            self.features[code] = bool(available)

    def feature_available(self, code: str) -> bool:
        with self._standin.lock:
            return bool(self.features.get(code))

    def fail_next(self, method: str, error: str, status: int, times: int = 1, description: str | None = None) -> None:
        """The next ``times`` calls of ``method`` (direct or in a batch) answer this error."""
        description = description or REST_ERROR_DESCRIPTION.get(error, "Simulated failure")
        with self._standin.lock:
            self._failures.setdefault(method.lower(), []).extend([(error, description, status)] * times)

    def set_plan(self, plan: str) -> None:
        """Turn on the request-rate limit of a plan: ``"enterprise"`` (250, then 5/s) or ``"others"`` (50, 2/s).

        settings/performance/limits.md; past the burst a request answers 503 QUERY_LIMIT_EXCEEDED.
        """
        burst, drain = PLANS[plan.lower()]
        with self._standin.lock:
            # app.info's LICENSE names the plan (api-reference/common/system/app-info.md: de_ent250 ...).
            if (plan.lower() == "enterprise") != self.license.split("_", 1)[-1].startswith("ent"):
                self.license = "en_ent250" if plan.lower() == "enterprise" else "en_project"
            self.rate_limit, self.rate_limit_burst, self.rate_limit_drain = True, burst, drain
            self._bucket, self._bucket_at = 0.0, time.monotonic()

    def slow_answer(self, method: str, *, chunk: int = 1, pause: float = 0.5, times: int = 1) -> None:
        """The next ``times`` answers of ``method`` trickle out ``chunk`` bytes every ``pause`` seconds."""
        self._faults.add(method, slow_shape(chunk, pause), times)

    def oversized_answer(self, method: str, megabytes: float = 4, *, times: int = 1) -> None:
        """The next ``times`` answers of ``method`` carry ``megabytes`` of padding (still valid JSON)."""
        self._faults.add(method, oversized_shape(megabytes), times)
