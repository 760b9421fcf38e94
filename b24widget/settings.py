"""Settings for b24widget, read from the environment (and an optional .env file) in this one place.

Every variable is documented in README.md ("Configuration"). Local defaults work with DEBUG on.
Values are read through b24widget/config.py's Reader, which records every missing or malformed one;
b24widget/checks.py reports them all at once (system checks, and the WSGI/ASGI start).
"""

from datetime import date
from pathlib import Path

import environ
from django.utils.translation import gettext_lazy as _

from .config import Reader

BASE_DIR = Path(__file__).resolve().parent.parent

environ.Env.read_env(BASE_DIR / ".env", overwrite=False)
# Every value goes through `read`: a bad one is recorded (SETTINGS_PROBLEMS) and reported, all at once,
# by the system checks in b24widget/checks.py (`manage.py check --deploy`, runserver, migrate, gunicorn).
read = Reader(environ.Env())

DEBUG = read.bool("DEBUG", default=False)
# Set to True only by tests/settings.py (never from the environment): the test settings run with DEBUG
# off and B24_ALLOW_HTTP_PORTALS on, which production refuses.
B24_TESTING = False

# Secrets: development fallbacks only when DEBUG is on.
_DEV_SECRET_KEY = "dev-only-insecure-secret-key-b24widget-change-me-0123456789"
# A fixed development Fernet key; production must set TOKEN_ENCRYPTION_KEYS.
_DEV_TOKEN_KEY = "ZGV2LW9ubHktYjI0d2lkZ2V0LXRva2VuLWtleS0wMDA="
_GENERATE_FERNET = (
    "Generate a key with `python -c 'from cryptography.fernet import Fernet; "
    "print(Fernet.generate_key().decode())'` and keep it safe: losing it makes every stored "
    "token unreadable."
)

