"""One error family for everything the platform client raises, and the one shape of a refusal.

`Bitrix24Error` carries Bitrix24's (or our transport's) `code` and a `description` that never holds a
secret; the client's REST errors, the OAuth server's and the transport's all derive from it, so a caller
that only wants "Bitrix24 failed" catches one class.

`Refusal` is what an entry point of ours answers a sender it does not serve now: a stable reason code,
the HTTP status, and when to try again. Every refusal of the app is one of these (or a subclass named
for its place), rendered in one place for JSON and one for frames.
"""


class Bitrix24Error(Exception):
    """A failure of the platform or of reaching it. `code` is Bitrix24's code (or ours for transport)."""

    def __init__(self, code: str, description: str = ""):
        self.code = code
        self.description = description
        super().__init__(f"{code}: {description}" if description else code)


class Refusal(Exception):
    """A refused request: `reason` (stable code), `status` (HTTP), `retry_after` (seconds, or None)."""

    def __init__(self, reason: str, status: int = 403, retry_after: float | None = None):
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        super().__init__(reason)


# --- the transport (bitrix24/http.py) -----------------------------------------------------------


class HttpFailure(Bitrix24Error):
    """Nothing usable came back: `code` is `unreachable`, `deadline` or `too_large`; no secret in the text."""


# Answers a call may be sent again for, after its next slot (settings/performance/limits.md).
RETRYABLE = frozenset({"QUERY_LIMIT_EXCEEDED", "OPERATION_TIME_LIMIT"})


# --- REST ------------------------------------------------------------------------------------------


class RestError(Bitrix24Error):
    """A Bitrix24 REST failure. `code` is Bitrix24's error code; the text never holds a secret."""

    def __init__(self, code: str, description: str = "", *, http_status: int | None = None, method: str = ""):
        super().__init__(code, description)
        self.http_status = http_status
        self.method = method
        self.reset_at: float | None = None  # for OPERATION_TIME_LIMIT: when Bitrix24 resets the method's budget
        self.args = (f"{method}: {code}: {description}" if description else f"{method}: {code}",)


class TransportError(RestError):
    """The portal could not be reached or did not answer with Bitrix24 JSON."""


class PortalMovedUnexplained(RestError):
    """The portal answered with a redirect that the OAuth server does not confirm."""


class LimitWaitExceeded(RestError):
    """A Bitrix24 limit would make the call wait longer than the caller may; nothing was sent.

    `retry_after`: seconds until a slot is free (for a Retry-After header)."""

    def __init__(self, code: str, description: str = "", *, method: str = "", retry_after: float = 1.0):
        super().__init__(code, description, method=method)
        self.retry_after = retry_after


class TokenRefreshFailed(RestError):
    """The access token expired and could not be renewed (the portal may now be blocked)."""


# --- the OAuth server -----------------------------------------------------------------------------


class OAuthError(Bitrix24Error):
    """Base of OAuth failures. `code` is Bitrix24's error code; the text never holds a secret."""


class OAuthRejected(OAuthError):
    """The OAuth server answered with an error (or with a grant for another portal)."""


class OAuthUnavailable(OAuthError):
    """The OAuth server could not be reached or gave no usable answer; nothing is known."""


class PortalNotServing(OAuthError):
    """The portal is blocked or uninstalled: no refresh is attempted."""


class ClientMisconfigured(OAuthError):
    """The OAuth server refused our client_id / client_secret: the deployment's fault, not a portal's."""


class OAuthThrottled(OAuthError):
    """Too many unverified OAuth attempts for this portal (or overall), or one is in flight: refused at once."""

    def __init__(self, retry_after: float = 5.0):
        self.retry_after = retry_after
        super().__init__("throttled", "too many unverified attempts; try again later")


class RefreshInProgress(OAuthUnavailable):
    """Another caller is refreshing this portal right now; try again in a moment."""

    def __init__(self) -> None:
        super().__init__("refresh_in_progress", "another refresh of this portal is under way")
