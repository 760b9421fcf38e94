"""Settings: production refuses to start without its secrets; `check --deploy` is clean when set."""
import os
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


def manage(*args, env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("B24_", "DJANGO_", "SECRET_KEY", "TOKEN_",
                                                                      "DEBUG", "ALLOWED_HOSTS", "SECURE_"))}
    base["DJANGO_SETTINGS_MODULE"] = "b24widget.settings"
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_with_the_documented_production_variables():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("missing", ["SECRET_KEY", "B24_CLIENT_ID", "B24_CLIENT_SECRET", "B24_APP_URL",
                                     "TOKEN_ENCRYPTION_KEYS"])
def test_refuses_to_start_without_a_secret(missing):
    env = {k: v for k, v in PRODUCTION.items() if k != missing}
    result = manage("check", env=env)
    assert result.returncode != 0
    assert f"{missing} must be set when DEBUG is off" in result.stderr
    # The message names what is missing, never a value that is set.
    assert PRODUCTION["B24_CLIENT_SECRET"] not in result.stderr


def test_debug_runs_without_any_secret():
    result = manage("check", env={"DEBUG": "true"})
    assert result.returncode == 0, result.stderr


def test_healthz(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "cache": "ok", "oauth_client": "ok"}}
