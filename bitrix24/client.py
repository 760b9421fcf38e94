"""The REST client for one portal: call, batch, list; retries, limits, moves.

Limits (settings/performance/limits.md; pacing in bitrix24/limits.py): every request waits for the
portal's bucket, the one of its plan; a QUERY_LIMIT_EXCEEDED answer slows that shared bucket and the
call is sent again at its next slot, never surfaced while the slot is within the caller's wait.
Operating time is billed per method: the outer `batch` is not, its commands are, each on its own
(`result_time`), so a method near its budget holds back only its own calls. OVERLOAD_LIMIT (a block
by Bitrix24's staff) is never retried. How `list` pages is in bitrix24/paging.py.

Every request goes to the portal's `client_endpoint` (which only the OAuth server sets) with
redirects off: `requests` would turn a redirected POST into a GET and drop its parameters. A 3xx
means the portal may have moved; the credentials are refreshed (the OAuth server names the address)
and the call is repeated once there. The `Location` header is never used as a destination.

The client knows a portal only through `Credentials`. Refreshing them is a step the caller provides
(`refresh`): it exchanges the refresh token and stores what the OAuth server returned, then hands back
the new credentials. Nothing in this package writes to a database.
"""

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar
from urllib.parse import quote

from django.conf import settings

from . import http, limits, metrics, wire
from . import paging as paging_
from .errors import (
    RETRYABLE,
    HttpFailure,
    LimitWaitExceeded,
    OAuthError,
    PortalMovedUnexplained,
    RestError,
    TokenRefreshFailed,
    TransportError,
)
from .wire import BATCH_LIMIT, JSON, Command, Params

log = logging.getLogger(__name__)

_RETRYABLE = RETRYABLE
# A manual block by Bitrix24 (settings/performance/limits.md): retrying makes it worse.
_NOT_RETRIED = frozenset({"OVERLOAD_LIMIT"})
# QUERY_LIMIT_EXCEEDED answers one call sends again (each after its next paced slot) before giving up:
# with the bucket halved at each answer, Bitrix24 would have to refuse for minutes to exhaust them.
_LIMIT_RETRIES = 12


@dataclass
class BatchResult:
    """Results of a batch, by command key: `result` for successes, `errors` (RestError) for failures."""

    result: dict[str, JSON] = field(default_factory=dict)
    errors: dict[str, RestError] = field(default_factory=dict)
    total: dict[str, JSON] = field(default_factory=dict)
    next: dict[str, JSON] = field(default_factory=dict)


class Credentials(Protocol):
    """What the client needs to know of a portal (a `portals.models.Portal` row is one)."""

    member_id: str
    domain: str
    client_endpoint: str  # the portal's REST base, as the OAuth server named it
    server_endpoint: str  # the OAuth server's REST for this portal ('' when unknown)
    access_token: str
    rest_plan: str  # limits.STANDARD or limits.ENTERPRISE ('' for the standard plan)


# The credentials' own type (a stored portal): the refresh step takes and returns the same kind.
C = TypeVar("C", bound=Credentials)


class Refresh(Protocol[C]):
    """The caller's refresh step: exchange the credentials' refresh token, store the answer, return the new
    credentials. `seen_access_token`: the token the client found expired (another caller may have refreshed
    meanwhile); `force`: refresh a still-valid token (the portal may have moved); `wait`: how long to wait
    for another caller's refresh. Raises an OAuthError when it cannot."""

    def __call__(self, credentials: C, /, *, seen_access_token: str | None, force: bool, wait: float | None) -> C: ...


def build_query(params: Mapping[str, object] | None, prefix: str = "") -> str:
    """Encode nested params the way Bitrix24 (PHP's http_build_query) reads them, for batch commands."""
    pairs = []

    def walk(value: object, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}[{k}]" if key else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        else:
            if isinstance(value, bool):
                value = "Y" if value else "N"
            pairs.append(f"{quote(key, safe='[]')}={quote('' if value is None else str(value), safe='')}")

    walk(params or {}, prefix)
    return "&".join(pairs)


