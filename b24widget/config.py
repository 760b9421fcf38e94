"""Reading settings from the environment without stopping at the first bad value.

settings.py reads every variable through a `Reader`; a value that is missing or malformed is recorded
as a problem (variable name, what is wrong, how to fix it) and replaced by a harmless stand-in, so that
Django can start far enough for the system checks (b24widget/checks.py) to report *every* problem in
one message instead of a traceback about the first one. Values of secrets are never quoted back.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
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

    def __init__(self, env: environ.Env):
        self.env = env
        self.problems: list[Problem] = []

    def problem(self, variable: str, message: str, hint: str = SEE) -> None:
        self.problems.append(Problem(variable, message, hint))

    def _shown(self, name: str, raw: str) -> str:
        return "its value" if name in SECRET_VARIABLES else repr(raw[:80])

    def str(self, name: str, default: str = "") -> str:
        return self.env.str(name, default=default)

    def required(self, name: str, *, debug: bool, dev_default: str, hint: str = SEE) -> str:
        value = self.env.str(name, default="")
        if value:
            return value
        if debug:
            return dev_default
        self.problem(name, f"{name} must be set when DEBUG is off.", hint)
        return ""

    def bool(self, name: str, default: bool) -> bool:
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

    def _number(self, name: str, default, kind, minimum, what: str):
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

    def int(self, name: str, default: int, minimum: int | None = 0) -> int:
        return self._number(name, default, int, minimum, "a whole number")

    def float(self, name: str, default: float, minimum: float | None = 0) -> float:
        return self._number(name, default, float, minimum, "a number")

    def list(self, name: str, default: list) -> list:
        return self.env.list(name, default=default)

    def url(self, name: str, default: str, *, https: bool) -> str:
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

    def database(self, name: str, default: str) -> dict:
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

    def cache(self, name: str, default: str) -> dict:
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
