"""A refused request, the one shape every entry point's refusals share: a stable reason code, the HTTP
status to answer, and when to try again (seconds for a Retry-After header, or None)."""


class Refusal(Exception):
    def __init__(self, reason: str, status: int = 403, retry_after: float | None = None):
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        super().__init__(reason)


def retry_after_header(seconds: float | None) -> str | None:
    """The Retry-After value (whole seconds, at least 1) for `seconds`, or None."""
    return None if seconds is None else str(max(int(seconds + 0.999), 1))
