"""POST /channels/<id>/messages: signed, checked, stored once, 202 at once; delivered with
imconnector.send.messages (several per call) through the per-portal limiter; refusals send nothing."""

import time
from datetime import timedelta

import pytest
from django.core.cache import caches
from django.utils import timezone

from openlines import inbound, tasks
from openlines.models import Channel, Delivery, InboundMessage
from portals.models import Portal
from sandbox.standin import rest_imconnector as imc
from tests.openlines.conftest import act, message, signed
from tests.redis_keys import clear_cache

pytestmark = pytest.mark.django_db


def sent_calls(b24):
    return b24.calls("imconnector.send.messages")


def test_a_signed_message_is_accepted_and_reaches_the_open_line(client, channel, django_capture_on_commit_callbacks):
    row, secret, b24 = channel
    with django_capture_on_commit_callbacks(execute=True):
        response = signed(client, row, secret, message("m1", "Hello from the site"))
    assert response.status_code == 202 and response.json()["result"] == "accepted"
    [conversation] = imc.conversations(b24)
    assert [m["text"] for m in conversation["messages"]] == ["Hello from the site"]
    assert conversation["external_chat"] == "chat-1" and conversation["name"] == "Ann"
    stored = InboundMessage.objects.get()
    assert stored.state == Delivery.SENT and stored.im_chat_id == str(conversation["chat_id"])


def test_several_waiting_messages_go_in_one_call(client, channel, django_capture_on_commit_callbacks):
    row, secret, b24 = channel
    with django_capture_on_commit_callbacks(execute=False):  # the worker is busy: three wait
        for i in range(3):
            assert signed(client, row, secret, message(f"m{i}", f"text {i}")).status_code == 202
    before = sent_calls(b24)
    assert tasks.deliver_inbound(row.pk).startswith("sent 3")
    assert sent_calls(b24) - before == 1
    assert [m["text"] for m in imc.conversations(b24)[0]["messages"]] == ["text 0", "text 1", "text 2"]


def test_the_same_message_id_is_accepted_once(client, channel, django_capture_on_commit_callbacks):
    row, secret, b24 = channel
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m1")).status_code == 202
        again = signed(client, row, secret, message("m1"))
    assert again.status_code == 409 and again.json()["error"] == "duplicate_message"
    assert len(imc.conversations(b24)[0]["messages"]) == 1


def test_the_same_message_id_in_another_chat_is_another_message(client, channel, django_capture_on_commit_callbacks):
    """Outside systems number messages per chat: "m1" of chat-2 is not a duplicate of chat-1's "m1"."""
    row, secret, b24 = channel
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m1", "first chat", chat="chat-1")).status_code == 202
        assert signed(client, row, secret, message("m1", "second chat", chat="chat-2", user="u-2")).status_code == 202
        edit = message("m1", "second chat, edited", chat="chat-2", user="u-2", action="update")
        assert signed(client, row, secret, edit).status_code == 202
    texts = {c["external_chat"]: [m["text"] for m in c["messages"]] for c in imc.conversations(b24)}
    assert texts == {"chat-1": ["first chat"], "chat-2": ["second chat, edited"]}


def test_edits_and_deletes_reach_the_same_message(client, channel, django_capture_on_commit_callbacks):
    row, secret, b24 = channel
    with django_capture_on_commit_callbacks(execute=True):
        signed(client, row, secret, message("m1", "first"))
        assert signed(client, row, secret, {**message("m1", "first, edited"), "action": "update"}).status_code == 202
        signed(client, row, secret, message("m2", "second"))
        assert signed(client, row, secret, {**message("m2"), "action": "delete"}).status_code == 202
    [conversation] = imc.conversations(b24)
    assert [(m["text"], m["deleted"]) for m in conversation["messages"]] == [("first, edited", False), ("second", True)]
    assert b24.calls("imconnector.update.messages") == 1 and b24.calls("imconnector.delete.messages") == 1


def refused(response, status, code):
    assert response.status_code == status, response.content
    assert response.json()["error"] == code


