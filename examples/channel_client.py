"""A reference client for the b24widget Open Lines channel API (docs/openapi/channel-api.yaml).

Standard library and `requests` only; copy it into your system and adapt. It shows the three things an
outside system must get right:

* **send** a customer's message: sign the exact body bytes, POST them, and on `429 rate_limited` (or a
  `503`, or no answer) wait `Retry-After` seconds and send again, signed again with a fresh timestamp;
* **receive** the operators' replies: a WSGI app that verifies the timestamp and the signature of each
  webhook POST before it believes a byte of it, and answers 2xx only once the message is stored;
* **sign and verify** with the channel's secret (signature version 2): `sha256=` + hex HMAC-SHA256(secret,
  "v2.<direction>.<timestamp>." + body), the direction being `inbound` for what you send and `webhook` for
  what we send you, so neither can be passed off as the other.

Command line (the secret is read from the environment, never from the arguments):

    export CHANNEL_SECRET=...   # shown once when the line was connected
    python channel_client.py send --endpoint https://widget.example.com/channels/<id>/messages \\
        --chat chat-42 --user visitor-7 --id m-1001 --text "Hello"
    python channel_client.py serve --port 8080   # prints each verified operator message
"""

import argparse
import hashlib
import hmac
import json
import os
import sys
import time
import uuid
from wsgiref.simple_server import make_server

import requests

SIGNATURE_HEADER = "X-B24Widget-Signature"
TIMESTAMP_HEADER = "X-B24Widget-Timestamp"
VERSION_HEADER = "X-B24Widget-Signature-Version"
INBOUND, WEBHOOK = "inbound", "webhook"  # who signs: you (requests to the channel), we (webhooks to you)
WINDOW = 300  # seconds a signed request is believed either side of our clock (the channel's default)


# --- signing -------------------------------------------------------------------------------------------
def sign(secret: str, timestamp: str, body: bytes, direction: str) -> str:
    """The X-B24Widget-Signature value (version 2) for `body` sent at `timestamp` (decimal Unix seconds) in
    `direction` (INBOUND: a request to the channel; WEBHOOK: our POST to you)."""
    message = f"v2.{direction}.{timestamp}.".encode("ascii") + body
    return "sha256=" + hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify(
    secret: str, timestamp: str, signature: str, body: bytes, *, window: int = WINDOW, now: float | None = None
) -> str | None:
    """None when our webhook POST is genuine and fresh, else why not ("stale_timestamp" or "bad_signature")."""
    timestamp, signature = timestamp or "", signature or ""
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        return "stale_timestamp"
    if abs((time.time() if now is None else now) - int(timestamp)) > window:
        return "stale_timestamp"
    if not hmac.compare_digest(signature.encode("utf-8", "replace"), sign(secret, timestamp, body, WEBHOOK).encode()):
        return "bad_signature"
    return None


# --- sending --------------------------------------------------------------------------------------------
class ChannelError(Exception):
    """The channel refused the message: `status`, `error` (the code to program against), `description`."""

    def __init__(self, status: int, error: str, description: str = "", retry_after: float | None = None):
        self.status, self.error, self.description, self.retry_after = status, error, description, retry_after
        super().__init__(f"{status} {error}: {description}")


class ChannelClient:
    """Sends to one channel. `send` retries what may succeed later (429, 503, 500, no answer) up to
    `max_attempts` times, waiting `Retry-After` seconds when the answer names them (at most `max_wait`),
    else 1, 2, 4 ... seconds; every other refusal raises ChannelError at once (fix the request instead)."""

    RETRIED = frozenset({429, 500, 502, 503, 504})

    def __init__(
        self,
        endpoint: str,
        secret: str,
        *,
        timeout: float = 10.0,
        max_attempts: int = 5,
        max_wait: float = 120.0,
        session: requests.Session | None = None,
        sleep=time.sleep,
    ):
        self.endpoint, self.secret, self.timeout = endpoint, secret, timeout
        self.max_attempts, self.max_wait = max_attempts, max_wait
        self.session = session or requests.Session()
        self.sleep = sleep
        self.waits: list[float] = []  # how long each retry waited (for logs and tests)

    def send(self, payload: dict) -> dict:
        """POST `payload` (signed); the channel's 202 answer as a dict, or ChannelError.

        A `409 duplicate_message` on a *retry* means an earlier attempt of this very request was stored
        (its answer was lost on the way): that is success, returned as {"result": "duplicate"}."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        for attempt in range(1, self.max_attempts + 1):
            timestamp = str(int(time.time()))  # signed afresh on every attempt: a retry must not go stale
            headers = {
                "Content-Type": "application/json",
                "Accept": "application/json",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(self.secret, timestamp, body, INBOUND),
                VERSION_HEADER: "2",
            }
            try:
                answer = self.session.post(
                    self.endpoint, data=body, headers=headers, timeout=self.timeout, allow_redirects=False
                )
            except requests.RequestException as exc:
                if attempt == self.max_attempts:
                    raise ChannelError(0, "no_answer", str(exc)) from exc
                self._wait(None, attempt)
                continue
            if answer.status_code == 202:
                return answer.json()
            error, description = _error_of(answer)
            if answer.status_code == 409 and error == "duplicate_message" and attempt > 1:
                return {"result": "duplicate"}
            retry_after = _retry_after(answer)
            if answer.status_code not in self.RETRIED or attempt == self.max_attempts:
                raise ChannelError(answer.status_code, error, description, retry_after)
            self._wait(retry_after, attempt)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the kept-alive connections (or use the client as a context manager)."""
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _wait(self, retry_after: float | None, attempt: int) -> None:
        seconds = min(retry_after if retry_after is not None else 2.0 ** (attempt - 1), self.max_wait)
        self.waits.append(seconds)
        self.sleep(seconds)

    # The four actions of the channel API.
    def add(
        self,
        chat_id: str,
        user: dict,
        message_id: str,
        text: str = "",
        *,
        files=(),
        chat: dict | None = None,
        date: int | None = None,
    ) -> dict:
        """A new message of the customer `user` ({"id", "name", "last_name", "email", "phone", "picture"})."""
        message = {"id": message_id, "text": text, "date": int(time.time()) if date is None else date}
        if files:
            message["files"] = [dict(f) for f in files]  # [{"url": "https://...", "name": "a.pdf"}]
        return self.send({"action": "add", "chat": {"id": chat_id, **(chat or {})}, "user": user, "message": message})

    def update(self, chat_id: str, user_id: str, message_id: str, text: str) -> dict:
        return self.send(
            {
                "action": "update",
                "chat": {"id": chat_id},
                "user": {"id": user_id},
                "message": {"id": message_id, "text": text},
            }
        )

    def delete(self, chat_id: str, user_id: str, message_id: str) -> dict:
        return self.send(
            {"action": "delete", "chat": {"id": chat_id}, "user": {"id": user_id}, "message": {"id": message_id}}
        )

    def read(self, chat_id: str, user_id: str, webhook_message_id: str) -> dict:
        """The customer read the operator's message whose webhook carried `message.id` = webhook_message_id."""
        return self.send(
            {"action": "read", "chat": {"id": chat_id}, "user": {"id": user_id}, "message": {"id": webhook_message_id}}
        )