class Client(Generic[C]):
    """REST access to one portal, with the app's tokens (or a user's `access_token`).

    With the app's tokens an `expired_token` answer refreshes them (through `refresh`) and retries once.
    A user's token is never refreshed: its expiry is the caller's verdict.
    """

    def __init__(
        self,
        credentials: C,
        *,
        refresh: Refresh[C] | None = None,
        access_token: str | None = None,
        oauth_server: bool = False,
        interactive: bool = False,
        limit_retries: int | None = None,
    ) -> None:
        """`oauth_server`: send to the OAuth server's REST (`server_endpoint`), Bitrix24's trusted source of
        the app's licence (`app.info`), instead of the portal's; falls back to the portal when unknown.

        `interactive`: the caller is a web request. It never waits longer than B24_REQUEST_MAX_WAIT for a
        limit slot (LimitWaitExceeded instead, nothing sent) and all its calls together end within
        B24_REQUEST_DEADLINE; background callers wait up to B24_MAX_WAIT and have B24_REST_DEADLINE per call.

        `limit_retries`: how often a call answered QUERY_LIMIT_EXCEEDED is sent again, each at the bucket's next
        slot (default 12, a web request 2). 0 for a caller that waits elsewhere and would rather send something
        else then (the relay: its next run takes every message waiting by then, and frees the worker meanwhile;
        an inbox handler: its event comes back later). It bounds the other limit waits too: an
        OPERATION_TIME_LIMIT answer is sent again at most this often (and at most B24_REST_MAX_RETRIES), and
        when given, a batch's commands refused for a limit are as well. With 0 no limit is waited out in the
        caller's thread: a method held back for its operating time fails at once (LimitWaitExceeded, its
        `retry_after` the reset), nothing sent; only the bucket's own pacing still waits for its slot
        (bitrix24.limits.retry_in says how long such a caller waits elsewhere).
        """
        self.credentials = credentials
        self._refresher = refresh
        self._user_token = access_token
        self._oauth_server = oauth_server and bool(credentials.server_endpoint)
        self.interactive = interactive
        self._limit_retries = (2 if interactive else _LIMIT_RETRIES) if limit_retries is None else limit_retries
        self._limit_retries_given = limit_retries
        self._ends = time.monotonic() + settings.B24_REQUEST_DEADLINE if interactive else None

    def _max_wait(self) -> float:
        return settings.B24_REQUEST_MAX_WAIT if self.interactive else settings.B24_MAX_WAIT

    def _operating_wait(self) -> float:
        """How long a call waits for its method's operating-time reset: none for a caller that waits elsewhere
        (limit_retries 0), else as for any limit."""
        return 0.0 if self._limit_retries == 0 else self._max_wait()

    def _deadline(self, method: str) -> float:
        if self._ends is None:
            return settings.B24_REST_DEADLINE
        left = self._ends - time.monotonic()
        if left <= 0:
            raise TransportError("deadline", "the request's time for Bitrix24 is used up", method=method)
        return left

    # --- public API -------------------------------------------------------------------------------
    def call(self, method: str, params: Params | None = None) -> JSON:
        """Call one method; returns its `result`."""
        return self.call_raw(method, params)["result"]

    def call_raw(self, method: str, params: Params | None = None) -> dict[str, JSON]:
        """Call one method; returns the whole answer (`result`, `next`, `total`, `time`)."""
        return self._send(method, params or {})

    def batch(self, commands: Mapping[str, Command], *, halt: bool = False) -> BatchResult:
        """Run {key: (method, params)} through `batch`, 50 per request; per-command errors are reported.

        Nested methods are billed and limited one by one (settings/performance/limits.md): each
        command's `result_time` feeds its method's operating-time budget, a method held back for its
        budget keeps only its own commands back, and commands refused for a limit are sent again
        (alone, in the next request). `$result[...]` references reach only commands of the same request.
        """
        out = BatchResult()
        items = list(commands.items())
        for start in range(0, len(items), BATCH_LIMIT):
            self.batch_request(dict(items[start : start + BATCH_LIMIT]), out, halt=halt)
            if halt and out.errors:
                break
        return out

    def batch_request(
        self, chunk: Mapping[str, Command], out: BatchResult | None = None, *, halt: bool, retry: bool = True
    ) -> BatchResult:
        """One request of at most 50 commands into `out`, then again for the commands refused for a limit
        (`retry` False: not again; a list chain asks again from its last id itself), at most B24_REST_MAX_RETRIES
        times, or the client's `limit_retries` when it was given (0: a caller that waits elsewhere gets the
        refused commands' errors at once, no request sent again in its thread).

        A command that refers to another's result (`$result[...]`) is not sent again alone: the
        reference would find nothing in the new request; its error is reported instead.
        """
        out = BatchResult() if out is None else out
        pending = chunk
        retries = settings.B24_REST_MAX_RETRIES if retry else 0
        if self._limit_retries_given is not None:
            retries = min(retries, self._limit_retries_given)
        for attempt in range(retries + 1):
            pending = self._hold_back_paused(pending, out)
            if not pending or (halt and out.errors):
                return out
            cmd = {
                key: f"{method}?{build_query(params)}" if params else method
                for key, (method, params) in pending.items()
            }
            answer = self.call("batch", {"halt": 1 if halt else 0, "cmd": cmd})
            if not isinstance(answer, dict):
                raise TransportError("bad_answer", "batch answer is not an object", method="batch")
            # PHP encodes an empty associative array as [], hence the _section checks.
            results, errors = _section(answer, "result"), _section(answer, "result_error")
            times = _section(answer, "result_time")
            for key, block in times.items():
                if key in pending:
                    limits.note_operating(self.credentials.member_id, pending[key][0], block)
            out.result.update({key: value for key, value in results.items() if key in pending})
            for name in ("total", "next"):
                getattr(out, name).update(_section(answer, f"result_{name}"))
            again: dict[str, Command] = {}
            for key, err in errors.items():
                if key not in pending:
                    continue
                err = err if isinstance(err, dict) else {}
                method = pending[key][0]
                error = RestError(
                    wire.clip(err.get("error") or "ERROR", wire.CODE_LIMIT),
                    wire.clip(err.get("error_description") or ""),
                    method=method,
                )
                if error.code in _RETRYABLE:
                    limits.counters.add("limit_answers_nested")
                    metrics.limit_answer(error.code)
                if error.code == "OPERATION_TIME_LIMIT":
                    # limits.md: this method (only) waits for the reset its last good answer gave.
                    until = (
                        limits.last_reset_at(self.credentials.member_id, method)
                        or _latest_reset(times, pending, method)
                        or time.time() + settings.B24_REST_BACKOFF * (2**attempt)
                    )
                    limits.pause_method(self.credentials.member_id, method, until)
                if error.code in _RETRYABLE and attempt < retries and not _refers(cmd[key]):
                    again[key] = pending[key]
                else:
                    out.errors[key] = error
            if again and halt:
                # A halted batch ran nothing after the refused command: those go again with it.
                again.update(
                    {k: v for k, v in pending.items() if k not in results and k not in errors and not _refers(cmd[k])}
                )
            if not again:
                return out
            pending = again
        return out

    def _hold_back_paused(self, pending: Mapping[str, Command], out: BatchResult) -> dict[str, Command]:
        """Wait for methods held back only briefly; commands of methods held back longer fail, unsent."""
        now = time.time()
        waits: dict[str, float] = {}
        for method, _params in pending.values():
            if method not in waits:
                until = limits.paused_until(self.credentials.member_id, method)
                waits[method] = until - now if until else 0.0
        longest = max([w for w in waits.values() if w <= self._operating_wait()] or [0.0])
        if longest > 0:
            limits.counters.add("operating_waits")
            time.sleep(longest)
        kept: dict[str, Command] = {}
        for key, (method, params) in pending.items():
            if waits[method] > self._operating_wait():
                out.errors[key] = LimitWaitExceeded(
                    "OPERATION_TIME_LIMIT",
                    f"{method} is held back for its operating time",
                    method=method,
                    retry_after=waits[method],
                )
            else:
                kept[key] = (method, params)
        return kept

    def list(
        self, method: str, params: Params | None = None, *, paging: paging_.IdPaging | Literal["start"] | None = None
    ) -> list[JSON]:
        """Every item of a list method, in the order Bitrix24 gives them (bitrix24/paging.py).

        `paging`: a paging.IdPaging (None: the method's entry in paging.ID_PAGING) chains the pages by
        id inside batch requests, 2,500 items a request and no count; "start" (also for methods not in
        ID_PAGING) pages by offset after a first page that counts the total.
        """
        return paging_.list_items(self, method, dict(params or {}), paging)

    # --- transport ----------------------------------------------------------------------------------
    def _token(self) -> str:
        return self._user_token if self._user_token is not None else self.credentials.access_token

    def _send(self, method: str, params: Params) -> dict[str, JSON]:
        refreshed = moved = False
        attempt = limited = 0
        while True:
            token = self._token()
            if self._user_token is None and not token:
                raise TokenRefreshFailed("NO_AUTH_FOUND", "the portal has no access token", method=method)
            try:
                return self._post(method, params, token)
            except _Redirected:
                if moved or self._oauth_server or self._refresher is None:
                    raise PortalMovedUnexplained(
                        "REDIRECT", "portal redirected again after a move", method=method
                    ) from None
                moved = True
                self._follow_move(method)
            except LimitWaitExceeded:
                raise
            except RestError as exc:
                if exc.code == "expired_token" and self._user_token is None and not refreshed:
                    refreshed = True
                    self._refresh(seen=token, method=method)
                    continue
                if exc.code in _NOT_RETRIED:
                    raise
                if exc.code == "QUERY_LIMIT_EXCEEDED" and not self._oauth_server:
                    # The portal's counter is full: the shared bucket is taken as full and slowed, and the
                    # call waits for its next slot like any other (a web request at most its short wait).
                    limits.note_limited(self.credentials.member_id, plan=self._plan())
                    limited += 1
                    # A web request tries twice more at most: each try may wait up to B24_REQUEST_MAX_WAIT.
                    if limited <= self._limit_retries:
                        limits.counters.add("limit_retries")
                        continue
                    raise
                retries = (
                    settings.B24_REST_MAX_RETRIES if not self.interactive else min(settings.B24_REST_MAX_RETRIES, 1)
                )
                delay = min(settings.B24_REST_BACKOFF * (2**attempt), self._max_wait())
                if exc.code == "OPERATION_TIME_LIMIT":
                    metrics.limit_answer(exc.code)
                    # The method's budget is spent for every process: hold it back for all of them, whether
                    # this call waits for the reset (the next try's wait_for_method) or its caller does.
                    until = (
                        exc.reset_at or limits.last_reset_at(self.credentials.member_id, method) or time.time() + delay
                    )
                    limits.pause_method(self.credentials.member_id, method, until)
                    retries = min(retries, self._limit_retries)
                    delay = 0
                if (exc.code in _RETRYABLE or exc.http_status == 503) and attempt < retries:
                    attempt += 1
                    log.info(
                        "rest retry",
                        extra={
                            "member_id": self.credentials.member_id,
                            "method": method,
                            "code": exc.code,
                            "attempt": attempt,
                            "delay": delay,
                        },
                    )
                    time.sleep(delay)
                    continue
                raise

    def _plan(self) -> str:
        return self.credentials.rest_plan or limits.STANDARD

    def _refresh(self, *, seen: str | None, method: str, force: bool = False) -> None:
        if self._refresher is None:
            raise TokenRefreshFailed("expired_token", "these credentials cannot be refreshed", method=method)
        try:
            self.credentials = self._refresher(
                self.credentials,
                seen_access_token=seen,
                force=force,
                wait=settings.B24_REFRESH_WAIT if self.interactive else None,
            )
        except OAuthError as exc:
            raise TokenRefreshFailed(exc.code, exc.description, method=method) from None

    def _follow_move(self, method: str) -> None:
        """A 3xx from the stored address: ask the OAuth server where the portal lives now.

        Only with the app's own tokens (a background call): a user's token was checked with the OAuth
        server, which named this address, just before (placements.auth), so a redirect is unexplained.
        """
        if self._user_token is not None:
            raise PortalMovedUnexplained("REDIRECT", "the portal redirected a user's call", method=method)
        before = self.credentials.client_endpoint
        self._refresh(seen=None, method=method, force=True)
        if self.credentials.client_endpoint == before:
            raise PortalMovedUnexplained(
                "REDIRECT", "the portal redirected but the OAuth server reports the same address", method=method
            )
        log.info(
            "portal moved; repeating the call",
            extra={"member_id": self.credentials.member_id, "domain": self.credentials.domain, "method": method},
        )

    def _post(self, method: str, params: Params, token: str) -> dict[str, JSON]:
        metrics.rest_call(method)
        base = self.credentials.server_endpoint if self._oauth_server else self.credentials.client_endpoint
        url = f"{base}{method}.json"
        # The outer batch is not billed for operating time (limits.md); its commands are, in batch().
        if method != "batch":
            try:
                limits.wait_for_method(self.credentials.member_id, method, max_wait=self._operating_wait())
            except limits.LimitWaitTooLong as exc:
                raise LimitWaitExceeded(
                    "OPERATION_TIME_LIMIT", str(exc), method=method, retry_after=exc.seconds
                ) from None
        share = 1.0
        if not self._oauth_server:  # the OAuth server's REST is not the portal's bucket
            try:
                share = limits.pace(self.credentials.member_id, max_wait=self._max_wait(), plan=self._plan())
            except limits.LimitWaitTooLong as exc:
                raise LimitWaitExceeded(
                    "QUERY_LIMIT_EXCEEDED", str(exc), method=method, retry_after=exc.seconds
                ) from None
        limits.counters.add("requests")
        # Our id for the call, sent to Bitrix24 (as its SDKs do) and logged, so both sides can find it.
        request_id = uuid.uuid4().hex
        try:
            response = http.send(
                "POST",
                url,
                json={**params, "auth": token},
                headers={"X-Request-ID": request_id},
                connect_timeout=settings.B24_CONNECT_TIMEOUT,
                read_timeout=settings.B24_READ_TIMEOUT,
                deadline=self._deadline(method),
                max_bytes=settings.B24_REST_MAX_BYTES,
            )
        except HttpFailure as exc:
            raise TransportError(exc.code, f"portal: {exc.description}", method=method) from None
        request_id = response.headers.get("X-Request-ID") or request_id
        if 300 <= response.status < 400:
            log.warning(
                "rest redirect",
                extra={
                    "member_id": self.credentials.member_id,
                    "method": method,
                    "http_status": response.status,
                    "request_id": request_id,
                },
            )
            raise _Redirected()
        answer = response.json()
        if not isinstance(answer, dict):
            raise TransportError(
                "bad_answer",
                f"HTTP {response.status} without a JSON object",
                http_status=response.status,
                method=method,
            )
        if "error" in answer:
            code, description = (
                wire.clip(answer.get("error"), wire.CODE_LIMIT),
                wire.clip(answer.get("error_description") or ""),
            )
            log.info(
                "rest error",
                extra={
                    "member_id": self.credentials.member_id,
                    "method": method,
                    "code": code,
                    "http_status": response.status,
                    "request_id": request_id,
                },
            )
            error = RestError(code, description, http_status=response.status, method=method)
            error.reset_at = _reset_at(answer.get("time"))
            raise error
        if "result" not in answer or response.status != 200:
            raise TransportError("bad_answer", "answer without result", http_status=response.status, method=method)
        if share < 1.0:  # sent at a slowed pace and answered: the portal's counter had room
            limits.note_answered(self.credentials.member_id, plan=self._plan())
        if method != "batch":
            limits.note_operating(self.credentials.member_id, method, answer.get("time"))
        log.debug(
            "rest call", extra={"member_id": self.credentials.member_id, "method": method, "request_id": request_id}
        )
        return answer


class _Redirected(Exception):
    pass


def _reset_at(time_block: JSON) -> float | None:
    raw = time_block.get("operating_reset_at") if isinstance(time_block, dict) else None
    try:
        value = float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
    return value if value and value > time.time() else None


def _refers(command: str) -> bool:
    """Whether a batch command uses another command's result (batch.md: `$result[key][field]`)."""
    return "$result" in command or "%24result" in command


def _section(answer: dict[str, JSON], name: str) -> dict[str, JSON]:
    part = answer.get(name)
    return part if isinstance(part, dict) else {}


def _latest_reset(times: dict[str, JSON], pending: Mapping[str, Command], method: str) -> float | None:
    """The latest `operating_reset_at` this batch answered for `method` (from its other commands)."""
    resets = [_reset_at(block) for key, block in times.items() if key in pending and pending[key][0] == method]
    found = [value for value in resets if value]
    return max(found) if found else None