@pytest.mark.parametrize(
    "case, status, code",
    [
        ("bad_signature", 401, "bad_signature"),
        ("other_secret", 401, "bad_signature"),
        ("old", 401, "stale_timestamp"),
        ("future", 401, "stale_timestamp"),
        ("no_timestamp", 401, "stale_timestamp"),
    ],
)
def test_forged_or_stale_requests_are_refused_and_nothing_is_sent(
    client, channel, case, status, code, django_capture_on_commit_callbacks
):
    row, secret, b24 = channel
    before = sent_calls(b24)
    kwargs = {
        "bad_signature": {"signature": "sha256=" + "0" * 64},
        "other_secret": {},
        "old": {"timestamp": int(time.time()) - 600},
        "future": {"timestamp": int(time.time()) + 600},
        "no_timestamp": {"timestamp": ""},
    }[case]
    with django_capture_on_commit_callbacks(execute=True):
        response = signed(client, row, "not-the-secret" if case == "other_secret" else secret, message(), **kwargs)
    refused(response, status, code)
    assert not InboundMessage.objects.exists() and sent_calls(b24) == before


def test_an_unknown_channel_is_404(client, db):
    import uuid

    response = client.post(f"/channels/{uuid.uuid4()}/messages", b"{}", content_type="application/json")
    refused(response, 404, "unknown_channel")


def test_a_disconnected_channel_refuses_with_its_own_code(client, frame, channel):
    row, secret, b24 = channel
    act(frame, b24, "disconnect")
    refused(signed(client, row, secret, message()), 409, "channel_disconnected")


def test_a_channel_this_process_knows_is_checked_as_it_is_now(client, frame, channel):
    """The channel's row is kept per process after its first message, but every INSERT checks it against the table:
    a disconnect, a rotated secret or a portal no longer serving, committed by another process after this one read
    the channel, takes effect at the next message (nothing stored for a refused one)."""
    row, secret, b24 = channel
    assert signed(client, row, secret, message("m1")).status_code == 202
    assert row.public_id in inbound._known
    # Another process rotates the secret: the old one is refused, the new one accepted.
    answer = act(frame, b24, "rotate")
    new_secret = answer.json()["secret"]
    refused(signed(client, row, secret, message("m2")), 401, "bad_signature")
    assert signed(client, row, new_secret, message("m3")).status_code == 202
    # The portal stops serving (uninstalled): refused, though this process read the channel as connected.
    portal = row.portal
    Portal.objects.filter(pk=portal.pk).update(status=Portal.Status.UNINSTALLED)
    refused(signed(client, row, new_secret, message("m4")), 409, "channel_disconnected")
    Portal.objects.filter(pk=portal.pk).update(status=portal.status)
    assert signed(client, row, new_secret, message("m5")).status_code == 202
    # Disconnected by another process (the row changed under this process's copy).
    Channel.objects.filter(pk=row.pk).update(state=Channel.State.DISCONNECTED)
    refused(signed(client, row, new_secret, message("m6")), 409, "channel_disconnected")
    assert sorted(InboundMessage.objects.filter(channel=row).values_list("external_message_id", flat=True)) == [
        "m1",
        "m3",
        "m5",
    ]


def test_an_oversized_body_is_413_before_anything_else(client, channel, settings):
    row, secret, b24 = channel
    settings.OPENLINES_INBOUND_MAX_BYTES = 1000
    refused(signed(client, row, secret, message(text="x" * 2000)), 413, "body_too_large")


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"chat": {}, "user": {"id": "u"}, "message": {"id": "m", "text": "t"}}, "chat.id"),
        ({"chat": {"id": "c"}, "user": {"id": "u"}, "message": {"id": "m"}}, "message.text"),
        (
            {"chat": {"id": "c"}, "user": {"id": "u"}, "message": {"id": "m", "text": "t", "date": "today"}},
            "message.date",
        ),
        ({"chat": {"id": "c"}, "user": {"id": "u"}, "message": {"id": "m", "text": "t"}, "action": "nuke"}, "action"),
        ([1, 2], "object"),
        (
            {"chat": {"id": "c"}, "user": {"id": "u"}, "message": {"id": "m", "text": "nul \u0000 inside"}},
            "message.text",
        ),
        ({"chat": {"id": "c\u0007"}, "user": {"id": "u"}, "message": {"id": "m", "text": "t"}}, "chat.id"),
    ],
)
def test_a_malformed_body_is_400_and_names_the_field(client, channel, payload, field):
    row, secret, b24 = channel
    response = signed(client, row, secret, payload)
    refused(response, 400, "bad_request")
    assert field in response.json()["error_description"]