SECRET_KEY = read.required(
    "SECRET_KEY",
    debug=DEBUG,
    dev_default=_DEV_SECRET_KEY,
    hint="Set a long random value, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(50))'`.",
)
ALLOWED_HOSTS = read.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = read.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- Bitrix24 application ---------------------------------------------------------------------
B24_CLIENT_ID = read.required(
    "B24_CLIENT_ID",
    debug=DEBUG,
    dev_default="local.dev-client-id",
    hint="The Application ID (client_id) from Bitrix24 (README, Register the app).",
)
B24_CLIENT_SECRET = read.required(
    "B24_CLIENT_SECRET",
    debug=DEBUG,
    dev_default="dev-client-secret",
    hint="The Application key (client_secret) from Bitrix24.",
)
B24_APP_URL = read.required(
    "B24_APP_URL",
    debug=DEBUG,
    dev_default="http://127.0.0.1:8000",
    hint="The public https address of this deployment, e.g. https://widget.example.com.",
)
B24_APP_URL = read.url("B24_APP_URL", B24_APP_URL, https=not DEBUG).rstrip("/")
B24_OAUTH_URL = read.url("B24_OAUTH_URL", "https://oauth.bitrix.info/oauth/token/", https=False)
# Admit plain-HTTP portals and host:port addresses (on-premise test portals, the local stand-in).
B24_ALLOW_HTTP_PORTALS = read.bool("B24_ALLOW_HTTP_PORTALS", default=False)
# Hosts besides B24_OAUTH_URL's on which the OAuth server's REST (`server_endpoint`) may live.
B24_OAUTH_SERVER_HOSTS = read.list("B24_OAUTH_SERVER_HOSTS", default=[])
# The local Bitrix24 sandbox (`manage.py sandbox`, see README): its app is installed only with this
# or DEBUG on, so production never has it.
B24_SANDBOX = read.bool("B24_SANDBOX", default=False)
# Calls to Bitrix24 (seconds). Every call has a connect timeout, a per-read timeout and a total deadline.
# REST requests may run 60 s on Bitrix24's side (settings/performance/limits.md), hence the longer read.
B24_CONNECT_TIMEOUT = read.float("B24_CONNECT_TIMEOUT", default=5.0, minimum=0.1)
B24_READ_TIMEOUT = read.float("B24_READ_TIMEOUT", default=75.0, minimum=0.1)
B24_REST_DEADLINE = read.float("B24_REST_DEADLINE", default=90.0, minimum=0.1)
B24_REST_MAX_BYTES = read.int("B24_REST_MAX_BYTES", default=32 * 1024 * 1024, minimum=1024)
# The token refresh has its own deadline: an answer the OAuth server sends late must still be received
# (the old refresh token is spent the moment the server rotates it).
B24_OAUTH_DEADLINE = read.float("B24_OAUTH_DEADLINE", default=60.0, minimum=0.1)
B24_OAUTH_MAX_BYTES = read.int("B24_OAUTH_MAX_BYTES", default=64 * 1024, minimum=1024)
# --- Held tokens (portals/tokens.py, issue 23): a rotated token outlives a database outage ----------------
# The process that got a rotated token tries to store it for B24_TOKEN_STORE_WAIT seconds; meanwhile and then
# the grant stays held (encrypted) in B24_TOKEN_SPOOL_DIR (and the cache) and is stored by the next refresh
# of that portal or by beat every B24_TOKEN_HELD_INTERVAL seconds, for as long as the refresh token lives.
# The folder must be one all workers of the deployment share (or the cache must be Redis).
B24_TOKEN_STORE_WAIT = read.float("B24_TOKEN_STORE_WAIT", default=20.0, minimum=0.0)
B24_TOKEN_SPOOL_DIR = Path(read.str("B24_TOKEN_SPOOL_DIR", default=str(BASE_DIR / ".held-tokens")))
B24_TOKEN_HELD_INTERVAL = read.float("B24_TOKEN_HELD_INTERVAL", default=30.0, minimum=1.0)
# Bitrix24's refresh token lives 180 days (oauth/index.md): a grant held longer is spent anyway.
B24_REFRESH_TOKEN_DAYS = read.int("B24_REFRESH_TOKEN_DAYS", default=180, minimum=1)
# Web requests: all their calls to Bitrix24 end within this many seconds; a limit slot further away than
# B24_REQUEST_MAX_WAIT is refused at once (429 with Retry-After); another caller's refresh is awaited at
# most B24_REFRESH_WAIT.
B24_REQUEST_DEADLINE = read.float("B24_REQUEST_DEADLINE", default=15.0, minimum=0.1)
B24_REQUEST_MAX_WAIT = read.float("B24_REQUEST_MAX_WAIT", default=1.0)
B24_REFRESH_WAIT = read.float("B24_REFRESH_WAIT", default=2.0)
# Unverified work. Verifying unknown user tokens: per portal, a burst and a rate per minute.
B24_VERIFY_BURST = read.int("B24_VERIFY_BURST", default=20, minimum=1)
B24_VERIFY_UNMATCHED_BURST = read.int("B24_VERIFY_UNMATCHED_BURST", default=5, minimum=1)
B24_VERIFY_UNMATCHED_PER_MINUTE = read.float("B24_VERIFY_UNMATCHED_PER_MINUTE", default=10.0, minimum=0.1)
B24_VERIFY_PER_MINUTE = read.float("B24_VERIFY_PER_MINUTE", default=60.0)
# Verifications per portal are capped per sender address (the two above) and for the whole portal (below):
# one user's forged opens spend his own share, not his colleagues' (placements/auth.py).
B24_VERIFY_PORTAL_BURST = read.int("B24_VERIFY_PORTAL_BURST", default=100, minimum=1)
B24_VERIFY_PORTAL_PER_MINUTE = read.float("B24_VERIFY_PORTAL_PER_MINUTE", default=300.0)
# OAuth attempts for unverified senders (install POSTs, ONAPPINSTALL, administrator recoveries):
# per member_id, and for the whole deployment; never more than one in flight per member_id.
B24_UNVERIFIED_OAUTH_BURST = read.int("B24_UNVERIFIED_OAUTH_BURST", default=5, minimum=1)
B24_UNVERIFIED_OAUTH_PER_MINUTE = read.float("B24_UNVERIFIED_OAUTH_PER_MINUTE", default=10.0)
B24_UNVERIFIED_OAUTH_GLOBAL_PER_MINUTE = read.float("B24_UNVERIFIED_OAUTH_GLOBAL_PER_MINUTE", default=600.0)
# ... each with a short deadline, and at most this many threads of a process waiting on them at once.
B24_UNVERIFIED_OAUTH_DEADLINE = read.float("B24_UNVERIFIED_OAUTH_DEADLINE", default=10.0, minimum=0.1)
B24_UNVERIFIED_OAUTH_CONCURRENCY = read.int("B24_UNVERIFIED_OAUTH_CONCURRENCY", default=2, minimum=1)
# /healthz asks the OAuth server again, at most once per interval (seconds) per deployment and within the
# deadline, whether it accepts B24_CLIENT_ID / B24_CLIENT_SECRET while a refusal of them is recorded.
B24_CLIENT_CHECK_INTERVAL = read.float("B24_CLIENT_CHECK_INTERVAL", default=60.0, minimum=1.0)
B24_CLIENT_CHECK_DEADLINE = read.float("B24_CLIENT_CHECK_DEADLINE", default=2.0, minimum=0.1)
# How long a verified user's verdict is believed, whatever AUTH_EXPIRES says.
B24_VERDICT_MAX_AGE = read.int("B24_VERDICT_MAX_AGE", default=300)
# REST retries on QUERY_LIMIT_EXCEEDED / 503 / OPERATION_TIME_LIMIT, and the first back-off step.
B24_REST_MAX_RETRIES = read.int("B24_REST_MAX_RETRIES", default=4)
B24_REST_BACKOFF = read.float("B24_REST_BACKOFF", default=0.5)
# Pacing per portal, shared through the cache. Unset: the portal's plan (settings/performance/limits.md:
# Enterprise 250 burst then 5/s, other plans 50 then 2/s, from the stored LICENSE). Set: these numbers
# for every portal; 0 per second turns pacing off. The margin (seconds of the burst held back) absorbs
# requests that reach Bitrix24 a little later than reserved, or out of order.
B24_RATE_LIMIT_BURST = read.int("B24_RATE_LIMIT_BURST", default=None, minimum=1)
B24_RATE_LIMIT_PER_SECOND = read.float("B24_RATE_LIMIT_PER_SECOND", default=None)
B24_RATE_LIMIT_MARGIN = read.float("B24_RATE_LIMIT_MARGIN", default=0.2)
# Seconds of a method's operating-time budget (480 s / 10 min) after which its calls wait for the reset.
B24_OPERATING_PAUSE_AT = read.float("B24_OPERATING_PAUSE_AT", default=400.0)
# Longest a call may wait for a limit before failing with the limit's error code.
B24_MAX_WAIT = read.float("B24_MAX_WAIT", default=120.0)
# Lifetime (seconds) of the signed token that lets the widget frame save settings.
B24_WIDGET_TOKEN_MAX_AGE = read.int("B24_WIDGET_TOKEN_MAX_AGE", default=3600, minimum=60)

