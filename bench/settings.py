"""Bench settings: the project's settings, fed bench values through the same environment variables
(bench/_env.py, as tests/settings.py does), with a bench-only URLconf that adds a bare view.

Every value is a default: a variable already in the environment wins (DATABASE_URL, CACHE_URL, and
B24_OAUTH_URL, which the bench scripts point at the stand-in they start).
"""

import os
import warnings

from bench import _env

_env.apply()

from b24widget.settings import *  # noqa: E402, F403
from b24widget.settings import B24_APP_URL, CACHES, SETTINGS_PROBLEMS  # noqa: E402

ROOT_URLCONF = "bench.urls"

# Like the test settings: DEBUG off (production behaviour) with the stand-in's plain-HTTP portals, which
# b24widget/checks.py accepts only with this Python-only override.
B24_TESTING = True

# bench/soak.py points B24_APP_URL at its gunicorn (plain http on 127.0.0.1), so the stand-in's events reach it:
# as in tests/settings.py, the https rule is waived for a loopback address only.
SETTINGS_PROBLEMS = [
    p
    for p in SETTINGS_PROBLEMS
    if not (p.variable == "B24_APP_URL" and B24_APP_URL.startswith(("http://localhost:", "http://127.0.0.1:")))
]

# Each bench run keeps its cache keys under its own prefix (set by bench/_common.py for the run and
# its child processes): runs never see each other's verdicts or rate-limiter state, and the keys are
# deleted afterwards without flushing a Redis database someone else may be using.
if os.environ.get("BENCH_CACHE_PREFIX"):
    CACHES["default"]["KEY_PREFIX"] = os.environ["BENCH_CACHE_PREFIX"]

# WhiteNoise warns once per process that STATIC_ROOT does not exist: the benches never collectstatic
# (that would write into the shared tree) and fetch no static file.
warnings.filterwarnings("ignore", message="No directory at", category=UserWarning)