@pytest.mark.slow  # over 1.5 s: limit retries
def test_query_limit_exceeded_loses_nothing(client, channel, django_capture_on_commit_callbacks, settings):
    """Bitrix24 answers QUERY_LIMIT_EXCEEDED longer than the client retries: the messages wait, then go, once."""
    # A fast bucket: each limit answer fills it, and the client's retries wait for it (keeps the test short).
    settings.B24_RATE_LIMIT_BURST, settings.B24_RATE_LIMIT_PER_SECOND = 5, 500.0
    row, secret, b24 = channel
    b24.fail_next("imconnector.send.messages", "QUERY_LIMIT_EXCEEDED", 503, times=20)
    with django_capture_on_commit_callbacks(execute=True):
        for i in range(3):
            assert signed(client, row, secret, message(f"m{i}", f"t{i}")).status_code == 202
    assert set(InboundMessage.objects.values_list("state", flat=True)) == {Delivery.FAILED}
    assert imc.conversations(b24) == []
    b24._failures.clear()  # Bitrix24 is back
    InboundMessage.objects.update(next_attempt_at=InboundMessage.objects.first().received_at)  # the wait is over
    tasks.sweep()
    assert set(InboundMessage.objects.values_list("state", flat=True)) == {Delivery.SENT}
    assert [m["text"] for m in imc.conversations(b24)[0]["messages"]] == ["t0", "t1", "t2"]


def test_a_message_bitrix24_refuses_is_a_dead_letter_and_replayable(
    client, channel, admin_client, django_capture_on_commit_callbacks
):
    row, secret, b24 = channel
    with django_capture_on_commit_callbacks(execute=True):
        signed(client, row, secret, message("m1", "ok"))
    # The line went inactive in Bitrix24 behind our back: the call fails as a whole (NOT_ACTIVE_LINE),
    # is retried, and after OPENLINES_RETRY_HOURS becomes a dead letter.
    imc.state(b24).lines[("b24widget_http", "1")]["active"] = False
    with django_capture_on_commit_callbacks(execute=True):
        signed(client, row, secret, message("m2", "later"))
    pending = InboundMessage.objects.get(external_message_id="m2")
    assert pending.state == Delivery.FAILED and "NOT_ACTIVE_LINE" in pending.last_error
    from datetime import timedelta

    InboundMessage.objects.filter(pk=pending.pk).update(
        received_at=pending.received_at - timedelta(days=2), next_attempt_at=pending.received_at - timedelta(days=2)
    )
    tasks.sweep()
    assert InboundMessage.objects.get(pk=pending.pk).state == Delivery.DEAD
    imc.state(b24).lines[("b24widget_http", "1")]["active"] = True
    response = admin_client.post(
        "/admin/openlines/inboundmessage/", {"action": "replay", "_selected_action": [pending.pk]}
    )
    assert response.status_code == 302
    assert InboundMessage.objects.get(pk=pending.pk).state == Delivery.SENT
    assert [m["text"] for m in imc.conversations(b24)[0]["messages"]] == ["ok", "later"]