# The Open Lines channel (openlines/): inbound body cap, signature window (s), webhook deadline (s) and answer
# cap, how long a reply is retried (hours) before it is a dead letter, and whether webhooks may go to
# loopback or private addresses (local systems, the sandbox; never in production: see the deploy check).
OPENLINES_INBOUND_MAX_BYTES = read.int("OPENLINES_INBOUND_MAX_BYTES", default=256 * 1024, minimum=1024)
OPENLINES_SIGNATURE_WINDOW = read.int("OPENLINES_SIGNATURE_WINDOW", default=300)
# The channel API's budget per channel, for signed requests (429 rate_limited past it; 0 turns it off). The
# default is a quarter of what one portal on the standard plan takes in (2 calls/s of 20 messages each),
# far above a human conversation, so one line's outside system cannot eat the whole portal's REST budget.
OPENLINES_INBOUND_PER_MINUTE = read.float("OPENLINES_INBOUND_PER_MINUTE", default=600.0, minimum=0.0)
OPENLINES_INBOUND_BURST = read.int("OPENLINES_INBOUND_BURST", default=120, minimum=1)
OPENLINES_WEBHOOK_DEADLINE = read.float("OPENLINES_WEBHOOK_DEADLINE", default=10.0, minimum=0.1)
OPENLINES_WEBHOOK_MAX_BYTES = read.int("OPENLINES_WEBHOOK_MAX_BYTES", default=64 * 1024)
OPENLINES_RETRY_HOURS = read.float("OPENLINES_RETRY_HOURS", default=24.0)
# --- Operator messages nobody may read yet (openlines/reconcile.py, issue 23) ------------------------------
# Beat re-checks messages that wait for someone who may read their conversation every this many seconds
# (each waiting message backs off, doubling up to an hour).
OPENLINES_WAITING_INTERVAL = read.float("OPENLINES_WAITING_INTERVAL", default=60.0, minimum=1.0)
# Reconciliation: every this many seconds, each connected line's conversations active in the last
# OPENLINES_RECONCILE_HOURS are read back and what no event brought is relayed (the longest delay of a
# missed operator message is about one interval).
OPENLINES_RECONCILE_INTERVAL = read.float("OPENLINES_RECONCILE_INTERVAL", default=300.0, minimum=10.0)
OPENLINES_RECONCILE_HOURS = read.float("OPENLINES_RECONCILE_HOURS", default=48.0, minimum=0.1)
OPENLINES_ALLOW_PRIVATE_WEBHOOKS = read.bool("OPENLINES_ALLOW_PRIVATE_WEBHOOKS", default=False)
# URLs in inbound messages (files, pictures, the chat's page) must name a public host: Bitrix24 fetches them and
# shows them to operators. A self-hosted portal that needs private ones sets this (openlines/outbound.py).
OPENLINES_ALLOW_PRIVATE_MESSAGE_URLS = read.bool("OPENLINES_ALLOW_PRIVATE_MESSAGE_URLS", default=False)
# Relayed messages and settled waiting replies are deleted this many days after they came (openlines/retention.py);
# it is also how long a message id counts once. Longer than the reconciliation's look-back by far.
OPENLINES_RETENTION_DAYS = read.int("OPENLINES_RETENTION_DAYS", default=30, minimum=1)
# Requests to the channel signed the version-1 way (no direction) are accepted up to and including this day (UTC,
# YYYY-MM-DD), the migration window to version 2 (README, "The Open Lines channel"); empty: refused now.
_v1_until = read.str("OPENLINES_SIGNATURE_V1_UNTIL", default="2027-06-30")
try:
    OPENLINES_SIGNATURE_V1_UNTIL = date.fromisoformat(_v1_until) if _v1_until else None
