"""Settings: production refuses to start without its secrets; `check --deploy` is clean when set."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]

PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "x" * 20 + "-production-secret-key-with-enough-entropy-0123456789",
    "ALLOWED_HOSTS": "app.example.com",
    "B24_CLIENT_ID": "app.123.456",
    "B24_CLIENT_SECRET": "production-client-secret",
    "B24_APP_URL": "https://app.example.com",
    "TOKEN_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
}
# The README's production broker (check --deploy refuses the embedded one there).
BROKER = {"CELERY_BROKER_URL": "redis://cache:6379/1"}


# What the outer environment (CI's broker, a developer's shell) must not add to a settings test's own.
OWN_VARIABLES = (
    "B24_",
    "DJANGO_",
    "SECRET_KEY",
    "TOKEN_",
    "DEBUG",
    "ALLOWED_HOSTS",
    "SECURE_",
    "CELERY_",
    "METRICS_TOKEN",
    "WORKER_METRICS",
    "PROMETHEUS_",
    "GUNICORN_",
    "DATABASE_URL",
)


def manage(*args, env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(OWN_VARIABLES)}
    base["DJANGO_SETTINGS_MODULE"] = "b24widget.settings"
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow  # a manage.py subprocess
def test_check_deploy_is_clean_with_the_documented_production_variables():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env={**PRODUCTION, **BROKER})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.slow  # manage.py subprocesses
def test_check_deploy_refuses_the_embedded_broker_unless_one_machine_is_declared():
    result = manage("check", "--deploy", env=PRODUCTION)  # CELERY_BROKER_URL unset: filesystem://
    assert result.returncode != 0
    assert "CELERY_BROKER_URL is the embedded filesystem broker with DEBUG off" in result.stderr
    assert "B24_SINGLE_MACHINE=true" in result.stderr and "Traceback" not in result.stderr
    alone = manage("check", "--deploy", "--fail-level", "WARNING", env={**PRODUCTION, "B24_SINGLE_MACHINE": "true"})
    assert alone.returncode == 0, alone.stderr


@pytest.mark.parametrize(
    "env, refused",
    [
        ({"GUNICORN_WORKERS": "3"}, True),
        ({}, True),  # by cores: 2 x cores + 1, never one
        ({"GUNICORN_WORKERS": "1", "GUNICORN_CMD_ARGS": "--bind :9000 --workers 4"}, True),
        ({"GUNICORN_WORKERS": "3", "PROMETHEUS_MULTIPROC_DIR": "/run/b24widget-web"}, False),
        ({"GUNICORN_WORKERS": "1"}, False),
    ],
)
def test_check_deploy_refuses_metrics_of_several_workers_without_a_multiprocess_folder(
    settings, monkeypatch, env, refused
):
    from b24widget.checks import check_deployment

    for name in ("GUNICORN_WORKERS", "GUNICORN_CMD_ARGS", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings.DEBUG, settings.METRICS_TOKEN, settings.CELERY_BROKER_URL = False, "t", "redis://cache:6379/1"
    ids = [e.id for e in check_deployment()]
    assert ids == (["b24widget.E008"] if refused else [])
    settings.METRICS_TOKEN = ""  # no /metrics: nothing to add up
    assert check_deployment() == []


@pytest.mark.slow  # a manage.py subprocess
def test_check_deploy_names_the_worker_count_and_the_fix():
    env = {**PRODUCTION, **BROKER, "METRICS_TOKEN": "t", "GUNICORN_WORKERS": "3"}
    result = manage("check", "--deploy", env=env)
    assert result.returncode != 0
    assert "METRICS_TOKEN is set and gunicorn runs 3 workers" in result.stderr
    assert "PROMETHEUS_MULTIPROC_DIR" in result.stderr


@pytest.mark.slow  # manage.py subprocesses
@pytest.mark.parametrize(
    "missing", ["SECRET_KEY", "B24_CLIENT_ID", "B24_CLIENT_SECRET", "B24_APP_URL", "TOKEN_ENCRYPTION_KEYS"]
)
def test_refuses_to_start_without_a_secret(missing):
    env = {k: v for k, v in PRODUCTION.items() if k != missing}
    result = manage("check", env=env)
    assert result.returncode != 0
    assert f"{missing} must be set when DEBUG is off" in result.stderr
    # The message names what is missing, never a value that is set.
    assert PRODUCTION["B24_CLIENT_SECRET"] not in result.stderr


BROKEN_KEY = {**PRODUCTION, "TOKEN_ENCRYPTION_KEYS": "notakey"}
REPORT = "b24widget cannot start: 1 setting(s) to fix (see README, Configuration):"
KEY_PROBLEM = "TOKEN_ENCRYPTION_KEYS: key 1 of 1 is not a Fernet key"


@pytest.mark.slow
@pytest.mark.parametrize("program", ["worker", "beat"])
def test_celery_worker_and_beat_refuse_bad_settings_with_the_same_report(program, tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith(OWN_VARIABLES)}
    env = {
        **base,
        **BROKEN_KEY,
        "DJANGO_SETTINGS_MODULE": "b24widget.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CELERY_BROKER_DIR": str(tmp_path / "broker"),
        "CELERY_QUEUE": f"b24widget-test-refusal-{tmp_path.name}",
    }
    command = [sys.executable, "-m", "celery", "-A", "b24widget", "-q", program]
    command += ["--pool", "solo"] if program == "worker" else ["--schedule", str(tmp_path / "beat-schedule")]
    # Without the check both would run until killed (the timeout fails the test).
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert REPORT in result.stderr and KEY_PROBLEM in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "broker" / "queue").exists() or not list((tmp_path / "broker" / "queue").iterdir())


@pytest.mark.slow  # a manage.py subprocess
@pytest.mark.parametrize("command", [["migrate", "--noinput"], ["refresh_tokens", "--dry-run"]])
def test_management_commands_refuse_bad_settings(command, tmp_path):
    result = manage(*command, env={**BROKEN_KEY, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"})
    assert result.returncode == 1
    assert KEY_PROBLEM in result.stderr and "b24widget.E002" in result.stderr
    if (tmp_path / "db.sqlite3").exists():  # the database checks may open it; nothing is migrated
        with sqlite3.connect(tmp_path / "db.sqlite3") as db:
            assert db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == []


@pytest.mark.slow  # a manage.py subprocess
def test_debug_runs_without_any_secret():
    result = manage("check", env={"DEBUG": "true"})
    assert result.returncode == 0, result.stderr


def test_healthz(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "cache": "ok", "oauth_client": "ok", "broker": "ok", "handoff": "ok"},
        "inbox": {
            "unfinished": 0,
            "failed": 0,
            "oldest_unfinished_seconds": 0,
            "lapsed_claims": 0,
            "oldest_lapsed_claim_seconds": 0,
            "oldest_overdue_seconds": 0,
            "degraded": False,
        },
        "openlines": {
            "inbound": {"waiting": 0, "oldest_waiting_seconds": 0, "oldest_overdue_seconds": 0},
            "outbound": {"waiting": 0, "oldest_waiting_seconds": 0, "oldest_overdue_seconds": 0},
            "stalled_claims": 0,
            "late_tasks": 0,
            "degraded": False,
        },
    }


@pytest.mark.slow  # waits out the broker's connect timeout
def test_healthz_reports_the_inbox_backlog_and_an_unreachable_broker(client, db, settings, monkeypatch):
    from inbox.models import InboxItem

    InboxItem.objects.create(member_id="m", event="ONAPPINSTALL", idempotency_key="a" * 64)
    InboxItem.objects.create(
        member_id="m", event="ONAPPINSTALL", idempotency_key="b" * 64, state=InboxItem.State.FAILED
    )
    from b24widget.celery import app

    previous = app.conf.broker_url, app.conf.broker_transport
    unreachable = "amqp://guest:guest@127.0.0.1:1//"  # nothing listens on port 1
    monkeypatch.setenv("CELERY_BROKER_URL", unreachable)  # Celery reads the variable before its own setting
    # As the settings configure RabbitMQ: kombu's own transport (the embedded broker's is for filesystem://).
    app.conf.broker_url, app.conf.broker_transport = unreachable, None
    try:
        response = client.get("/healthz")
    finally:
        app.conf.broker_url, app.conf.broker_transport = previous
    body = response.json()
    assert response.status_code == 200 and body["status"] == "degraded"  # events are still stored
    assert body["checks"]["broker"].startswith("error: ")
    assert body["inbox"]["unfinished"] == 1 and body["inbox"]["failed"] == 1


@pytest.mark.slow  # a manage.py subprocess
def test_every_bad_setting_is_named_in_one_message_without_a_traceback():
    env = {
        **PRODUCTION,
        "TOKEN_ENCRYPTION_KEYS": f"{PRODUCTION['TOKEN_ENCRYPTION_KEYS']},notakey",
        "B24_APP_URL": "widget.example.com",
        "B24_READ_TIMEOUT": "abc",
        "B24_RATE_LIMIT_BURST": "-3",
        "DATABASE_URL": "nonsense",
        "B24_SANDBOX": "true",
        "B24_ALLOW_HTTP_PORTALS": "yes",
        "DEBUG": "false",
        "SECURE_SSL_REDIRECT": "maybe",
    }
    del env["SECRET_KEY"], env["B24_CLIENT_ID"]
    result = manage("check", "--deploy", env=env)
    assert result.returncode != 0
    for expected in (
        "SECRET_KEY must be set when DEBUG is off",
        "B24_CLIENT_ID must be set when DEBUG is off",
        "TOKEN_ENCRYPTION_KEYS: key 2 of 2 is not a Fernet key",
        "B24_APP_URL='widget.example.com' is not an absolute URL",
        "B24_READ_TIMEOUT='abc' is not a number",
        "B24_RATE_LIMIT_BURST=-3 is below 1",
        "DATABASE_URL is not a database URL",
        "B24_SANDBOX=true is refused when DEBUG is off",
        "B24_ALLOW_HTTP_PORTALS=true is refused when DEBUG is off",
        "SECURE_SSL_REDIRECT='maybe' is not a boolean",
    ):
        assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "HINT" in result.stderr
    assert PRODUCTION["TOKEN_ENCRYPTION_KEYS"] not in result.stderr


@pytest.mark.slow  # manage.py subprocesses
def test_production_refuses_an_http_app_url_and_an_unknown_database_scheme():
    env = {**PRODUCTION, "B24_APP_URL": "http://app.example.com", "DATABASE_URL": "foo://user:hunter2@db/x"}
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "B24_APP_URL='http://app.example.com' must use https when DEBUG is off" in result.stderr
    assert "DATABASE_URL is not a database URL" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow  # a gunicorn subprocess
def test_gunicorn_start_refuses_bad_settings_with_one_message():
    env = {**PRODUCTION, "TOKEN_ENCRYPTION_KEYS": "notakey", "B24_SANDBOX": "true"}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("B24_", "DJANGO_", "TOKEN_", "DEBUG"))}
    result = subprocess.run(
        [sys.executable, "-c", "import b24widget.wsgi"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **env, "DJANGO_SETTINGS_MODULE": "b24widget.settings"},
    )
    assert result.returncode == 1
    assert "b24widget cannot start: 2 setting(s) to fix" in result.stderr
    assert "TOKEN_ENCRYPTION_KEYS: key 1 of 1 is not a Fernet key" in result.stderr
    assert "B24_SANDBOX=true is refused" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow  # a gunicorn subprocess
@pytest.mark.parametrize("preload", ["true", "false"])
def test_gunicorn_itself_refuses_bad_settings_once_preloaded_or_not(preload, tmp_path):
    """Preloaded, the master imports the app and refuses; not preloaded (the systemd unit's reload set-up), the
    master checks the settings before any worker starts: one message and exit 1, not workers failing forever."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(OWN_VARIABLES + ("XDG_",))}
    env = {
        **base,
        **PRODUCTION,
        "TOKEN_ENCRYPTION_KEYS": "notakey",
        "DJANGO_SETTINGS_MODULE": "b24widget.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "GUNICORN_PRELOAD": preload,
        "GUNICORN_WORKERS": "1",
        "GUNICORN_BIND": "127.0.0.1:0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "python:b24widget.gunicorn", "b24widget.wsgi"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.count(KEY_PROBLEM) == 1 and "Booting worker" not in result.stdout + result.stderr


@pytest.mark.slow  # manage.py subprocesses
def test_local_switches_are_fine_with_debug_and_the_test_settings_pass_the_checks():
    assert (
        manage("check", env={"DEBUG": "true", "B24_SANDBOX": "true", "B24_ALLOW_HTTP_PORTALS": "true"}).returncode == 0
    )
    # tests/settings.py: DEBUG off with B24_ALLOW_HTTP_PORTALS on, accepted only through B24_TESTING.
    result = manage("check", env={"DJANGO_SETTINGS_MODULE": "tests.settings"})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "url, prefix",
    [
        ("redis://cache.example:6379/0?key_prefix=tenant-a", "tenant-a"),
        ("redis://cache.example:6379/0?KEY_PREFIX=tenant-a&timeout=60", "tenant-a"),
        ("locmemcache://b24widget?key_prefix=tenant-a", "tenant-a"),
        ("redis://cache.example:6379/0", ""),
    ],
)
def test_the_cache_urls_key_prefix_is_honoured(monkeypatch, url, prefix):
    """README, Configuration: CACHE_URL's `key_prefix` (django-environ lower-cased it for Redis, where Django
    never read it, so two deployments on one Redis shared their keys)."""
    import environ
    from django.utils.module_loading import import_string

    from b24widget.config import Reader

    monkeypatch.setenv("CACHE_URL", url)
    reader = Reader(environ.Env())
    config = reader.cache("CACHE_URL", default="locmemcache://")
    assert reader.problems == []
    cache = import_string(config["BACKEND"])(config["LOCATION"], config)  # no connection is made here
    assert cache.key_prefix == prefix
    assert cache.make_key("verdict") == (f"{prefix}:1:verdict" if prefix else ":1:verdict")
    if "timeout" in url:
        assert cache.default_timeout == 60


@pytest.mark.slow  # manage.py subprocesses
@pytest.mark.parametrize(
    ("handoff", "database", "refused"),
    [
        ("dispatcher", "sqlite:////tmp/x.sqlite3", "B24_HANDOFF=dispatcher needs PostgreSQL"),
        ("later", "sqlite:////tmp/x.sqlite3", "B24_HANDOFF is auto, request or dispatcher"),
        ("auto", "sqlite:////tmp/x.sqlite3", None),
        ("dispatcher", "postgres://postgres@127.0.0.1:5432/test", None),
    ],
)
def test_the_hand_off_setting_is_checked(handoff, database, refused):
    result = manage("check", env={**PRODUCTION, "B24_HANDOFF": handoff, "DATABASE_URL": database})
    if refused:
        assert result.returncode != 0 and refused in result.stderr, result.stderr
    else:
        assert "B24_HANDOFF" not in result.stderr, result.stderr