def test_names_bitrix24_would_refuse_are_cleaned_not_sent_as_they_are(
    client, channel, django_capture_on_commit_callbacks
):
    """imconnector-send-messages.md: name and last_name hold letters, spaces, hyphens and apostrophes only,
    at most 25 characters; the rest is dropped before Bitrix24 sees it, and a name of nothing else is left out."""
    row, secret, b24 = channel
    payload = message("m1", "Hello")
    payload["user"].update(name="Ann2 <b>O'Neil-Smith</b> 😀", last_name="12345")
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, payload).status_code == 202
    sent = InboundMessage.objects.get().payload["user"]
    assert sent["name"] == "Ann bO'Neil-Smithb" and "last_name" not in sent
    assert imc.conversations(b24)[0]["name"] == "Ann bO'Neil-Smithb"


def test_numbers_that_are_not_digits_are_dropped_from_names_too(client, channel, django_capture_on_commit_callbacks):
    """ "Numbers ... are not allowed" (imconnector-send-messages.md) covers "²" and "Ⅻ" as well: the stand-in
    refuses a message whose name holds them, so they are dropped here and the message reaches the line."""
    row, secret, b24 = channel
    payload = message("m1", "Hello")
    payload["user"].update(name="Ann² Ⅻ", last_name="Lee½")
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, payload).status_code == 202
    stored = InboundMessage.objects.get()
    assert stored.state == Delivery.SENT and (stored.payload["user"]["name"], stored.payload["user"]["last_name"]) == (
        "Ann",
        "Lee",
    )
    assert imc.conversations(b24)[0]["name"] == "Ann"


def statements(captured) -> list[str]:
    """The SQL statements of a request, without the test transaction's savepoints."""
    return [q["sql"].split()[0] for q in captured if "SAVEPOINT" not in q["sql"]]


def test_an_accepted_message_is_one_insert_once_the_channel_is_known_and_the_activity_once_a_minute(
    client, channel, django_assert_max_num_queries, django_capture_on_commit_callbacks
):
    """The hot path: the channel and its portal read in one SELECT the first time (the portal's tokens neither
    loaded nor decrypted), then only the row's INSERT, which checks the channel as read in its own statement;
    last_activity_at written at most once a minute by a process, not per message."""
    row, secret, b24 = channel
    inbound._known.clear()
    inbound._activity_noted.pop(row.public_id, None)
    Channel.objects.filter(pk=row.pk).update(last_activity_at=None)
    # (inside the test's transaction each write has a savepoint, SAVEPOINT and RELEASE: 2 more statements each)
    with django_capture_on_commit_callbacks(execute=False), django_assert_max_num_queries(7) as first:
        assert signed(client, row, secret, message("m1")).status_code == 202
    assert statements(first.captured_queries) == ["SELECT", "INSERT", "UPDATE"]
    select = first.captured_queries[0]["sql"]
    insert = next(q["sql"] for q in first.captured_queries if q["sql"].startswith("INSERT"))
    assert "JOIN portals_portal" in select and "openlines_channel" in select
    assert not any(name in select for name in ("access_token", "refresh_token", "application_token"))
    assert "WHERE EXISTS" in insert and "openlines_channel" in insert
    active = Channel.objects.get(pk=row.pk).last_activity_at
    assert active is not None
    with django_capture_on_commit_callbacks(execute=False), django_assert_max_num_queries(3) as second:
        assert signed(client, row, secret, message("m2")).status_code == 202
    assert statements(second.captured_queries) == ["INSERT"]
    assert Channel.objects.get(pk=row.pk).last_activity_at == active
    inbound._activity_noted[row.public_id] -= 61  # a minute later
    with django_capture_on_commit_callbacks(execute=False), django_assert_max_num_queries(6) as third:
        assert signed(client, row, secret, message("m3")).status_code == 202
    assert statements(third.captured_queries) == ["INSERT", "UPDATE"]
    assert Channel.objects.get(pk=row.pk).last_activity_at >= active
    assert InboundMessage.objects.filter(channel=row).count() == 3


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_a_duplicate_is_409_and_the_next_message_is_stored(client, channel):
    """As a request runs in production (autocommit): the INSERT stands alone, and a duplicate's refusal
    leaves the connection fit for the next request."""
    row, secret, b24 = channel
    assert signed(client, row, secret, message("m1")).status_code == 202
    again = signed(client, row, secret, message("m1"))
    assert again.status_code == 409 and again.json()["error"] == "duplicate_message"
    assert signed(client, row, secret, message("m2")).status_code == 202
    assert sorted(InboundMessage.objects.filter(channel=row).values_list("external_message_id", flat=True)) == [
        "m1",
        "m2",
    ]