except ValueError:
    read.problem(
        "OPENLINES_SIGNATURE_V1_UNTIL",
        f"OPENLINES_SIGNATURE_V1_UNTIL={_v1_until!r} is not a date.",
        "Use YYYY-MM-DD, or leave it empty.",
    )
    OPENLINES_SIGNATURE_V1_UNTIL = None
# How long one delivery run of a channel may go on starting work (seconds) before it queues the channel again;
# each run holds a lease (openlines/tasks.py LEASE, five minutes, kept longer than any one step).
OPENLINES_RUN_SECONDS = read.float("OPENLINES_RUN_SECONDS", default=120.0, minimum=1.0)

# --- The Open Lines relay at scale (openlines/tasks.py; issue 26) -------------------------------------------
# Messages per imconnector.send/update/delete.messages call and delivery statuses per
# imconnector.send.status.delivery call: the docs set no maximum (docs/bitrix24.md, unverified), so the
# defaults stay where production has run; at most 100 (one request's size stays small).
OPENLINES_SEND_BATCH = read.int("OPENLINES_SEND_BATCH", default=20, minimum=1)
OPENLINES_STATUS_BATCH = read.int("OPENLINES_STATUS_BATCH", default=50, minimum=1)
if max(OPENLINES_SEND_BATCH, OPENLINES_STATUS_BATCH) > 100:
    read.problem("OPENLINES_SEND_BATCH", "OPENLINES_SEND_BATCH and OPENLINES_STATUS_BATCH are at most 100.")
    OPENLINES_SEND_BATCH, OPENLINES_STATUS_BATCH = min(OPENLINES_SEND_BATCH, 100), min(OPENLINES_STATUS_BATCH, 100)
# A delivery run takes at most this many messages (inbound messages sent, operator replies POSTed) before it
# queues its channel again behind the others: a busy channel holds a worker for one batch at a time.
OPENLINES_RUN_BATCH = read.int("OPENLINES_RUN_BATCH", default=100, minimum=1)
# A channel's lease (seconds): renewed by the running delivery every third of it, so a worker that dies gives
# the channel up within it. A queued task not started after OPENLINES_REQUEUE_AFTER seconds counts as lost
# and is sent again; beat's sweep runs every OPENLINES_SWEEP_INTERVAL seconds.
OPENLINES_LEASE_SECONDS = read.float("OPENLINES_LEASE_SECONDS", default=15.0, minimum=1.0)
OPENLINES_REQUEUE_AFTER = read.float("OPENLINES_REQUEUE_AFTER", default=120.0, minimum=1.0)
OPENLINES_SWEEP_INTERVAL = read.float("OPENLINES_SWEEP_INTERVAL", default=60.0, minimum=0.1)
# Who queues a row a request stored (inbox/handoff.py): "request" (the request, after its commit), "dispatcher" (a
# thread of the Celery worker, told by the table's trigger; PostgreSQL only) or "auto" (the dispatcher on
# PostgreSQL, the request otherwise).
B24_HANDOFF = read.str("B24_HANDOFF", default="auto")
if B24_HANDOFF not in ("auto", "request", "dispatcher"):
    read.problem("B24_HANDOFF", "B24_HANDOFF is auto, request or dispatcher.")
    B24_HANDOFF = "auto"
# /healthz says degraded when a conversation message has been due this long without being sent (seconds).
OPENLINES_STALL_SECONDS = read.float("OPENLINES_STALL_SECONDS", default=120.0, minimum=1.0)

