"""The bench's environment defaults (as tests/settings.py feeds the test values): no Django import here,
so the scripts can apply them, start the stand-in and only then let Django read its settings."""

import os

BENCH_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": "bench-secret-key-not-for-production-0123456789abcdef",
    "B24_CLIENT_ID": "local.bench.app",
    "B24_CLIENT_SECRET": "bench-client-secret",
    "B24_APP_URL": "https://bench.example.test",
    "B24_ALLOW_HTTP_PORTALS": "true",
    "TOKEN_ENCRYPTION_KEYS": "YmVuY2gtb25seS1rZXktZm9yLWIyNHdpZGdldC0zMmI=",
    "SECURE_SSL_REDIRECT": "false",
    "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
    # A database of this run's own (the bench drops and re-creates it): two benches at once never share one.
    # Processes a bench starts inherit the variable once apply() has set it.
    "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/b24bench_{os.getpid()}",
    "CACHE_URL": "redis://127.0.0.1:6379/3",
}


def apply() -> None:
    """Fill in every variable the environment does not already set."""
    for key, value in BENCH_ENV.items():
        os.environ.setdefault(key, value)