@pytest.fixture
def channel_updates_fail(db):
    """Every UPDATE of a channel row fails in the database (a trigger: SQLite aborts the statement, not the
    transaction, as a connection lost between two statements would) until `heal()`, which this yields."""
    from django.conf import settings
    from django.db import connection

    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
        pytest.skip("PostgreSQL aborts the test's whole transaction on the failed statement: run on SQLite")
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TRIGGER channel_update_fails BEFORE UPDATE ON {Channel._meta.db_table} "
            "BEGIN SELECT RAISE(ABORT, 'the database went away'); END"
        )

    def heal():
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS channel_update_fails")

    yield heal
    heal()


def test_a_stored_message_is_accepted_though_the_database_fails_after_storing_it(
    client, channel, settings, channel_updates_fail, django_capture_on_commit_callbacks, caplog
):
    """What runs after the INSERT (the channel's activity, the hand-off's mark) fails: the answer is still the
    202 for a message we keep (a 5xx would tell the sender to retry, and the retry would be a 409 duplicate),
    and the sweep delivers it once the database is whole."""
    row, secret, b24 = channel
    settings.OPENLINES_TASKS_INLINE = False
    with django_capture_on_commit_callbacks(execute=True):
        answer = signed(client, row, secret, message("m-kept", "Kept anyway", chat="chat-kept"))
    assert answer.status_code == 202, answer.content
    stored = InboundMessage.objects.get(channel=row, external_message_id="m-kept")
    assert Channel.objects.get(pk=row.pk).inbound_queued_at is None  # no task was handed off
    assert "channel activity not recorded" in caplog.text
    assert "the database went away" not in answer.content.decode()

    channel_updates_fail()  # the database whole again: the sweep's turn
    settings.OPENLINES_TASKS_INLINE = True
    with django_capture_on_commit_callbacks(execute=True):
        tasks.sweep()
    stored.refresh_from_db()
    assert stored.state == Delivery.SENT
    texts = [m["text"] for c in imc.conversations(b24) for m in c["messages"]]
    assert texts.count("Kept anyway") == 1


# --- limits and server errors: how long the next attempt waits (issue 23: a limit is "later", not a failure) ---
def between(value, low, high):
    return low <= value <= high


def test_a_limit_answer_waits_for_the_bucket_and_is_no_failed_attempt(
    client, channel, django_capture_on_commit_callbacks, settings
):
    """QUERY_LIMIT_EXCEEDED past the client's own retries: the rows wait LIMIT_WAIT_MIN (the portal's next slot is
    sooner with this fast bucket), no attempt counted, so the wait does not double and no dead letter comes
    nearer; then every message goes once, in order."""
    settings.B24_RATE_LIMIT_BURST, settings.B24_RATE_LIMIT_PER_SECOND = 5, 500.0  # quick client retries
    wait = timedelta(seconds=tasks.LIMIT_WAIT_MIN)
    row, secret, b24 = channel
    b24.fail_next("imconnector.send.messages", "QUERY_LIMIT_EXCEEDED", 503, times=1000)
    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        for i in range(3):
            assert signed(client, row, secret, message(f"m{i}", f"t{i}")).status_code == 202
    after = timezone.now()
    first, *behind = InboundMessage.objects.order_by("id")
    assert (first.state, first.attempts) == (Delivery.FAILED, 0) and "QUERY_LIMIT_EXCEEDED" in first.last_error
    assert between(first.next_attempt_at, before + wait, after + wait)
    assert all(r.attempts == 0 and r.next_attempt_at >= first.next_attempt_at for r in behind)
    # Again, for a message that reached us two days ago: still no attempt counted, the same short wait, no dead
    # letter (a real failure that old would be one).
    InboundMessage.objects.update(received_at=first.received_at - timedelta(days=2))
    InboundMessage.objects.update(next_attempt_at=first.received_at)  # the wait is over
    before = timezone.now()
    assert "limit (QUERY_LIMIT_EXCEEDED)" in tasks.deliver_inbound(row.pk)
    after = timezone.now()
    first.refresh_from_db()
    assert (first.state, first.attempts) == (Delivery.FAILED, 0)
    assert between(first.next_attempt_at, before + wait, after + wait)
    assert imc.conversations(b24) == []
    b24._failures.clear()  # Bitrix24's counter drained
    InboundMessage.objects.update(next_attempt_at=first.received_at)
    tasks.sweep()
    assert list(InboundMessage.objects.order_by("id").values_list("state", "attempts")) == [(Delivery.SENT, 1)] * 3
    assert [m["text"] for m in imc.conversations(b24)[0]["messages"]] == ["t0", "t1", "t2"]