# The event inbox (inbox/queue.py): attempts per event, back-off (first step, cap; seconds), how long a
# worker's claim on an event lasts (longer than any handler runs), when an unpicked task counts as lost,
# and how many unverified events (ONAPPINSTALL) per portal are stored per minute.
B24_INBOX_MAX_ATTEMPTS = read.int("B24_INBOX_MAX_ATTEMPTS", default=8, minimum=1)
B24_INBOX_BACKOFF = read.float("B24_INBOX_BACKOFF", default=10.0)
B24_INBOX_BACKOFF_MAX = read.float("B24_INBOX_BACKOFF_MAX", default=3600.0)
# A worker's claim on an event: short, renewed by a heartbeat while its handler runs (inbox/queue.py), so a dead
# worker's event is taken over within about a lease plus a sweep interval. A handler running longer than
# B24_INBOX_HANDLER_MAX stops being renewed: its row goes to a fresh attempt. /healthz says degraded once a proven
# event has been due and not applied for B24_INBOX_STALL_SECONDS.
B24_INBOX_LEASE = read.float("B24_INBOX_LEASE", default=30.0, minimum=1)
B24_INBOX_HANDLER_MAX = read.float("B24_INBOX_HANDLER_MAX", default=600.0, minimum=1)
B24_INBOX_STALL_SECONDS = read.float("B24_INBOX_STALL_SECONDS", default=120.0, minimum=1)
B24_INBOX_REQUEUE_AFTER = read.float("B24_INBOX_REQUEUE_AFTER", default=120.0)
# Retries sooner than this ride on the broker as countdown tasks; later ones are sent by the sweeper.
B24_INBOX_MAX_COUNTDOWN = read.float("B24_INBOX_MAX_COUNTDOWN", default=300.0)
B24_INBOX_SWEEP_INTERVAL = read.float("B24_INBOX_SWEEP_INTERVAL", default=30.0, minimum=0.1)
B24_INBOX_SWEEP_BATCH = read.int("B24_INBOX_SWEEP_BATCH", default=1000, minimum=1)
B24_INBOX_UNVERIFIED_BURST = read.int("B24_INBOX_UNVERIFIED_BURST", default=20)
B24_INBOX_UNVERIFIED_PER_MINUTE = read.float("B24_INBOX_UNVERIFIED_PER_MINUTE", default=30.0)
# The inbox under floods (issue 23, inbox/queue.py). Events proven by the portal's application_token get a
# budget per portal (every user of the portal holds that token; beyond it 429, and the offline pull recovers
# what Bitrix24 could not deliver). At most B24_INBOX_PORTAL_WINDOW tasks per portal and lane wait in the
# broker at once (fair dispatch). Unproven events (no stored portal vouches for them) share one budget for the
# whole deployment, and at most B24_INBOX_UNPROVEN_MAX_WAITING of them wait unfinished at once.
B24_INBOX_PORTAL_BURST = read.int("B24_INBOX_PORTAL_BURST", default=3000, minimum=1)
B24_INBOX_PORTAL_PER_MINUTE = read.float("B24_INBOX_PORTAL_PER_MINUTE", default=3000.0)
B24_INBOX_PORTAL_WINDOW = read.int("B24_INBOX_PORTAL_WINDOW", default=4, minimum=1)
# A task that finishes an event goes on with its lane's next ordered event itself (no broker round trip per event
# of a backlog) while it has taken fewer than B24_INBOX_CHAIN_EVENTS events and less than B24_INBOX_CHAIN_SECONDS
# have passed since it started; then it sends the next one to the broker, behind the other portals' tasks. So a
# task holds its worker at most about that long (plus the one event it started last): what another portal's next
# event may wait more per busy lane ahead of it (docs/architecture.md). An event's own work is ~14 ms
# (bench/RESULTS.md, part 6): 0.5 s is ~35 of them per round trip, and 50 bounds a run of cheap ones
# (duplicates, rejections). 1 event (or 0 s) turns it off.
B24_INBOX_CHAIN_EVENTS = read.int("B24_INBOX_CHAIN_EVENTS", default=50, minimum=1)
B24_INBOX_CHAIN_SECONDS = read.float("B24_INBOX_CHAIN_SECONDS", default=0.5, minimum=0)
B24_INBOX_UNPROVEN_BURST = read.int("B24_INBOX_UNPROVEN_BURST", default=100, minimum=1)
B24_INBOX_UNPROVEN_PER_MINUTE = read.float("B24_INBOX_UNPROVEN_PER_MINUTE", default=120.0)
B24_INBOX_UNPROVEN_MAX_WAITING = read.int("B24_INBOX_UNPROVEN_MAX_WAITING", default=1000, minimum=1)
# Retention (inbox/queue.py prune, beat daily): done and rejected rows are deleted this many days after they
# finished; failed rows (dead letters) are kept until replayed, or this many days when set (0: kept).
B24_INBOX_RETENTION_DAYS = read.int("B24_INBOX_RETENTION_DAYS", default=14, minimum=1)
B24_INBOX_FAILED_RETENTION_DAYS = read.int("B24_INBOX_FAILED_RETENTION_DAYS", default=0, minimum=0)
# Offline events (inbox/offline.py): how often beat pulls each serving portal's offline queue (seconds), at
# most how many records one pull takes (50 a request, so MAX/50 + 1 requests), how long one pull of a portal
# may hold its single-flight (seconds), and ONOFFLINEEVENT's minTimeout (api-reference/events/on-offline-event.md:
# at most one "new records" notification per that many seconds).
B24_OFFLINE_PULL_INTERVAL = read.float("B24_OFFLINE_PULL_INTERVAL", default=300.0, minimum=10.0)
B24_OFFLINE_PULL_MAX = read.int("B24_OFFLINE_PULL_MAX", default=500, minimum=1)
B24_OFFLINE_PULL_LEASE = read.float("B24_OFFLINE_PULL_LEASE", default=300.0, minimum=1.0)
B24_OFFLINE_MIN_TIMEOUT = read.int("B24_OFFLINE_MIN_TIMEOUT", default=60, minimum=0)
# Background passes fan out per-portal tasks in chunks of this many portal ids.
B24_FANOUT_CHUNK = read.int("B24_FANOUT_CHUNK", default=50, minimum=1)

# Fernet keys for tokens at rest: the first encrypts, all decrypt (rotation). Each is parsed by the
# system checks (b24widget/checks.py), so a bad key stops the start instead of the first decryption.
TOKEN_ENCRYPTION_KEYS = read.list("TOKEN_ENCRYPTION_KEYS", default=[]) or ([_DEV_TOKEN_KEY] if DEBUG else [])
if not TOKEN_ENCRYPTION_KEYS:
    read.problem("TOKEN_ENCRYPTION_KEYS", "TOKEN_ENCRYPTION_KEYS must be set when DEBUG is off.", _GENERATE_FERNET)

