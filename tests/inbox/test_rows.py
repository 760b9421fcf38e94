"""inbox/rows.py: the hot paths' INSERT, prepared once from the model's metadata, stores what `create` would."""

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from inbox import rows
from inbox.models import InboxItem
from openlines.models import Channel, InboundMessage, OutboundMessage
from tests.helpers import make_portal

pytestmark = pytest.mark.django_db


def test_no_save_signal_listens_to_the_rows_inserted_so():
    """`insert` sends no pre_save/post_save: a receiver added for these models must make them use `create`."""
    assert rows.check_no_signals(InboxItem, InboundMessage, OutboundMessage) == []


def test_an_inserted_row_reads_back_as_create_stores_it_sealed_at_rest():
    portal = make_portal("active", member_id="m-rows-1", domain="rows.example.test")
    item = rows.insert(
        InboxItem(
            portal_id=portal.pk,
            member_id=portal.member_id,
            event="ONTESTEVENT",
            data={"MESSAGES": [{"text": "héllo"}]},
            sealed_auth='{"access_token": "secret-token-1"}',
            idempotency_key="k" * 64,
        )
    )
    assert item.pk and not item._state.adding
    stored = InboxItem.objects.get(pk=item.pk)
    assert stored.data == {"MESSAGES": [{"text": "héllo"}]}
    assert stored.auth == {"access_token": "secret-token-1"}
    assert stored.state == InboxItem.State.PENDING and stored.received_at is not None
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT sealed_auth FROM {InboxItem._meta.db_table} WHERE id = %s", [item.pk])
        at_rest = cursor.fetchone()[0]
    assert "secret-token-1" not in at_rest  # sealed by its field, as save() does


def test_a_unique_key_still_refuses_a_second_row():
    portal = make_portal("active", member_id="m-rows-2", domain="rows2.example.test")
    channel = Channel.objects.create(portal=portal, connector_id="b24widget_http", line_id="1")
    fields = {"channel": channel, "action": "add", "key": "add:c:1", "external_chat_id": "c", "payload": {}}
    rows.insert(InboundMessage(**fields))
    with pytest.raises(IntegrityError), transaction.atomic():
        rows.insert(InboundMessage(**fields))
    assert InboundMessage.objects.filter(key="add:c:1").count() == 1


def test_insert_unless_stores_the_row_only_when_its_select_finds_none():
    """`/events/`' duplicate check inside its INSERT: every kind of value (JSON, sealed text, times, NULL) stored as
    `insert` stores it, and nothing stored (the object left unsaved) once the SELECT finds a row."""
    portal = make_portal("active", member_id="m-rows-3", domain="rows3.example.test")
    now = timezone.now()
    key = "u" * 64
    applied = f"SELECT 1 FROM {InboxItem._meta.db_table} WHERE idempotency_key = %s AND state = %s"

    def item(n: int) -> InboxItem:
        return InboxItem(
            portal_id=portal.pk,
            member_id=portal.member_id,
            event="ONTESTEVENT",
            data={"MESSAGES": [{"text": f"héllo {n}"}]},
            sealed_auth=f'{{"access_token": "secret-token-{n}"}}',
            idempotency_key=key,
            received_at=now,
            next_attempt_at=now,
            enqueued_at=None,
        )

    first, second, third = item(1), item(2), item(3)
    assert rows.insert_unless(first, applied, [key, str(InboxItem.State.DONE)]) and first.pk
    # A pending row of the key is no applied one: the second is stored too.
    assert rows.insert_unless(second, applied, [key, str(InboxItem.State.DONE)]) and second.pk > first.pk
    stored = InboxItem.objects.get(pk=second.pk)
    assert (stored.data, stored.auth) == ({"MESSAGES": [{"text": "héllo 2"}]}, {"access_token": "secret-token-2"})
    assert (stored.received_at, stored.enqueued_at, stored.portal_id) == (now, None, portal.pk)
    InboxItem.objects.filter(pk=first.pk).update(state=InboxItem.State.DONE)
    assert rows.insert_unless(third, applied, [key, str(InboxItem.State.DONE)]) is False
    assert third.pk is None and third._state.adding
    assert InboxItem.objects.filter(idempotency_key=key).count() == 2


@pytest.mark.parametrize("model", [InboxItem, InboundMessage])
def test_text_values_taken_as_they_are_equal_what_their_fields_would_prepare(model):
    """`statement` takes a text field's str as it is (a field's preparation cost more than the rest of the
    INSERT); every value it takes so must equal what the field prepares, as save() would, and every other
    value (a lazy string, a number, a date, JSON, a sealed secret) still goes through its field."""
    from django.utils.translation import gettext_lazy

    portal = make_portal("active", member_id="m-rows-4", domain="rows4.example.test")
    channel = Channel.objects.create(portal=portal, connector_id="b24widget_http", line_id="1")
    values = {
        InboxItem: {"portal_id": portal.pk, "member_id": portal.member_id, "event": "ONTESTEVENT", "ts": "17"},
        InboundMessage: {"channel_id": channel.pk, "key": "add:c:1", "external_chat_id": "c", "payload": {}},
    }[model]
    obj = model(**values, last_error=gettext_lazy("lazy text"))
    fields = rows._statement(model, connection.alias, None)[1]
    _sql, params = rows.statement(obj)
    taken = rows._plain(model, connection.alias, None)
    assert any(taken) and not all(taken)
    for field, plain, param in zip(fields, taken, params, strict=True):
        if not plain:  # (prepared by the field itself: JSON, times, numbers, the sealed auth)
            continue
        prepared = field.get_db_prep_save(field.pre_save(obj, True), connection)
        assert param == prepared and type(param) is type(prepared), field.name
    assert params[[f.name for f in fields].index("last_error")] == "lazy text"
