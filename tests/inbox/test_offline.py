"""The pull of a portal's offline queue (inbox/offline.py) against the stand-in: what it stores, clears and
reports, what it costs, its cap, a record fetched twice, ONOFFLINEEVENT and the beat's fan-out.

Pages: api-reference/events/offline-events.md, event-offline-get.md (clear=0, process_id), event-offline-clear.md,
event-offline-error.md, on-offline-event.md."""

import time

import pytest
import requests

from b24widget.celery import app as celery_app
from bitrix24 import limits
from inbox import offline, tasks
from inbox import queue as inbox
from inbox.models import InboxItem
from sandbox.standin import rest_offline
from tests.conftest import deliver, do_install

pytestmark = pytest.mark.django_db


def bind_offline(b24, event):
    """An administrator of the portal binds another event offline for our app (as a stranger's app could not)."""
    token = b24.issue_tokens("1")["access_token"]
    with requests.Session() as http:
        http.trust_env = False
        answer = http.post(
            f"{b24.client_endpoint}event.bind.json",
            json={"auth": token, "event": event, "event_type": "offline"},
            timeout=5,
        )
    assert answer.json()["result"] is True


def updates(b24, count):
    """`count` app updates the app never heard of (the queue keeps one record per VERSION here)."""
    b24.app_unreachable()
    for n in range(count):
        b24.deliver_event("ONAPPUPDATE", data={"VERSION": str(n + 1)})
    b24.app_unreachable(False)


def test_a_pull_stores_each_record_clears_it_and_reports_what_it_cannot_store(installed):
    """Stored in the inbox (source offline, the record's ids as data), cleared by process_id and id; an event
    nobody registered is reported with event.offline.error and stays in the portal's queue, marked."""
    portal, b24 = installed
    bind_offline(b24, "ONCRMLEADADD")
    b24.app_unreachable()
    b24.deliver_event("ONAPPUPDATE")
    b24.deliver_event("ONCRMLEADADD", data={"FIELDS": {"ID": "7"}})
    b24.app_unreachable(False)

    pulled = offline.pull(b24.member_id)

    assert (pulled.fetched, pulled.stored, pulled.refused, pulled.more) == (2, 1, 1, False)
    [item] = InboxItem.objects.filter(source="offline")
    assert (item.event, item.portal_id, item.state, item.auth) == ("ONAPPUPDATE", portal.pk, "pending", {})
    assert item.data == {"VERSION": "1", "PREVIOUS_VERSION": "0", "LANGUAGE_ID": "en"}
    [left] = rest_offline.records(b24)
    assert (left["EVENT_NAME"], left["ERROR"], left["PROCESS_ID"]) == (
        "ONCRMLEADADD",
        1,
        offline.process_id(b24.member_id),
    )
    # The stored record runs its handler like an online event; an update it already knows changes nothing.
    inbox.process_pending()
    item.refresh_from_db()
    assert (item.state, item.outcome) == ("done", "no change")


def test_a_record_fetched_again_after_a_failed_clear_is_stored_once(installed):
    """event-offline-get.md: the same process_id re-selects what was not cleared; the inbox key (the record's ID,
    MESSAGE_ID and TIMESTAMP_X) keeps one row for it."""
    portal, b24 = installed
    updates(b24, 2)
    b24.fail_next("event.offline.clear", "INTERNAL_SERVER_ERROR", 500)

    first = offline.pull(b24.member_id)
    assert (first.stored, first.failed) == (2, "INTERNAL_SERVER_ERROR")
    assert [r["PROCESS_ID"] for r in rest_offline.records(b24)] == [offline.process_id(b24.member_id)] * 2

    again = offline.pull(b24.member_id)
    assert (again.fetched, again.stored, again.failed) == (2, 0, "")
    assert InboxItem.objects.filter(source="offline").count() == 2
    assert rest_offline.records(b24) == []


def test_a_pull_takes_pages_of_50_in_batch_requests_and_an_empty_queue_costs_one(installed):
    """One batch request per page, the page's clear riding with the next page's get: 120 records, 4 requests."""
    portal, b24 = installed
    updates(b24, 120)
    before = b24.calls("batch")
    pulled = offline.pull(b24.member_id)
    assert (pulled.fetched, pulled.stored, pulled.more) == (120, 120, False)
    assert b24.calls("batch") - before == 4
    assert (b24.calls("event.offline.get"), b24.calls("event.offline.clear")) == (3, 3)
    assert rest_offline.records(b24) == []
    before = b24.calls("batch")
    assert offline.pull(b24.member_id).fetched == 0
    assert b24.calls("batch") - before == 1


def test_a_pull_stops_at_its_cap_and_says_more_is_left(installed, settings):
    """B24_OFFLINE_PULL_MAX bounds one pull; the rest waits for the next (the task queues one at once)."""
    portal, b24 = installed
    settings.B24_OFFLINE_PULL_MAX = 3
    updates(b24, 5)
    first = offline.pull(b24.member_id)
    assert (first.fetched, first.stored, first.more) == (3, 3, True)
    assert len(rest_offline.records(b24)) == 2
    second = offline.pull(b24.member_id)
    assert (second.fetched, second.more) == (2, False)
    assert [i.data["VERSION"] for i in InboxItem.objects.filter(source="offline").order_by("id")] == list("12345")