def _error_of(answer: requests.Response) -> tuple[str, str]:
    try:
        data = answer.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        return str(data.get("error") or "unknown"), str(data.get("error_description") or "")
    return f"http_{answer.status_code}", answer.text[:200]


def _retry_after(answer: requests.Response) -> float | None:
    value = (answer.headers.get("Retry-After") or "").strip()
    return float(value) if value.isascii() and value.isdigit() else None


# --- receiving ------------------------------------------------------------------------------------------
MAX_BODY = 1024 * 1024


def webhook_app(secret: str, on_message, *, window: int = WINDOW):
    """A WSGI app for the channel's webhook URL. `on_message(event)` gets each verified POST's JSON
    (`event` is "message.add", "message.update" or "message.delete") and stores it; it may return your own
    id for the message (sent back as {"message": {"id": ...}}, which Bitrix24's delivery status then names).

    Answers: 200 once `on_message` returned (the message counts as delivered); 401 for a stale or bad
    signature and 400 for a body that is not JSON (the app makes such a message a dead letter at once, as
    for any 4xx other than 408 and 429); 503 when `on_message` raised (the app sends it again later)."""

    def app(environ, start_response):
        def answer(status: str, payload: dict):
            data = json.dumps(payload).encode()
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
            return [data]

        if environ.get("REQUEST_METHOD") != "POST":
            return answer("405 Method Not Allowed", {"error": "method_not_allowed"})
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            return answer("413 Content Too Large", {"error": "body_too_large"})
        body = environ["wsgi.input"].read(length)
        why = verify(
            secret,
            environ.get("HTTP_X_B24WIDGET_TIMESTAMP", ""),
            environ.get("HTTP_X_B24WIDGET_SIGNATURE", ""),
            body,
            window=window,
        )
        if why:
            return answer("401 Unauthorized", {"error": why})
        try:
            event = json.loads(body)
        except ValueError:
            return answer("400 Bad Request", {"error": "bad_json"})
        try:
            own_id = on_message(event)
        except Exception as exc:  # not stored: a 5xx makes the app try again later
            print(f"webhook: could not store the message: {exc!r}", file=sys.stderr)
            return answer("503 Service Unavailable", {"error": "try_again"})
        return answer("200 OK", {"message": {"id": str(own_id)}} if own_id else {})

    return app


def serve(secret: str, on_message, *, host: str = "127.0.0.1", port: int = 8080):
    """A tiny server for the webhook (wsgiref, one request at a time: for trying things out; put a real
    WSGI server such as gunicorn in front of `webhook_app` in production, behind https)."""
    return make_server(host, port, webhook_app(secret, on_message))


# --- command line ---------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secret-env", default="CHANNEL_SECRET", help="environment variable holding the secret")
    commands = parser.add_subparsers(dest="command", required=True)
    send = commands.add_parser("send", help="send one customer message")
    send.add_argument("--endpoint", required=True, help="the channel's messages address")
    send.add_argument("--chat", required=True)
    send.add_argument("--user", required=True)
    send.add_argument("--name", default="")
    send.add_argument("--id", default="", help="message id (default: a random one)")
    send.add_argument("--text", required=True)
    listen = commands.add_parser("serve", help="receive and print the operators' messages")
    listen.add_argument("--host", default="127.0.0.1")
    listen.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    secret = os.environ.get(args.secret_env, "")
    if not secret:
        parser.error(f"set {args.secret_env} to the channel's secret")
    if args.command == "send":
        user = {"id": args.user, **({"name": args.name} if args.name else {})}
        with ChannelClient(args.endpoint, secret) as client:
            try:
                print(json.dumps(client.add(args.chat, user, args.id or uuid.uuid4().hex, args.text)))
            except ChannelError as exc:
                print(f"refused: {exc}", file=sys.stderr)
                return 1
        return 0

    def show(event):
        print(json.dumps(event, ensure_ascii=False), flush=True)

    with serve(secret, show, host=args.host, port=args.port) as server:
        print(f"listening on http://{args.host}:{args.port}/", file=sys.stderr)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