# /metrics (Prometheus): answered only to a request carrying this bearer token; empty = no endpoint (404).
METRICS_TOKEN = read.str("METRICS_TOKEN", default="")
# Read at each scrape of /metrics (b24widget/metrics.py): each app's figures that live in shared state.
METRICS_COLLECTORS = [
    "inbox.queue.BacklogCollector",
    "openlines.health.BacklogCollector",  # issue 26: the relay's waiting messages and claims
    "portals.tokens.HeldCollector",  # issue 23: rotated tokens held during a database outage
    "openlines.waiting.WaitingCollector",  # issue 23: operator messages nobody may read yet
]
# --- Worker metrics (b24widget/celery.py, b24widget/metrics.py) ---------------------------------------
# A Celery worker serves its own task series at http://WORKER_METRICS_ADDRESS:WORKER_METRICS_PORT/metrics
# (the same METRICS_TOKEN); 0 = not served. Each process type keeps its own PROMETHEUS_MULTIPROC_DIR.
WORKER_METRICS_PORT = read.int("WORKER_METRICS_PORT", default=0)
WORKER_METRICS_ADDRESS = read.str("WORKER_METRICS_ADDRESS", default="0.0.0.0")

# --- Django -------------------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "b24widget",
    "vault",
    "inbox",
    "portals",
    "placements",
    "openlines",
]
if DEBUG or B24_SANDBOX:
    INSTALLED_APPS.append("sandbox")

MIDDLEWARE = [
    "b24widget.metrics.RequestMetrics",  # first: counts and times every answer, by view
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "b24widget.errors.DatabaseUnavailableMiddleware",
    # Last, as django-axes asks: it answers a locked-out login (429) after the others ran.
    "axes.middleware.AxesMiddleware",
]