def limited_once(client, channel, capture, code: str, status: int) -> InboundMessage:
    """One message whose delivery met a limit answer once: sent once, not again in the worker, and left failed
    with no attempt counted (the portal's slot decides when it goes again). Returns its row."""
    row, secret, b24 = channel
    b24.fail_next("imconnector.send.messages", code, status, times=1)
    with capture(execute=True):
        assert signed(client, row, secret, message("m0", "t0")).status_code == 202
    assert sent_calls(b24) == 1 and imc.conversations(b24) == []  # the one limit answer, not sent again
    first = InboundMessage.objects.get()
    assert (first.state, first.attempts) == (Delivery.FAILED, 0) and code in first.last_error
    return first


def test_a_limit_answer_ends_the_run_and_the_next_takes_the_whole_backlog_in_one_call(
    client, channel, django_capture_on_commit_callbacks, settings
):
    """QUERY_LIMIT_EXCEEDED once: the run does not send the same call again in the worker (the client's own
    retries kept the rows it began with while the backlog grew, and held the worker a slowed slot each); the
    rows wait for the portal's next slot, and the next run carries them and what came meanwhile in one call."""
    settings.B24_RATE_LIMIT_BURST, settings.B24_RATE_LIMIT_PER_SECOND = 5, 500.0
    row, secret, b24 = channel
    first = limited_once(client, channel, django_capture_on_commit_callbacks, "QUERY_LIMIT_EXCEEDED", 503)
    with django_capture_on_commit_callbacks(execute=False):  # meanwhile
        for i in (1, 2):
            assert signed(client, row, secret, message(f"m{i}", f"t{i}")).status_code == 202
    InboundMessage.objects.update(next_attempt_at=first.received_at)  # the slot came
    assert tasks.deliver_inbound(row.pk).startswith("sent 3")
    assert sent_calls(b24) == 2  # the three in one call
    assert [m["text"] for m in imc.conversations(b24)[0]["messages"]] == ["t0", "t1", "t2"]
    assert list(InboundMessage.objects.values_list("attempts", flat=True)) == [1, 1, 1]


