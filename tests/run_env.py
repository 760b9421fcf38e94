"""What one test process owns: its Celery queue, broker folder, held-token spool and cache prefix, kept in the
environment so the workers and servers a test starts share them.

With pytest-xdist the controller process reads the settings first and its workers inherit its environment; each
worker must own a queue, a broker folder, a spool and a key prefix of its own (one worker's Celery worker must never
take another's tasks, nor one worker count or delete another's held tokens or cache keys). So values inherited from
another process of the run are dropped once, here, before tests/settings.py and tests/redis_keys.py make their own;
processes a test starts inherit this worker's values and keep them.
"""

import os
import uuid

RUN_OWNED = ("CELERY_QUEUE", "CELERY_BROKER_DIR", "B24_TOKEN_SPOOL_DIR", "B24_TEST_CACHE_PREFIX")
OWNER = os.environ.get("PYTEST_XDIST_WORKER", "main")

if os.environ.get("B24_TEST_ENV_OWNER") != OWNER:
    for _name in RUN_OWNED:
        os.environ.pop(_name, None)
    os.environ["B24_TEST_ENV_OWNER"] = OWNER

# One id per test run, shared by all its processes (not run-owned: workers inherit the controller's). It names
# the run's PostgreSQL test databases (tests/settings.py): two runs against one server, each with its xdist
# workers gw0..gw3, would otherwise both use test_<name>_gw0..3 and drop or rebuild each other's.
os.environ.setdefault("B24_TEST_RUN_ID", uuid.uuid4().hex[:8])