def test_one_pull_per_portal_at_a_time(installed):
    """A second pull while one runs (the cache's single-flight) does nothing."""
    portal, b24 = installed
    with limits.single_flight(f"offline-pull:{b24.member_id}", 30) as held:
        assert held
        assert offline.pull(b24.member_id).skipped == "another pull of this portal is running"


def test_onofflineevent_pulls_and_needs_the_application_token(client, installed):
    """on-offline-event.md: data empty, the auth block with the application_token, checked like any event's."""
    portal, b24 = installed
    updates(b24, 1)
    forged = b24.event_payload("ONOFFLINEEVENT", application_token="not-ours")
    assert client.post("/events/", forged).status_code == 403
    response, item = deliver(client, b24.event_payload("ONOFFLINEEVENT"))
    assert response.status_code == 200 and item.outcome == "1 offline record(s), 1 new, 0 refused"
    assert item.sealed_auth == ""  # its refresh_token is not kept once done
    assert InboxItem.objects.get(source="offline").state == "done"


def test_onofflineevent_wakes_a_bounded_number_of_pulls(client, installed):
    """Every user of the portal knows its application_token and could post ONOFFLINEEVENT in a loop: past a small
    budget per portal it pulls nothing (beat's pull takes over); Bitrix24 itself sends one per minTimeout."""
    portal, b24 = installed
    outcomes = []
    for n in range(6):
        payload = b24.event_payload("ONOFFLINEEVENT")
        payload["ts"] = str(1_800_000_000 + n)
        outcomes.append(deliver(client, payload)[1].outcome)
    assert outcomes[:4] == ["0 offline record(s), 0 new, 0 refused"] * 4
    assert outcomes[4:] == ["skipped: woken too often (beat's pull takes it)"] * 2
    assert b24.calls("event.offline.get") == 4


def test_a_failure_that_passes_retries_the_onofflineevent(client, installed):
    portal, b24 = installed
    b24.fail_next("event.offline.get", "INTERNAL_SERVER_ERROR", 500)
    response, item = deliver(client, b24.event_payload("ONOFFLINEEVENT"))
    assert response.status_code == 200
    assert (item.state, item.last_error) == ("pending", "the offline pull failed for now: INTERNAL_SERVER_ERROR")


@pytest.mark.parametrize("code, status", [("QUERY_LIMIT_EXCEEDED", 503), ("OPERATION_TIME_LIMIT", 429)])
def test_a_pull_that_meets_a_limit_ends_and_the_next_one_takes_the_records(installed, code, status):
    """A limit answer to the pull's batch (settings/performance/limits.md) is not waited out in the worker: the
    batch is sent once, the pull ends as a transient failure saying when to ask again, and the records stay in
    the portal's queue for the next pull, stored once."""
    portal, b24 = installed
    updates(b24, 2)
    b24.fail_next("event.offline.get", code, status)
    before = b24.calls("batch")
    pulled = offline.pull(b24.member_id)
    assert (pulled.failed, pulled.transient, pulled.fetched) == (code, True, 0)
    assert pulled.limited_for is not None and pulled.limited_for >= 0
    assert b24.calls("batch") - before == 1  # not sent again in the worker
    limits.pause_method(b24.member_id, "event.offline.get", time.time() - 1)  # (the method's reset came)
    assert offline.pull(b24.member_id).stored == 2
    assert InboxItem.objects.filter(source="offline").count() == 2


def test_an_onofflineevent_whose_pull_meets_a_limit_waits_for_the_portals_slot(client, installed):
    """The event that asked for the pull waits in the inbox (Later): no attempt counted, never a dead letter."""
    portal, b24 = installed
    updates(b24, 1)
    b24.fail_next("event.offline.get", "QUERY_LIMIT_EXCEEDED", 503)
    response, item = deliver(client, b24.event_payload("ONOFFLINEEVENT"))
    assert response.status_code == 200
    assert (item.state, item.attempts) == ("pending", 0), item.last_error
    assert "the portal's limit" in item.last_error and "QUERY_LIMIT_EXCEEDED" in item.last_error


def test_the_beat_task_pulls_every_portal_whose_offline_events_are_bound(client, installed, standin, settings):
    """pull_offline_events fans out one chunk task per B24_FANOUT_CHUNK portals (run eagerly here)."""
    portal, b24 = installed
    other = standin.add_portal()
    do_install(client, other)
    settings.B24_FANOUT_CHUNK = 1
    updates(b24, 1)
    updates(other, 2)
    celery_app.conf.task_always_eager = True
    try:
        assert tasks.pull_offline_events.apply().get() == 2
    finally:
        celery_app.conf.task_always_eager = False
    assert InboxItem.objects.filter(source="offline", member_id=b24.member_id).count() == 1
    assert InboxItem.objects.filter(source="offline", member_id=other.member_id).count() == 2


def test_offline_keys_are_their_own_namespace(settings):
    """queue.idempotency_key: an offline record's key depends on the record only, never collides with an online
    event's, and a later change of the same object (a new TIMESTAMP_X) is a new key."""
    online = inbox.idempotency_key("ONAPPUPDATE", member_id="m", ts="", data={})
    first = inbox.idempotency_key("ONAPPUPDATE", member_id="m", ts="", data={}, offline_record="1|1|t1")
    assert first != online
    assert first == inbox.idempotency_key("ONAPPUPDATE", member_id="m", ts="x", data={"a": 1}, offline_record="1|1|t1")
    assert first != inbox.idempotency_key("ONAPPUPDATE", member_id="m", ts="", data={}, offline_record="1|1|t2")
