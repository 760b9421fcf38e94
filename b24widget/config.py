"""Reading settings from the environment without stopping at the first bad value.

settings.py reads every variable through a `Reader`; a value that is missing or malformed is recorded
as a problem (variable name, what is wrong, how to fix it) and replaced by a harmless stand-in, so that
Django can start far enough for the system checks (b24widget/checks.py) to report *every* problem in
one message instead of a traceback about the first one. Values of secrets are never quoted back.
"""

from __future__ import annotations

import builtins
import importlib.util
import shlex
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"true", "1", "yes", "on", "y", "t"}
_FALSE = {"false", "0", "no", "off", "n", "f", ""}
# Variables whose value must never appear in a message (it may be or hold a secret).
SECRET_VARIABLES = {
    "SECRET_KEY",
    "B24_CLIENT_SECRET",
    "TOKEN_ENCRYPTION_KEYS",
    "DATABASE_URL",
    "CACHE_URL",
    "REDIS_URL",
    "METRICS_TOKEN",
}
SEE = "see README, Configuration"
# A number setting's type. Reader's methods are named after the builtins (read.int, read.str, ...), so
# annotations after their definitions spell the builtins as builtins.int, builtins.str and so on.
_Number = TypeVar("_Number", builtins.int, builtins.float)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # its package does not exist
        return False


@dataclass(frozen=True)
class Problem:
    variable: str
    message: str
    hint: str


