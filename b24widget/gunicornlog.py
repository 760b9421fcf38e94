"""gunicorn's error and access logs through the app's LOGGING: one stream, one format (JSON in production).

`b24widget/gunicorn.py` names this class as `logger_class`. gunicorn builds its logger in the master before
the app is loaded, so `setup()` applies Django's LOGGING itself (the same dictionary Django applies again at
`django.setup()`: nothing changes then) and lets gunicorn's two loggers pass their records to the root
handler instead of gunicorn's own plain handlers. An access line is a record with fields, not a formatted
string: `GET /events/ 200` with `remote_addr`, `method`, `path`, `status`, `bytes` and `duration_ms`
(never the query string, which may carry a portal's fields). LOG_LEVEL decides for these lines as for all
others (gunicorn's own `--log-level` is not used): access lines are INFO, so LOG_LEVEL=WARNING drops them.
"""

import logging
import logging.config

from django.conf import settings
from gunicorn import glogging


class JsonLogger(glogging.Logger):
    def setup(self, cfg) -> None:
        super().setup(cfg)
        logging.config.dictConfig(settings.LOGGING)
        logging.captureWarnings(True)  # a library's warning is a log line too, not plain text on stderr
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                log.removeHandler(handler)
            log.propagate = True
            log.setLevel(logging.NOTSET)  # LOG_LEVEL (the root's) decides, as for every other line

    def access(self, resp, req, environ, request_time) -> None:
        if not self.access_log_enabled:
            return
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        method = environ.get("REQUEST_METHOD", "-")
        path = environ.get("PATH_INFO", "-")
        self.access_log.info(
            "%s %s %s",
            method,
            path,
            status,
            extra={
                "remote_addr": environ.get("REMOTE_ADDR", "-"),
                "method": method,
                "path": path,
                "status": int(status) if str(status).isdigit() else status,
                "bytes": getattr(resp, "sent", None),
                "duration_ms": request_time.seconds * 1000 + request_time.microseconds // 1000,
            },
        )