# Admin login throttling (django-axes, its database handler): a client address with ADMIN_LOGIN_FAILURE_LIMIT
# failed logins is refused (429) for ADMIN_LOGIN_COOLOFF_MINUTES, whatever username it tries; a good login resets
# it. The address is X-Real-IP, which the proxy sets (README, Reverse proxy; a client cannot forge it through
# the proxy), else the peer's address. `manage.py axes_reset` lifts every lockout.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = read.int("ADMIN_LOGIN_FAILURE_LIMIT", default=5, minimum=1)
AXES_COOLOFF_TIME = read.float("ADMIN_LOGIN_COOLOFF_MINUTES", default=15.0, minimum=0.1) / 60.0  # hours
AXES_LOCKOUT_PARAMETERS = ["ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_IPWARE_PROXY_COUNT = 0
AXES_IPWARE_META_PRECEDENCE_ORDER = ["HTTP_X_REAL_IP", "REMOTE_ADDR"]
AXES_VERBOSE = False

ROOT_URLCONF = "b24widget.urls"
WSGI_APPLICATION = "b24widget.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": read.database("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if B24_HANDOFF == "dispatcher" and DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    read.problem("B24_HANDOFF", "B24_HANDOFF=dispatcher needs PostgreSQL (its LISTEN/NOTIFY); use auto or request.")
_db = DATABASES["default"]
_db["CONN_MAX_AGE"] = read.int("CONN_MAX_AGE", default=60)
_db["CONN_HEALTH_CHECKS"] = True
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions serialize writers, which is what the single-flight token refresh
    # relies on where SELECT ... FOR UPDATE does not exist; wait for the lock instead of failing.
    _db.setdefault("OPTIONS", {}).update({"transaction_mode": "IMMEDIATE", "timeout": 30})
    _db["CONN_MAX_AGE"] = 0
elif _db["ENGINE"].startswith("django.db.backends.postgresql"):
    # A database that does not answer gives a fast error (a 503 page), not a hung request.
    _db.setdefault("OPTIONS", {}).setdefault("connect_timeout", read.int("DB_CONNECT_TIMEOUT", default=3))
    _db["OPTIONS"].setdefault(
        "options",
        f"-c statement_timeout={read.int('DB_STATEMENT_TIMEOUT_MS', default=10000)} "
        f"-c lock_timeout={read.int('DB_LOCK_TIMEOUT_MS', default=5000)}",
    )
    # The statement timeout is the server's: a server host that stops answering (a partition, a frozen
    # VM) is noticed by the client's TCP settings instead (libpq keepalives and tcp_user_timeout).
    for _name, _value in (
        ("keepalives", 1),
        ("keepalives_idle", 10),
        ("keepalives_interval", 3),
        ("keepalives_count", 3),
        ("tcp_user_timeout", read.int("DB_TCP_USER_TIMEOUT_MS", default=10000)),
    ):
        _db["OPTIONS"].setdefault(_name, _value)

# Local memory by default; CACHE_URL (or REDIS_URL) pointing at Redis shares the verdict cache and the
# per-portal rate limiter across processes and machines.
CACHES = {"default": read.cache("CACHE_URL", default=read.str("REDIS_URL", default="") or "locmemcache://b24widget")}
if "redis" in CACHES["default"]["BACKEND"].lower():
    # A Redis that does not answer fails fast; the callers degrade (see portals/limits.py, placements/auth.py).
    CACHES["default"].setdefault("OPTIONS", {}).update(
        {
            "socket_connect_timeout": read.float("CACHE_CONNECT_TIMEOUT", default=1.0),
            "socket_timeout": read.float("CACHE_TIMEOUT", default=1.0),
        }
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("ru", _("Russian")), ("de", _("German"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
TIME_ZONE = "UTC"
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# WhiteNoise serves collected static files from the app process (run `manage.py collectstatic`).
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Vendored libraries carry their version in their path (b24widget/vendor/b24jssdk-2.2.0/): a new version is a
# new URL, so browsers may keep them for a year (WhiteNoise's "immutable" caching).
WHITENOISE_IMMUTABLE_FILE_TEST = r"/vendor/[a-z0-9]+-[0-9]+\.[0-9]+\.[0-9]+/"

# --- Security (production sits behind a TLS-terminating proxy) ----------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = read.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = read.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = read.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = read.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = read.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = read.bool("SECURE_HSTS_PRELOAD", default=False)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# /healthz is probed over plain HTTP by load balancers.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

# One line per event. JSON (the default with DEBUG off) carries member_id, method, request_id (and
# in a Celery worker task_id) ... as fields; nothing logged anywhere holds a token or secret.
LOG_FORMAT = read.str("LOG_FORMAT", default="plain" if DEBUG else "json")
if LOG_FORMAT not in ("plain", "json"):
    read.problem("LOG_FORMAT", f"LOG_FORMAT={LOG_FORMAT!r} is neither plain nor json.", "Use plain or json.")
    LOG_FORMAT = "json"
LOG_LEVEL = read.str("LOG_LEVEL", default="INFO").upper()
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    read.problem("LOG_LEVEL", f"LOG_LEVEL={LOG_LEVEL!r} is not a log level.", "Use DEBUG, INFO, WARNING or ERROR.")
    LOG_LEVEL = "INFO"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        # The structured fields (member_id, event, method, request_id ...) follow the message as key=value.
        "plain": {
            "()": "b24widget.logformat.PlainFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["no_request_details", "celery_task"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "filters": {
        "no_request_details": {"()": "b24widget.logfilters.NoRequestDetails"},
        "celery_task": {"()": "b24widget.logfilters.CeleryTask"},
    },
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # urllib3 logs every outward URL at DEBUG (the OAuth refresh carries its secret in the query).
        "urllib3": {"level": "WARNING"},
    },
}

# What the reading above found wrong; reported by b24widget/checks.py.
# --- Celery (b24widget/celery.py) ---------------------------------------------------------------
# RabbitMQ (amqp://...) or Redis (redis://...) in production. The default needs no server: kombu's
# filesystem transport, messages as files under CELERY_BROKER_DIR (B24_CELERY_DIR). It was chosen over the SQLAlchemy
# transport because it adds no dependency and no second writer to the SQLite file the app uses; it
# suits one machine (the newcomer path, the sandbox), and what it can lose (a message a killed worker
# held) the inbox sweeper re-sends: the database is the source of truth.
CELERY_BROKER_URL = read.str("CELERY_BROKER_URL", default="filesystem://")
# Says that web, worker and beat share one machine (and so one broker folder): `check --deploy` refuses
# the embedded broker with DEBUG off without it.
B24_SINGLE_MACHINE = read.bool("B24_SINGLE_MACHINE", default=False)
B24_CELERY_DIR = Path(read.str("CELERY_BROKER_DIR", default=str(BASE_DIR / ".celery")))
CELERY_TASK_DEFAULT_QUEUE = read.str("CELERY_QUEUE", default="b24widget")
if CELERY_BROKER_URL.startswith("filesystem:"):
    _queue_dir = B24_CELERY_DIR / "queue"
    for _folder in (_queue_dir, B24_CELERY_DIR / "control"):
        _folder.mkdir(parents=True, exist_ok=True)
    # A consumer takes a message by moving its file to the temporary folder; when that is on another
    # file system the move is a copy, and two workers may both take one message: harmless, the tasks
    # are idempotent (the inbox claims each event once, a refresh is judged again under its lease).
    # kombu's filesystem transport with whole-message writes (b24widget/broker.py).
    CELERY_BROKER_TRANSPORT = "b24widget.broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "control_folder": str(B24_CELERY_DIR / "control"),
        "polling_interval": read.float("CELERY_POLLING_INTERVAL", default=0.2),
    }
else:
    # Redis re-delivers an unacknowledged task after this many seconds (longer than any task runs).
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": read.int("CELERY_VISIBILITY_TIMEOUT", default=3600)}
# A frozen broker (its process stopped, or stuck, with its sockets open) answers no read and, once the socket's
# buffers are full, takes no write: py-amqp waits for it without end by default (a request that opened its channel
# on such a connection waited for ever; bench/RESULTS.md, "a frozen broker"). With these, every read and write on
# an AMQP connection (py-amqp's read_timeout and write_timeout: the socket's SO_RCVTIMEO and SO_SNDTIMEO) gives up
# after B24_BROKER_IO_TIMEOUT: the publish fails, the row waits for the sweep, a worker reconnects.
# Sending from a web request never hangs on a broker that is down: the row is stored, the sweeper re-sends.
CELERY_BROKER_CONNECTION_TIMEOUT = read.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=2.0)
B24_BROKER_IO_TIMEOUT = read.float("B24_BROKER_IO_TIMEOUT", default=2.0, minimum=0.1)
B24_AMQP_TRANSPORT_OPTIONS = {"read_timeout": B24_BROKER_IO_TIMEOUT, "write_timeout": B24_BROKER_IO_TIMEOUT}
# On a Redis broker the same deadline is redis-py's socket_timeout (kombu's redis transport: without it "a
# synchronous command such as a publish waits forever on the dead connection"), and connecting is bounded as on
# AMQP. It must outlast the consumers' BRPOP (kombu's brpop_timeout, 1 s), which the minimum below keeps.
B24_REDIS_BROKER_TRANSPORT_OPTIONS = {
    "socket_timeout": max(B24_BROKER_IO_TIMEOUT, 1.5),
    "socket_connect_timeout": CELERY_BROKER_CONNECTION_TIMEOUT,
}
if CELERY_BROKER_URL.startswith(("amqp:", "amqps:", "pyamqp:")):
    CELERY_BROKER_TRANSPORT_OPTIONS = {**CELERY_BROKER_TRANSPORT_OPTIONS, **B24_AMQP_TRANSPORT_OPTIONS}
elif CELERY_BROKER_URL.startswith(("redis:", "rediss:")):
    CELERY_BROKER_TRANSPORT_OPTIONS = {**CELERY_BROKER_TRANSPORT_OPTIONS, **B24_REDIS_BROKER_TRANSPORT_OPTIONS}
# A message is acknowledged after its task ran; a worker lost mid-task gets it re-delivered. Tasks are
# idempotent (the inbox claims each row once), so a re-run changes nothing twice.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Django's LOGGING (JSON lines) stays in charge inside workers too.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_REDIRECT_STDOUTS = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# A worker that lost its broker tries again every 1-5 s (kombu's default: up to 30 s between attempts).
CELERY_WORKER_CONSUMER = "b24widget.celery:Consumer"
CELERY_BEAT_SCHEDULE_FILENAME = read.str("CELERY_BEAT_SCHEDULE_FILENAME", default=str(B24_CELERY_DIR / "beat-schedule"))
from celery.schedules import crontab  # noqa: E402

CELERY_BEAT_SCHEDULE = {
    "inbox-sweep": {"task": "portals.sweep_inbox", "schedule": B24_INBOX_SWEEP_INTERVAL},
    # Each serving portal's offline queue: what Bitrix24 could not deliver (ONOFFLINEEVENT wakes one sooner).
    "inbox-offline-pull": {"task": "inbox.pull_offline_events", "schedule": B24_OFFLINE_PULL_INTERVAL},
    # Finished inbox rows past their retention (B24_INBOX_RETENTION_DAYS); each run is shown in the admin.
    "inbox-prune": {"task": "inbox.prune", "schedule": crontab(minute=29, hour=4)},
    # Messages relayed (and replies settled) more than OPENLINES_RETENTION_DAYS ago are deleted.
    "openlines-prune": {"task": "openlines.prune", "schedule": crontab(minute=47, hour=4)},
    # Once a day, as Bitrix24 asks (no refreshing "just in case"); the pass fans out per-portal tasks.
    # Rotated tokens held during a database outage are stored as soon as the database is back.
    "held-tokens": {"task": "portals.store_held_grants", "schedule": B24_TOKEN_HELD_INTERVAL},
    "keep-alive": {"task": "portals.keepalive_pass", "schedule": crontab(minute=17, hour=3)},
    "sync-portals": {"task": "portals.sync_pass", "schedule": crontab(minute=40, hour="*/6")},
    # The Open Lines channel: every channel with due messages (either way) is queued again.
    "openlines-sweep": {"task": "openlines.sweep", "schedule": OPENLINES_SWEEP_INTERVAL},
    # Operator messages that waited for someone who may read their conversation are confirmed again.
    "openlines-waiting": {"task": "openlines.recheck_waiting", "schedule": OPENLINES_WAITING_INTERVAL},
    # Operator messages, edits and deletions no event brought (online or offline) are found and relayed.
    "openlines-reconcile": {"task": "openlines.reconcile", "schedule": OPENLINES_RECONCILE_INTERVAL},
}

SETTINGS_PROBLEMS = read.problems
del read
