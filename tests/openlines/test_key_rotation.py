"""Key rotation covers every secret: the channels' too (vault/rotation.py reads every encrypted field of every
model). After rotating and removing the old key, every channel still accepts signed messages and signs webhooks."""

import io

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.db import connection

from inbox.models import InboxItem
from openlines.models import Channel
from openlines.outbound import SIGNATURE_HEADER, TIMESTAMP_HEADER, WEBHOOK, sign
from portals.models import Portal
from sandbox.standin import rest_imconnector as imc
from tests.openlines.conftest import message, signed
from vault import rotation

# Every secret at rest, by model: a new encrypted field must be named here, and rotation covers it by itself.
SECRETS = {
    InboxItem: ["sealed_auth"],
    Portal: ["access_token", "refresh_token", "application_token"],
    Channel: ["secret"],
}


def test_the_plan_is_every_encrypted_field_of_every_model():
    assert dict(rotation.plan()) == SECRETS


def test_after_rotation_and_without_the_old_key_channels_still_work(
    client, channel, receiver, sink, settings, django_capture_on_commit_callbacks
):
    row, secret, b24 = channel
    old_key = settings.TOKEN_ENCRYPTION_KEYS[0]
    new_key = Fernet.generate_key().decode()
    settings.TOKEN_ENCRYPTION_KEYS = [new_key, old_key]
    out = io.StringIO()
    call_command("rotate_token_keys", "--dry-run", stdout=out)
    assert out.getvalue().splitlines()[-1].endswith("channels 1, held tokens 0")
    call_command("rotate_token_keys", stdout=out)
    settings.TOKEN_ENCRYPTION_KEYS = [new_key]  # the old key is gone
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret FROM openlines_channel WHERE id = %s", [row.pk])
        assert Fernet(new_key.encode()).decrypt(cursor.fetchone()[0].encode()).decode() == secret
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m1", "after rotation")).status_code == 202
    chat_id = imc.conversations(b24)[0]["chat_id"]
    imc.operator_reply(b24, chat_id, "signed with the same secret", handlers=[sink.url])
    with django_capture_on_commit_callbacks(execute=True):
        sink.relay(client)
    [hook] = receiver.got
    assert hook["headers"][SIGNATURE_HEADER] == sign(secret, hook["headers"][TIMESTAMP_HEADER], hook["body"], WEBHOOK)


def test_a_channel_no_key_decrypts_is_named_with_what_to_do(channel, settings):
    row, secret, _b24 = channel
    lost_key = Fernet.generate_key().decode()
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE openlines_channel SET secret = %s WHERE id = %s",
            [Fernet(lost_key.encode()).encrypt(secret.encode()).decode(), row.pk],
        )
    out = io.StringIO()
    with pytest.raises(CommandError) as failed:
        call_command("rotate_token_keys", "--dry-run", stdout=out)
    message_text = str(failed.value)
    assert f"channel {row.pk} (public_id {row.public_id}, connector_id {row.connector_id}, line_id 1)" in message_text
    assert "rotate its secret" in message_text and secret not in message_text and lost_key not in message_text