class Reader:
    """environ.Env with validation: each bad value becomes a Problem instead of an exception."""

    def __init__(self, env: environ.Env) -> None:
        self.env = env
        self.problems: list[Problem] = []

    def problem(self, variable: str, message: str, hint: str = SEE) -> None:
        self.problems.append(Problem(variable, message, hint))

    def _shown(self, name: str, raw: str) -> str:
        return "its value" if name in SECRET_VARIABLES else repr(raw[:80])

    def str(self, name: str, default: str = "") -> str:
        return self.env.str(name, default=default)

    def required(
        self, name: builtins.str, *, debug: bool, dev_default: builtins.str, hint: builtins.str = SEE
    ) -> builtins.str:
        value = self.env.str(name, default="")
        if value:
            return value
        if debug:
            return dev_default
        self.problem(name, f"{name} must be set when DEBUG is off.", hint)
        return ""

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        raw = self.env.str(name, default="")
        if name not in self.env.ENVIRON or raw.strip() == "":
            return default
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        self.problem(name, f"{name}={self._shown(name, raw)} is not a boolean.", "Use true or false.")
        return default

    def _number(
        self,
        name: builtins.str,
        default: _Number | None,
        kind: Callable[[builtins.str], _Number],
        minimum: _Number | None,
        what: builtins.str,
    ) -> _Number | None:
        if name not in self.env.ENVIRON or self.env.ENVIRON[name].strip() == "":
            return default
        raw = self.env.ENVIRON[name].strip()
        try:
            value = kind(raw)
        except ValueError:
            self.problem(
                name,
                f"{name}={self._shown(name, raw)} is not {what}.",
                f"Use {what}, e.g. {name}={default} (the default).",
            )
            return default
        if minimum is not None and value < minimum:
            self.problem(name, f"{name}={raw} is below {minimum}.", f"Use a value of at least {minimum}.")
            return default
        return value

    # An int or float setting whose default is None (unset: "not overridden") may read as None.
    @overload
    def int(self, name: builtins.str, default: builtins.int, minimum: builtins.int | None = 0) -> builtins.int: ...
    @overload
    def int(self, name: builtins.str, default: None, minimum: builtins.int | None = 0) -> builtins.int | None: ...
    def int(
        self, name: builtins.str, default: builtins.int | None, minimum: builtins.int | None = 0
    ) -> builtins.int | None:
        return self._number(name, default, int, minimum, "a whole number")

    @overload
    def float(
        self, name: builtins.str, default: builtins.float, minimum: builtins.float | None = 0
    ) -> builtins.float: ...
    @overload
    def float(self, name: builtins.str, default: None, minimum: builtins.float | None = 0) -> builtins.float | None: ...
    def float(
        self, name: builtins.str, default: builtins.float | None, minimum: builtins.float | None = 0
    ) -> builtins.float | None:
        return self._number(name, default, float, minimum, "a number")

    def list(self, name: builtins.str, default: builtins.list[builtins.str]) -> builtins.list[builtins.str]:
        return self.env.list(name, default=default)

    def url(self, name: builtins.str, default: builtins.str, *, https: builtins.bool) -> builtins.str:
        """An absolute http(s) URL; https only when `https` (production)."""
        value = self.env.str(name, default=default)
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.problem(
                name,
                f"{name}={self._shown(name, value)} is not an absolute URL.",
                f"Write it with scheme and host, e.g. {name}=https://widget.example.com.",
            )
        elif https and parts.scheme != "https":
            self.problem(
                name,
                f"{name}={self._shown(name, value)} must use https when DEBUG is off.",
                "Bitrix24 talks to the app over HTTPS only; put a TLS proxy in front and use https://.",
            )
        return value

    # Django's DATABASES / CACHES entries, as django-environ builds them (untyped: values of every kind).
    def database(self, name: builtins.str, default: builtins.str) -> dict[builtins.str, Any]:
        try:
            with warnings.catch_warnings():
                # django-environ's warning about an unknown scheme quotes the parsed URL, password included.
                warnings.simplefilter("ignore")
                config = self.env.db(name, default=default)
        except (ImproperlyConfigured, ValueError, KeyError) as exc:
            config = {"_error": type(exc).__name__}
        if config.get("ENGINE") and not _importable(config["ENGINE"] + ".base"):
            config = {}  # an unknown scheme becomes an ENGINE named after it
        if not config.get("ENGINE"):
            self.problem(
                name,
                f"{name} is not a database URL.",
                "Use e.g. postgres://user:password@host:5432/b24widget or sqlite:////path/db.sqlite3.",
            )
            # Django starts far enough to report this; any query fails with ImproperlyConfigured.
            return {"ENGINE": "django.db.backends.dummy"}
        return config

    def cache(self, name: builtins.str, default: builtins.str) -> dict[builtins.str, Any]:
        try:
            config = self.env.cache_url(name, default=default)
        except (ImproperlyConfigured, ValueError, KeyError):
            self.problem(name, f"{name} is not a cache URL.", "Use e.g. redis://host:6379/0.")
            return {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
        # django-environ lower-cases every query option for Django's RedisCache, the base ones too (`key_prefix`,
        # `timeout` ...), which Django reads only in upper case: `?key_prefix=` was silently ignored.
        for option in ("key_prefix", "timeout", "version", "key_function"):
            if option in config:
                config[option.upper()] = config.pop(option)
        return config


def _whole(environ, name: str, default: int) -> int:
    value = environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {value!r}") from None


def _workers_flag(cmd_args: str) -> int | None:
    """`-w N` / `--workers N` in GUNICORN_CMD_ARGS (gunicorn applies them over the config file)."""
    try:
        words = shlex.split(cmd_args)
    except ValueError:
        return None
    found = None
    for position, word in enumerate(words):
        value = None
        if word in ("-w", "--workers") and position + 1 < len(words):
            value = words[position + 1]
        elif word.startswith("--workers="):
            value = word.partition("=")[2]
        elif word.startswith("-w") and word[2:].isdigit():
            value = word[2:]
        if value is not None and value.isdigit():
            found = int(value)
    return found


def web_capacity(environ, cores: int) -> tuple[int, int, int]:
    """(workers, threads, connection budget) of one web replica, as b24widget/gunicorn.py starts it.

    Every gthread thread may hold a database connection, so workers x threads stays within
    DB_CONNECTION_BUDGET; without GUNICORN_WORKERS the count comes from the cores (2 x cores + 1) capped by
    the budget. Also read by the deploy check (b24widget/checks.py: several workers need
    PROMETHEUS_MULTIPROC_DIR). A malformed variable is a ValueError naming it.
    """
    threads = max(_whole(environ, "GUNICORN_THREADS", 4), 1)
    budget = max(_whole(environ, "DB_CONNECTION_BUDGET", 80), 1)
    by_cores = cores * 2 + 1
    workers = _whole(environ, "GUNICORN_WORKERS", max(min(by_cores, budget // threads), 1))
    return workers, threads, budget


def web_workers(environ, cores: int) -> int:
    """How many worker processes gunicorn runs: the config's count, or GUNICORN_CMD_ARGS' `--workers`."""
    return _workers_flag(environ.get("GUNICORN_CMD_ARGS", "")) or web_capacity(environ, cores)[0]