def test_an_operating_time_limit_is_not_waited_out_in_the_worker(
    client, channel, django_capture_on_commit_callbacks, settings
):
    """OPERATION_TIME_LIMIT (the method's budget, settings/performance/limits.md): the run does not send the call
    again in the worker (the client did, after waiting for the method's reset up to B24_MAX_WAIT); the method is
    held back and the rows wait for its reset, no attempt counted. A method already held back is not waited for
    either: nothing is sent, and the rows wait as long as the hold lasts."""
    from bitrix24 import limits

    row, secret, b24 = channel
    first = limited_once(client, channel, django_capture_on_commit_callbacks, "OPERATION_TIME_LIMIT", 429)
    # The method's reset is 20 s away, well within B24_MAX_WAIT (120 s), which the worker slept through before.
    limits.pause_method(row.portal.member_id, "imconnector.send.messages", time.time() + 20)
    InboundMessage.objects.update(next_attempt_at=first.received_at)  # the row's own wait is over
    before = timezone.now()
    assert "limit (OPERATION_TIME_LIMIT)" in tasks.deliver_inbound(row.pk)
    after = timezone.now()
    assert sent_calls(b24) == 1 and imc.conversations(b24) == []  # nothing sent
    first.refresh_from_db()
    assert (first.state, first.attempts) == (Delivery.FAILED, 0)
    assert between(first.next_attempt_at, before + timedelta(seconds=19), after + timedelta(seconds=20))
    limits.pause_method(row.portal.member_id, "imconnector.send.messages", time.time())  # the reset came
    InboundMessage.objects.update(next_attempt_at=first.received_at)
    assert tasks.deliver_inbound(row.pk).startswith("sent 1")
    assert [m["text"] for m in imc.conversations(b24)[0]["messages"]] == ["t0"]
    assert InboundMessage.objects.get().attempts == 1


def test_our_limiter_pacing_us_is_a_wait_of_its_own_length_and_sends_nothing(
    client, channel, django_capture_on_commit_callbacks, settings
):
    """The limiter's next slot is further than a background call may wait (B24_MAX_WAIT): nothing is sent and
    the row waits the seconds the limiter named (~100 s here: one request per 100 s), no attempt counted."""
    settings.B24_RATE_LIMIT_BURST, settings.B24_RATE_LIMIT_PER_SECOND, settings.B24_MAX_WAIT = 1, 0.01, 5.0
    row, secret, b24 = channel
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m0", "t0")).status_code == 202  # takes the one slot
    calls = sent_calls(b24)
    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m1", "t1")).status_code == 202
    after = timezone.now()
    assert sent_calls(b24) == calls  # nothing reached Bitrix24
    waiting = InboundMessage.objects.get(external_message_id="m1")
    assert (waiting.state, waiting.attempts) == (Delivery.FAILED, 0) and "QUERY_LIMIT_EXCEEDED" in waiting.last_error
    assert between(waiting.next_attempt_at, before + timedelta(seconds=90), after + timedelta(seconds=100.5))
    settings.B24_RATE_LIMIT_PER_SECOND = 500.0
    clear_cache(caches["default"])  # the slot came (the run's own keys only)
    InboundMessage.objects.update(next_attempt_at=waiting.received_at)
    tasks.sweep()
    assert [m["text"] for m in imc.conversations(b24)[0]["messages"]] == ["t0", "t1"]
    assert InboundMessage.objects.get(pk=waiting.pk).attempts == 1


@pytest.mark.parametrize(
    "error, status, first, second",
    [("INTERNAL_SERVER_ERROR", 500, 5.0, 10.0), ("ERROR_CONNECTOR_NOT_ACTIVE", 400, 30.0, 30.0)],
)
def test_a_server_error_is_retried_after_5_s_then_doubling_other_failures_after_30_s(
    client, channel, django_capture_on_commit_callbacks, error, status, first, second
):
    """One doubling schedule (5, 10, 20 ... s): a 5xx follows it, other failures wait at least 30 s."""
    row, secret, b24 = channel
    b24.fail_next("imconnector.send.messages", error, status, times=2)
    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m0", "t0")).status_code == 202
    after = timezone.now()
    failed = InboundMessage.objects.get()
    assert (failed.state, failed.attempts) == (Delivery.FAILED, 1)
    assert between(failed.next_attempt_at, before + timedelta(seconds=first), after + timedelta(seconds=first))
    InboundMessage.objects.update(next_attempt_at=failed.received_at)
    before = timezone.now()
    tasks.sweep()
    after = timezone.now()
    failed.refresh_from_db()
    assert failed.attempts == 2
    assert between(failed.next_attempt_at, before + timedelta(seconds=second), after + timedelta(seconds=second))
    InboundMessage.objects.update(next_attempt_at=failed.received_at)
    tasks.sweep()
    assert [m["text"] for m in imc.conversations(b24)[0]["messages"]] == ["t0"]
