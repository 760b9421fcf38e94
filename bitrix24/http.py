"""Every outward HTTP request to Bitrix24 goes through `send`: a total deadline and a size cap.

`requests` has only per-operation timeouts: a server that trickles one byte every few seconds, or
answers with hundreds of megabytes, would hold a thread (and its memory) for as long as it likes.
`send` streams the body and stops at the deadline or the cap, whichever comes first. One
`requests.Session` per thread reuses connections without sharing a Session across threads.
"""

import json
import os
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import requests
import urllib3

# Re-exported: callers catch what `send` raises as http.HttpFailure (the class lives with its family).
from .errors import HttpFailure as HttpFailure
from .wire import JSON


class _Local(threading.local):
    session: requests.Session  # this thread's session, once `session()` made it


_local = _Local()
_CHUNK = 16 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool = True  # False: `send(partial=True)` stopped reading the body (cap, deadline, broken off)

    def json(self) -> JSON:
        """The body as JSON, or None when it is not JSON (or absurdly deep)."""
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):
            return None


def _wait_at_most(response: requests.Response, seconds: float) -> None:
    """Let the next socket read wait no longer than what is left of the deadline."""
    sock = getattr(getattr(response.raw, "_connection", None), "sock", None)
    if sock is not None:
        try:
            sock.settimeout(max(seconds, 0.01))
        except OSError:
            pass


def worst_case(connect_timeout: float, read_timeout: float, deadline: float) -> float:
    """The longest one `send` can take (see its docstring): what a lease on its outcome must outlast."""
    return connect_timeout + min(read_timeout, deadline) + deadline


def new_session() -> requests.Session:
    """A session that reads the environment once, not on every request.

    requests looks through the whole environment for proxies (and `no_proxy`) and a CA bundle at each request
    (about 0.6 ms a call here). Without a proxy configured, the session stops trusting the environment and
    takes the CA bundle (REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE) read now; this also keeps `~/.netrc`
    credentials away from portals' addresses. With a proxy configured, requests keeps reading the environment,
    so `no_proxy` is honoured as before."""
    made = requests.Session()
    # getproxies() names no_proxy as a "no" entry: only a real proxy keeps requests reading the environment.
    if not [scheme for scheme in urllib.request.getproxies() if scheme != "no"]:
        made.trust_env = False
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            made.verify = bundle
    return made


def session() -> requests.Session:
    if not hasattr(_local, "session"):
        _local.session = new_session()
    return _local.session


def send(
    method: str,
    url: str,
    *,
    connect_timeout: float,
    read_timeout: float,
    deadline: float,
    max_bytes: int,
    partial: bool = False,
    via: requests.Session | None = None,
    **kwargs: Any,  # requests' own keyword arguments (json, data, params, headers), passed on as they are
) -> Answer:
    """Send one request; give up once `deadline` seconds have passed or `max_bytes` arrived.

    While the body arrives, each read waits at most for the time that remains, so the whole exchange
    ends within `deadline` once the headers are in; the connect and the headers are bounded by
    `connect_timeout` + `read_timeout` (a server that trickles its *headers* is cut by the read timeout
    per byte only). Worst case: connect_timeout + read_timeout + deadline. Redirects are never followed
    (the caller decides what a 3xx means).

    `via`: the session to send with, when not this thread's shared one (openlines.outbound pins its own).

    `partial`: the status line is the answer. The body is read up to `max_bytes` and the deadline, and
    whatever arrived by then is returned (`complete` False when reading stopped early) instead of a
    `too_large` or `deadline` failure: for a caller that must not repeat a request the server accepted.
    """
    ends = time.monotonic() + deadline
    read_timeout = max(min(read_timeout, deadline), 0.1)
    try:
        response = (via or session()).request(
            method,
            url,
            timeout=(min(connect_timeout, deadline), read_timeout),
            allow_redirects=False,
            stream=True,
            **kwargs,
        )
    except requests.Timeout:
        raise HttpFailure("deadline", "no answer in time") from None
    except requests.RequestException as exc:
        raise HttpFailure("unreachable", f"server unreachable ({type(exc).__name__})") from None
    body = bytearray()

    def answer(complete: bool = True) -> Answer:
        return Answer(
            status=response.status_code, headers=dict(response.headers), body=bytes(body[:max_bytes]), complete=complete
        )

    try:
        declared = response.headers.get("Content-Length")
        if declared and declared.isascii() and declared.isdigit() and int(declared) > max_bytes and not partial:
            raise HttpFailure("too_large", f"answer of {declared} bytes exceeds the cap of {max_bytes}")
        try:
            while True:
                _wait_at_most(response, ends - time.monotonic())
                # read1: whatever has arrived (a trickle returns byte by byte, so the deadline is checked)
                chunk = response.raw.read1(_CHUNK, decode_content=True)
                if not chunk:
                    break
                body += chunk
                if len(body) > max_bytes:
                    if partial:
                        return answer(complete=False)
                    raise HttpFailure("too_large", f"answer exceeds the cap of {max_bytes} bytes")
                if time.monotonic() > ends:
                    if partial:
                        return answer(complete=False)
                    raise HttpFailure("deadline", f"answer not complete within {deadline:.0f}s")
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if partial:
                return answer(complete=False)
            if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
                raise HttpFailure("deadline", "the answer stopped arriving") from None
            raise HttpFailure("unreachable", f"answer interrupted ({type(exc).__name__})") from None
        return answer()
    finally:
        response.close()
