"""A server that records every request reaching it (an app's event handler or a stranger's host)."""

from __future__ import annotations

from .http import Response

__all__ = ["Recorder"]


class Recorder:
    """A server that records every request reaching it and answers 404."""

    def __init__(self, standin):
        self.standin = standin
        self.address = None
        self.requests: list[dict] = []

    @property
    def url(self):
        return f"{self.standin.scheme}://{self.address}/"

    def handle(self, request):
        entry = {
            "http_method": request.http_method,
            "path": request.path,
            "query": request.query,
            "headers": dict(request.headers.items()),
            "body": request.raw_body.decode("utf-8", "replace"),
            "params": request.params,
        }
        with self.standin.lock:
            self.requests.append(entry)
        return Response(404, b"Not found", [("Content-Type", "text/plain")])
