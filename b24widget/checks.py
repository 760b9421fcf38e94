"""System checks for the settings: every problem at once, by variable name, with how to fix it.

They run with every management command that runs checks (`check`, `check --deploy`, `migrate`,
`runserver`, `refresh_tokens` ...), when the WSGI app loads (b24widget/wsgi.py) and when a Celery worker
or beat starts (b24widget/celery.py), the last two through `refuse_to_start`, so no process starts on
settings that would fail later (a bad Fernet key at the first decryption, say).

`check --deploy` adds what only the deployment's shape makes wrong (`check_deployment`): the embedded
broker without B24_SINGLE_MACHINE, several gunicorn workers serving /metrics without a multiprocess folder.
"""

import multiprocessing
import os
import sys

from cryptography.fernet import Fernet
from django.conf import settings
from django.core import checks

from b24widget.config import web_workers

TAG = "b24widget_settings"
_LOCAL_ONLY = {
    "B24_SANDBOX": "the local Bitrix24 sandbox",
    "B24_ALLOW_HTTP_PORTALS": "plain-HTTP portals and host:port addresses",
}


def _error(number: int, message: str, hint: str) -> checks.Error:
    return checks.Error(message, hint=hint, id=f"b24widget.E{number:03d}")


@checks.register(TAG)
def check_settings(app_configs=None, **kwargs):
    """What settings.py found wrong while reading the environment, plus the checks on the values."""
    errors = [_error(1, p.message, p.hint) for p in getattr(settings, "SETTINGS_PROBLEMS", [])]
    for position, key in enumerate(settings.TOKEN_ENCRYPTION_KEYS, start=1):
        try:
            Fernet(key.strip().encode())
        except (ValueError, TypeError):
            errors.append(
                _error(
                    2,
                    f"TOKEN_ENCRYPTION_KEYS: key {position} of {len(settings.TOKEN_ENCRYPTION_KEYS)} is not a "
                    "Fernet key (32 url-safe base64-encoded bytes).",
                    "Generate one with `python -c 'from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())'`; keep the old keys after it while tokens use them.",
                )
            )
    if not settings.DEBUG:
        if not getattr(settings, "B24_TESTING", False):
            for name, what in _LOCAL_ONLY.items():
                if getattr(settings, name, False):
                    errors.append(
                        _error(
                            3,
                            f"{name}=true is refused when DEBUG is off: it admits {what}, which production must not.",
                            f"Remove {name}, or set DEBUG=true on a development machine.",
                        )
                    )
        if not settings.ALLOWED_HOSTS:
            errors.append(
                _error(
                    4,
                    "ALLOWED_HOSTS must be set when DEBUG is off.",
                    "Name the host of B24_APP_URL, e.g. ALLOWED_HOSTS=widget.example.com "
                    "(add a load balancer's probe Host too, see README /healthz).",
                )
            )
    return errors


@checks.register(TAG, deploy=True)
def check_deployment(app_configs=None, **kwargs):
    """`check --deploy`: what cannot work in the deployment these settings describe (DEBUG off)."""
    if settings.DEBUG:
        return []
    errors = []
    if settings.CELERY_BROKER_URL.startswith("filesystem:") and not getattr(settings, "B24_SINGLE_MACHINE", False):
        errors.append(
            _error(
                7,
                "CELERY_BROKER_URL is the embedded filesystem broker with DEBUG off: its messages are files "
                "in CELERY_BROKER_DIR, which a worker or beat on another machine never sees.",
                "Use RabbitMQ (amqp://...) or Redis (redis://...), or set B24_SINGLE_MACHINE=true when web, "
                "worker and beat all run on this one machine.",
            )
        )
    if settings.METRICS_TOKEN and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        try:
            workers = web_workers(os.environ, multiprocessing.cpu_count())
        except ValueError:
            workers = 0  # gunicorn refuses that value itself (b24widget/gunicorn.py)
        if workers > 1:
            errors.append(
                _error(
                    8,
                    f"METRICS_TOKEN is set and gunicorn runs {workers} workers (GUNICORN_WORKERS, or by cores) "
                    "without PROMETHEUS_MULTIPROC_DIR: each scrape would show one worker's counts, a different "
                    "one each time.",
                    "Set PROMETHEUS_MULTIPROC_DIR to an empty folder of the web's own (e.g. /run/b24widget-web), "
                    "or GUNICORN_WORKERS=1.",
                )
            )
    return errors


def refuse_to_start(stream=sys.stderr) -> None:
    """Print every settings problem and exit 1 (no traceback): for entry points that run no checks."""
    errors = [e for e in checks.run_checks(tags=[TAG]) if e.is_serious()]
    if errors:
        stream.write(report(errors))
        raise SystemExit(1)


def report(errors) -> str:
    lines = [f"b24widget cannot start: {len(errors)} setting(s) to fix (see README, Configuration):"]
    for error in errors:
        lines.append(f"  - {error.msg}")
        if error.hint:
            lines.append(f"      fix: {error.hint}")
    return "\n".join(lines) + "\n"
