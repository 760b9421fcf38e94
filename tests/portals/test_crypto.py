"""Secrets at rest: only ciphertext in the column, key rotation, clear failures without the secret."""
import io

import pytest
from cryptography.fernet import Fernet
from django.db import connection

from portals import crypto
from portals.models import Portal

pytestmark = pytest.mark.django_db


def raw_column(portal, column):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM portals_portal WHERE id = %s", [portal.pk])
        return cursor.fetchone()[0]


def make_portal(**fields):
    return Portal.objects.create(member_id="m1", domain="a.bitrix24.com", client_endpoint="https://a.bitrix24.com/rest/",
                                 **fields)


def test_column_holds_ciphertext_only():
    portal = make_portal(access_token="plain-access", refresh_token="plain-refresh", application_token="plain-app")
    for column, plain in (("access_token", "plain-access"), ("refresh_token", "plain-refresh"),
                          ("application_token", "plain-app")):
        stored = raw_column(portal, column)
        assert "plain" not in stored
        assert crypto.decrypt(stored) == plain
    again = Portal.objects.get(pk=portal.pk)
    assert (again.access_token, again.refresh_token, again.application_token) == (
        "plain-access", "plain-refresh", "plain-app")


def test_empty_stays_empty():
    portal = make_portal()
    assert raw_column(portal, "access_token") == ""
    assert Portal.objects.get(pk=portal.pk).access_token == ""


def test_key_rotation_old_key_still_decrypts_and_the_command_retires_it(settings):
    from django.core.management import call_command
    old_key = settings.TOKEN_ENCRYPTION_KEYS[0]
    portal = make_portal(access_token="rotating", refresh_token="r", application_token="a")
    new_key = Fernet.generate_key().decode()
    settings.TOKEN_ENCRYPTION_KEYS = [new_key, old_key]
    assert Portal.objects.get(pk=portal.pk).access_token == "rotating"
    call_command("rotate_token_keys", stdout=io.StringIO())
    settings.TOKEN_ENCRYPTION_KEYS = [new_key]  # the old key is gone
    again = Portal.objects.get(pk=portal.pk)
    assert (again.access_token, again.refresh_token, again.application_token) == ("rotating", "r", "a")
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
