"""Test settings: the project's settings, fed test values through the same environment variables."""

import os
import tempfile
import uuid

import tests.run_env  # noqa: F401  (first: which run-owned values this process keeps)

_TEST_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": "test-secret-key-not-for-production-0123456789abcdef",
    "B24_CLIENT_ID": "local.test.app",
    "B24_CLIENT_SECRET": "test-client-secret",
    "B24_APP_URL": "https://app.example.test",
    "B24_ALLOW_HTTP_PORTALS": "true",
    # Two keys: the first encrypts, both decrypt (rotation is tested).
    "TOKEN_ENCRYPTION_KEYS": (
        "dGVzdC1rZXktb25lLWZvci1iMjR3aWRnZXQtdGVzdHM=,dGVzdC1rZXktdHdvLWZvci1iMjR3aWRnZXQtdGVzdHM="
    ),
    "SECURE_SSL_REDIRECT": "false",
    "ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
    "B24_REST_BACKOFF": "0.01",
    "B24_CONNECT_TIMEOUT": "2",
    "B24_READ_TIMEOUT": "10",
}
# The suite's own broker: an embedded one in a per-run folder, or (CI on PostgreSQL) the RabbitMQ named by
# CELERY_BROKER_URL; either way only queues named with this run's prefix are used (never a shared queue).
_RUN = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
_TEST_ENV["CELERY_QUEUE"] = f"b24widget-test-{_RUN}"
_TEST_ENV["CELERY_BROKER_DIR"] = os.path.join(tempfile.gettempdir(), f"b24widget-test-broker-{_RUN}")
_TEST_ENV["B24_TOKEN_SPOOL_DIR"] = os.path.join(tempfile.gettempdir(), f"b24widget-test-held-{_RUN}")
for _key, _value in _TEST_ENV.items():
    os.environ.setdefault(_key, _value)

from b24widget.settings import *  # noqa: E402, F403
from b24widget.settings import CACHES, DATABASES  # noqa: E402
from tests.redis_keys import RUN_PREFIX  # noqa: E402

# A run's cache keys live under its own prefix: with CACHE_URL pointing at a shared Redis, the suite
# touches (and deletes) only its own keys (tests/redis_keys.py), never other data on that server.
# (A prefix CACHE_URL names itself goes before it: the run's keys stay apart from that deployment's.)
CACHES["default"]["KEY_PREFIX"] = ":".join(p for p in (CACHES["default"].get("KEY_PREFIX"), RUN_PREFIX) if p)

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not :memory:, so threads in the concurrency tests share one database.
    DATABASES["default"]["TEST"] = {
        "NAME": os.path.join(tempfile.gettempdir(), f"b24widget-test-{os.getpid()}.sqlite3")
    }
else:
    # A name of this run's own (tests/run_env.py; pytest-xdist appends _gw0, _gw1 ...): a second run against the
    # same server (another checkout, CI beside a developer's run) never drops or rebuilds this run's databases.
    # Kept under PostgreSQL's 63 characters, which would otherwise cut the suffixes off.
    DATABASES["default"]["TEST"] = {
        **DATABASES["default"].get("TEST", {}),
        "NAME": f"test_{DATABASES['default']['NAME'][:40]}_{os.environ['B24_TEST_RUN_ID']}",
    }

# The test settings run with DEBUG off (production behaviour) but admit the stand-in's plain-HTTP portals;
# this override, set here and never from the environment, lets b24widget/checks.py accept that.
B24_TESTING = True

# The browser tests' live server (and the worker beside it, which builds the event handlers' addresses from
# B24_APP_URL) is plain http on localhost: the https rule on B24_APP_URL is the one settings problem the
# suite waives, and only for a localhost address (any other http address is still refused).
SETTINGS_PROBLEMS = [
    p
    for p in SETTINGS_PROBLEMS  # noqa: F405
    if not (p.variable == "B24_APP_URL" and B24_APP_URL.startswith(("http://localhost:", "http://127.0.0.1:")))  # noqa: F405
]

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Serve static files straight from the apps (no collectstatic in tests).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True

# The channel's webhook receivers in the tests listen on 127.0.0.1 (Python-only: subprocesses that run the
# deploy check do not inherit it).
OPENLINES_ALLOW_PRIVATE_WEBHOOKS = True

# The channel's delivery tasks run inline in the tests (openlines.tasks.enqueue; Python-only: the production
# settings never read it); the inbox's tasks are processed by the tests themselves (tests/conftest.py
# deliver()). A test's worker processes that must send them through the broker (tests/openlines/
# test_relay_workers.py) are started with B24_TEST_OPENLINES_VIA_BROKER=1.
OPENLINES_TASKS_INLINE = os.environ.get("B24_TEST_OPENLINES_VIA_BROKER") != "1"
# The requests queue their own rows in the tests, whatever the database (inline tasks run in the request); the
# dispatcher's tests (tests/inbox/test_handoff.py) and the worker processes a test starts choose otherwise.
B24_HANDOFF = os.environ.get("B24_HANDOFF", "request")
