"""Secrets at rest: only ciphertext in the column, key rotation, clear failures without the secret."""

import io

import pytest
from cryptography.fernet import Fernet
from django.db import connection

from portals.models import Portal
from tests.helpers import make_portal
from vault import fields as crypto

pytestmark = pytest.mark.django_db


def raw_column(portal, column):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM portals_portal WHERE id = %s", [portal.pk])
        return cursor.fetchone()[0]


def test_column_holds_ciphertext_only():
    portal = make_portal(access_token="plain-access", refresh_token="plain-refresh", application_token="plain-app")
    for column, plain in (
        ("access_token", "plain-access"),
        ("refresh_token", "plain-refresh"),
        ("application_token", "plain-app"),
    ):
        stored = raw_column(portal, column)
        assert "plain" not in stored
        assert crypto.decrypt(stored) == plain
    again = Portal.objects.get(pk=portal.pk)
    assert (again.access_token, again.refresh_token, again.application_token) == (
        "plain-access",
        "plain-refresh",
        "plain-app",
    )


def test_empty_stays_empty():
    portal = make_portal(access_token="")
    assert raw_column(portal, "access_token") == ""
    assert Portal.objects.get(pk=portal.pk).access_token == ""


def test_key_rotation_old_key_still_decrypts_and_the_command_retires_it(settings):
    from django.core.management import call_command

    old_key = settings.TOKEN_ENCRYPTION_KEYS[0]
    portal = make_portal(access_token="rotating", refresh_token="r", application_token="a")
    from inbox.models import InboxItem

    event = InboxItem.objects.create(
        member_id=portal.member_id,
        event="ONAPPINSTALL",
        idempotency_key="k" * 64,
        sealed_auth='{"refresh_token": "event-secret"}',
    )
    new_key = Fernet.generate_key().decode()
    settings.TOKEN_ENCRYPTION_KEYS = [new_key, old_key]
    assert Portal.objects.get(pk=portal.pk).access_token == "rotating"
    out = io.StringIO()
    call_command("rotate_token_keys", stdout=out)
    assert out.getvalue().splitlines()[-1] == (
        "re-encrypted with the first key: inbox items 1, portals 1, channels 0, held tokens 0"
    )
    settings.TOKEN_ENCRYPTION_KEYS = [new_key]  # the old key is gone
    again = Portal.objects.get(pk=portal.pk)
    assert (again.access_token, again.refresh_token, again.application_token) == ("rotating", "r", "a")
    assert InboxItem.objects.get(pk=event.pk).auth == {"refresh_token": "event-secret"}
    assert Fernet(new_key.encode()).decrypt(raw_column(portal, "access_token").encode()) == b"rotating"


def test_unknown_key_fails_clearly_without_the_secret(settings):
    portal = make_portal(access_token="very-secret-value")
    settings.TOKEN_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(crypto.DecryptionError) as info:
        Portal.objects.get(pk=portal.pk)
    assert "very-secret-value" not in str(info.value)


def test_repr_holds_no_secret():
    portal = make_portal(access_token="very-secret-value")
    assert "very-secret-value" not in repr(portal) and "very-secret-value" not in str(portal)


def test_invalid_key_is_a_configuration_error(settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.TOKEN_ENCRYPTION_KEYS = ["not-a-key"]
    with pytest.raises(ImproperlyConfigured):
        crypto.encrypt("x")


def test_rotation_reports_progress_and_dry_run_writes_nothing(settings):
    from django.core.management import call_command

    old_key = settings.TOKEN_ENCRYPTION_KEYS[0]
    portal = make_portal(access_token="rotating")
    before = raw_column(portal, "access_token")
    settings.TOKEN_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), old_key]
    out = io.StringIO()
    call_command("rotate_token_keys", "--dry-run", stdout=out)
    assert out.getvalue().splitlines() == [
        "checking every stored secret",
        "checked (dry run: nothing written): inbox items 0, portals 1, channels 0, held tokens 0",
    ]
    assert raw_column(portal, "access_token") == before
    out = io.StringIO()
    call_command("rotate_token_keys", stdout=out)
    assert out.getvalue().splitlines()[-1] == (
        "re-encrypted with the first key: inbox items 0, portals 1, channels 0, held tokens 0"
    )
    assert raw_column(portal, "access_token") != before


def test_an_undecryptable_portal_is_named_with_what_to_do_and_the_others_are_rotated(settings):
    from django.core.management import CommandError, call_command

    lost = make_portal(access_token="lost-secret")
    kept = make_portal(member_id="m2", domain="b.bitrix24.com", access_token="kept-secret")
    lost_key, kept_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with connection.cursor() as cursor:  # the first portal's secret under a key that is now gone
        cursor.execute(
            "UPDATE portals_portal SET access_token = %s WHERE id = %s",
            [Fernet(lost_key.encode()).encrypt(b"lost-secret").decode(), lost.pk],
        )
    settings.TOKEN_ENCRYPTION_KEYS = [kept_key] + list(settings.TOKEN_ENCRYPTION_KEYS)
    out = io.StringIO()
    with pytest.raises(CommandError) as failed:
        call_command("rotate_token_keys", stdout=out)
    message = str(failed.value)
    assert f"portal {lost.pk} (domain a.bitrix24.com, member_id m1)" in message and "b.bitrix24.com" not in message
    assert "Put the key they were encrypted with back into TOKEN_ENCRYPTION_KEYS" in message
    assert "lost-secret" not in message and lost_key not in message
    assert out.getvalue().splitlines()[-1] == (
        "re-encrypted with the first key: inbox items 0, portals 1, channels 0, held tokens 0"
    )
    assert Fernet(kept_key.encode()).decrypt(raw_column(kept, "access_token").encode()) == b"kept-secret"


@pytest.mark.slow  # a manage.py subprocess
def test_the_help_documents_dry_run():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    answer = subprocess.run(
        [sys.executable, "manage.py", "rotate_token_keys", "--help"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert answer.returncode == 0 and "--dry-run" in answer.stdout
