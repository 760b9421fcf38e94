"""The inbox and the background passes on a real Celery worker (worker processes, the suite's broker).

On SQLite the broker is the embedded filesystem one; in CI's PostgreSQL run it is RabbitMQ
(CELERY_BROKER_URL). Each test starts its own workers and stops them (SIGTERM, warm shutdown).
"""

import json
import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.test import Client
from django.utils import timezone

from inbox.models import InboxItem
from openlines.registry import CONNECTOR_EVENTS
from portals import tasks
from portals.models import Portal, PortalEvent
from tests.conftest import do_install
from tests.workers import Worker, lose_the_queue, uses_rabbitmq, wait_for

# slow: every test runs real Celery worker processes.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
State = InboxItem.State
K = PortalEvent.Kind


@pytest.fixture
def workers(standin, tmp_path):
    """start(name, **options) -> a ready Worker; all are stopped at the end of the test."""
    started = []

    def start(name="w1", **options):
        worker = Worker(standin, tmp_path, name, **options)
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.stop()


def item_state(pk):
    return InboxItem.objects.filter(pk=pk).values_list("state", flat=True).first()


def test_a_worker_applies_an_install_the_request_only_stored(client, b24, standin, workers):
    worker = workers()
    b24.install_post()
    response = client.post("/events/", b24.event_payload("ONAPPINSTALL", with_tokens=True))
    assert response.status_code == 200
    pk = response.json()["id"]
    wait_for(lambda: item_state(pk) == State.DONE, what="the install to be processed")
    portal = Portal.objects.get(member_id=b24.member_id)
    assert portal.status == Portal.Status.ACTIVE and portal.has_tokens
    # JSON log lines of the work carry the task id beside member_id (lifecycle's own lines included).
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    history = [line for line in lines if line.get("message") == "portal event"]
    assert history and all(line["member_id"] == b24.member_id and line.get("task_id") for line in history)
    assert len({line["task_id"] for line in history}) == 1


def test_oauth_down_when_onappinstall_arrives(client, b24, standin, workers):
    """Answered 200 at once, retried with back-off while the OAuth server is down, applied when it returns."""
    workers()
    b24.install_post()
    standin.oauth_down = True
    before = len(standin.oauth_requests)
    response = client.post("/events/", b24.event_payload("ONAPPINSTALL", with_tokens=True))
    assert response.status_code == 200
    pk = response.json()["id"]
    wait_for(lambda: len(standin.oauth_requests) - before >= 2, what="two attempts against the down server")
    assert item_state(pk) in (State.PENDING, State.PROCESSING) and not Portal.objects.exists()
    standin.oauth_down = False
    wait_for(lambda: item_state(pk) == State.DONE, what="the install once the OAuth server is back")
    item = InboxItem.objects.get(pk=pk)
    assert item.attempts >= 3 and item.outcome == "application_token saved"
    assert Portal.objects.get(member_id=b24.member_id).status == Portal.Status.ACTIVE


def _update_paused_mid_task(client, b24, workers, name="w1"):
    """A worker inside an ONAPPUPDATE: the version is recorded, the re-bind waits for the portal's pacing.

    Pacing of one request per ~3 s (burst 1): the second bind batch waits inside the task."""
    worker = workers(name, env={"B24_RATE_LIMIT_PER_SECOND": "0.3", "B24_RATE_LIMIT_BURST": "1"})
    b24.version = 9  # installed on the portal: its app.info says so
    pk = client.post("/events/", b24.event_payload("ONAPPUPDATE", data={"VERSION": "9"})).json()["id"]
    wait_for(
        lambda: (
            Portal.objects.filter(member_id=b24.member_id, app_version="9").exists()
            and item_state(pk) == State.PROCESSING
        ),
        what="the worker to be inside the task",
    )
    return worker, pk


def test_a_worker_killed_mid_task_applies_the_event_exactly_once(client, b24, standin, workers):
    """SIGKILL halfway through the work (version recorded, bindings not done); a new worker and the
    sweeper take over once the dead worker's claim runs out: the rest is done, nothing twice."""
    portal = do_install(client, b24)
    first, pk = _update_paused_mid_task(client, b24, workers)
    first.kill()
    second = workers("w2", beat=True)  # beat runs the sweeper
    wait_for(
        lambda: item_state(pk) == State.DONE,
        what="the update after the crash",
        detail=lambda: f"{InboxItem.objects.filter(pk=pk).values().first()}\n{second.log()[-4000:]}",
    )
    item = InboxItem.objects.get(pk=pk)
    assert item.attempts == 2 and item.outcome == "updated"
    assert portal.events.filter(kind=K.UPDATED).count() == 1
    assert portal.events.filter(kind=K.EVENTS_BOUND).count() == 2  # the install's, and this update's once


def test_a_handler_longer_than_its_claim_keeps_it_and_runs_once(client, b24, standin, workers):
    """The claim is short (B24_INBOX_LEASE, 1 s here) and renewed by a heartbeat while the handler runs: an
    ONAPPUPDATE paced by the portal's limit runs for several leases while a second worker sweeps, and the event
    still runs once (without the heartbeat the sweeper re-sends it once the claim lapses: a second attempt)."""
    portal = do_install(client, b24)
    short = {"B24_INBOX_LEASE": "1", "B24_RATE_LIMIT_PER_SECOND": "0.3", "B24_RATE_LIMIT_BURST": "1"}
    workers("w1", env=short)
    workers("w2", beat=True, env=short)  # beat runs the sweeper: it re-sends a row whose claim lapsed
    b24.version = 9
    pk = client.post("/events/", b24.event_payload("ONAPPUPDATE", data={"VERSION": "9"})).json()["id"]
    wait_for(lambda: item_state(pk) == State.DONE, timeout=120, what="the update")
    item = InboxItem.objects.get(pk=pk)
    # The scenario happened: the handler outlived its first lease several times over.
    assert (item.finished_at - item.received_at).total_seconds() > 3
    assert item.attempts == 1 and item.outcome == "updated"
    assert portal.events.filter(kind=K.EVENTS_BOUND).count() == 2  # the install's, and this update's once


@pytest.mark.skipif(
    not uses_rabbitmq(),
    reason="re-delivery of an unacknowledged task is RabbitMQ's (set "
    "CELERY_BROKER_URL=amqp://...); the filesystem broker relies "
    "on the sweeper, tested above",
)
def test_rabbitmq_redelivers_the_task_of_a_killed_worker_without_the_sweeper(client, b24, standin, workers):
    portal = do_install(client, b24)
    first, pk = _update_paused_mid_task(client, b24, workers)
    first.kill()
    second = workers("w2")  # no beat: no sweeper
    wait_for(lambda: item_state(pk) == State.DONE, what="the re-delivered task", detail=lambda: second.log()[-3000:])
    # No sweeper ran: RabbitMQ gave the unacknowledged task to the new worker (which waited for the dead
    # worker's claim to run out if it came early), and the update was applied once.
    assert InboxItem.objects.get(pk=pk).attempts == 2
    assert portal.events.filter(kind=K.UPDATED).count() == 1


def test_a_lost_queue_is_recovered_by_the_sweeper(client, standin, workers):
    """The broker restarted without persistence: the rows are still there, the sweeper sends them again."""
    pairs = [(do_install(client, b24), b24) for b24 in (standin.add_portal(), standin.add_portal())]
    for _portal, b24 in pairs:
        b24.version = 7
    ids = [
        client.post("/events/", b24.event_payload("ONAPPUPDATE", data={"VERSION": "7"})).json()["id"]
        for _portal, b24 in pairs
    ]
    assert lose_the_queue() >= len(ids)  # no worker ran: every task was still queued, and now it is gone
    workers("w1", beat=True)
    wait_for(lambda: all(item_state(pk) == State.DONE for pk in ids), what="the sweeper to recover the events")
    assert all(Portal.objects.get(pk=p.pk).app_version == "7" for p, _ in pairs)


def test_sigterm_is_a_warm_shutdown(client, b24, standin, workers):
    """The task in flight finishes (and its spent refresh token is stored) before the worker exits."""
    worker = workers()
    b24.install_post()
    standin.oauth_delay = 1.0
    before = len(standin.oauth_requests)
    pk = client.post("/events/", b24.event_payload("ONAPPINSTALL", with_tokens=True)).json()["id"]
    wait_for(lambda: len(standin.oauth_requests) > before, what="the worker to be at the OAuth server")
    assert worker.stop() == 0
    assert item_state(pk) == State.DONE
    assert Portal.objects.get(member_id=b24.member_id).has_tokens


def test_many_mixed_events_delivered_concurrently(client, standin, workers):
    """Several portals, updates each delivered twice at once, forged uninstalls among them, two workers:
    every genuine event processed once, every duplicate and forgery changes nothing. The portal's app.info
    names the installed version (the last one): it is recorded once, and bound once."""
    portals = [(do_install(client, b24), b24) for b24 in [standin.add_portal() for _ in range(4)]]
    binds_before = {p.pk: b24.calls("event.bind") for p, b24 in portals}
    per_portal = 25
    deliveries = []
    for _portal, b24 in portals:
        b24.version = 100 + per_portal - 1
        for n in range(per_portal):
            payload = b24.event_payload("ONAPPUPDATE", data={"VERSION": str(100 + n)})
            payload["ts"] = str(1700000000 + n)
            deliveries += [payload, dict(payload)]  # Bitrix24's delivery and a duplicate of it
            deliveries.append(b24.event_payload("ONAPPUNINSTALL", application_token="forged"))
    # Claims that outlive any handler here, even on a loaded machine: a retaken claim is a second attempt,
    # and this test counts attempts (lost claims have tests of their own).
    long_lease = {"B24_INBOX_LEASE": "120"}
    workers("w1", env=long_lease), workers("w2", env=long_lease)
    answers = []

    def post(chunk):
        http = Client()
        for payload in chunk:
            answers.append(http.post("/events/", payload).status_code)
        connections.close_all()

    threads = [threading.Thread(target=post, args=(deliveries[i::6],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(answers)) == [200, 403] and answers.count(403) == len(portals) * per_portal
    genuine = InboxItem.objects.filter(event="ONAPPUPDATE")
    events = len(portals) * per_portal
    # Forgeries never stored; a duplicate has a row of its own while no row of its key was applied yet.
    assert events <= genuine.count() <= 2 * events
    assert genuine.values("idempotency_key").distinct().count() == events
    wait_for(lambda: not genuine.exclude(state=State.DONE).exists(), timeout=120, what="all events processed")
    applied = genuine.exclude(outcome__startswith="duplicate of #")
    assert applied.count() == events and set(applied.values_list("attempts", flat=True)) == {1}
    for portal, b24 in portals:
        assert portal.events.filter(kind=K.UPDATED).count() == 1  # the installed version, recorded once
        # bound again once: the app's 3 events and the Open Lines connector's (an install step), each online and
        # offline, and ONOFFLINEEVENT (portals/install.py bind_offline)
        assert b24.calls("event.bind") - binds_before[portal.pk] == 2 * (3 + len(CONNECTOR_EVENTS)) + 1
        assert Portal.objects.get(pk=portal.pk).app_version == str(100 + per_portal - 1)
        assert Portal.objects.get(pk=portal.pk).status == Portal.Status.ACTIVE


def test_a_portals_waiting_events_are_handled_by_few_tasks_in_order(client, b24, standin, workers):
    """Issue 26: the task that finishes an event goes on with its lane's next ordered one itself, within
    B24_INBOX_CHAIN_EVENTS (4 here). Ten updates of one portal stored while no worker runs (the first one's task
    in the broker, the rest held in the table), then one worker: they run in order, four, four and two to a task
    (each event's log line names its task), and the broker carried three of their tasks, not ten."""
    do_install(client, b24)
    b24.version = 109
    pks = []
    for n in range(10):
        payload = b24.event_payload("ONAPPUPDATE", data={"VERSION": str(100 + n)})
        payload["ts"] = str(1700000000 + n)
        pks.append(client.post("/events/", payload).json()["id"])
    assert InboxItem.objects.filter(pk__in=pks, enqueued_at__isnull=False).count() == 1
    worker = workers("w1", env={"B24_INBOX_CHAIN_EVENTS": "4", "B24_INBOX_CHAIN_SECONDS": "600"})
    wait_for(
        lambda: not InboxItem.objects.filter(pk__in=pks).exclude(state=State.DONE).exists(),
        what="the updates to be processed",
    )
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    handled = [(line["inbox_id"], line["task_id"]) for line in lines if line.get("message") == "event processed"]
    assert [pk for pk, _task in handled] == pks
    tasks_in_turn = [task for _pk, task in handled]
    assert all(tasks_in_turn) and len(set(tasks_in_turn)) == 3
    assert [tasks_in_turn.count(task) for task in dict.fromkeys(tasks_in_turn)] == [4, 4, 2]
    received = [
        line["data"]["args"]
        for line in lines
        if line.get("logger") == "celery.worker.strategy" and "process_inbox_item" in line.get("message", "")
    ]
    ours = {f"({pk},)" for pk in pks}  # (the install's task is there too: its event was processed in the test)
    assert [args for args in received if args in ours] == [f"({pks[n]},)" for n in (0, 4, 8)]


def test_a_worker_killed_inside_a_chained_event_applies_it_exactly_once(client, b24, standin, workers):
    """Issue 26: the task went on with its lane's next event itself and its worker is SIGKILLed inside that
    event's handler (an ONAPPUPDATE's re-bind paced by the portal's limit). The chained event has no task of its
    own: its claim lapses and the sweeper sends it; a new worker applies the rest once, in order."""
    portal = do_install(client, b24)
    # Stored while no worker runs: a connector event for a line with no channel (rejected at once: the chain goes
    # on), then the update (slow), then another connector event behind it.
    first = client.post("/events/", b24.event_payload("ONIMCONNECTORMESSAGEADD", data={"LINE": "1"})).json()["id"]
    b24.version = 9
    update = client.post("/events/", b24.event_payload("ONAPPUPDATE", data={"VERSION": "9"})).json()["id"]
    behind = b24.event_payload("ONIMCONNECTORMESSAGEADD", data={"LINE": "2"})
    last = client.post("/events/", behind).json()["id"]
    lane = InboxItem.objects.filter(pk__in=[first, update, last])
    assert lane.values("lane").distinct().count() == 1 and lane.filter(enqueued_at__isnull=False).count() == 1
    paced = {"B24_RATE_LIMIT_PER_SECOND": "0.3", "B24_RATE_LIMIT_BURST": "1", "B24_INBOX_CHAIN_SECONDS": "600"}
    doomed = workers("w1", env=paced)
    wait_for(
        lambda: (
            Portal.objects.filter(member_id=b24.member_id, app_version="9").exists()
            and item_state(update) == State.PROCESSING
        ),
        what="the worker to be inside the chained update",
    )
    doomed.kill()
    lines = [json.loads(line) for line in doomed.log().splitlines() if line.startswith("{")]
    received = [line["data"]["args"] for line in lines if line.get("logger") == "celery.worker.strategy"]
    assert f"({update},)" not in received  # the update ran in the first event's task
    second = workers("w2", beat=True)  # beat runs the sweeper
    wait_for(
        lambda: not lane.exclude(state__in=[State.DONE, State.REJECTED]).exists(),
        what="the lane after the crash",
        detail=lambda: f"{list(lane.values())}\n{second.log()[-4000:]}",
    )
    assert InboxItem.objects.get(pk=first).state == InboxItem.objects.get(pk=last).state == State.REJECTED
    item = InboxItem.objects.get(pk=update)
    assert (item.state, item.attempts, item.outcome) == (State.DONE, 2, "updated")
    assert InboxItem.objects.get(pk=last).finished_at > item.finished_at  # still in order
    assert portal.events.filter(kind=K.UPDATED).count() == 1
    assert portal.events.filter(kind=K.EVENTS_BOUND).count() == 2  # the install's, and this update's once


def test_two_workers_share_a_keepalive_pass_and_refresh_no_portal_twice(client, standin, workers, settings):
    settings.B24_FANOUT_CHUNK = 3
    pairs = [(do_install(client, b24), b24) for b24 in [standin.add_portal() for _ in range(18)]]
    Portal.objects.update(refresh_renewed_at=timezone.now() - timedelta(days=160))
    standin.oauth_delay = 0.2  # each chunk takes a while: neither worker can drain the queue alone
    started = timezone.now()
    before = len(standin.oauth_requests)
    # The pass fans out in a worker: its chunk size is the workers' setting (six chunks of three portals).
    chunked = {"B24_FANOUT_CHUNK": "3"}
    first, second = workers("w1", env=chunked), workers("w2", env=chunked)
    tasks.keepalive_pass.delay()
    tasks.keepalive_pass.delay()  # a pass sent twice (two beats, a manual run) still refreshes each once
    wait_for(
        lambda: PortalEvent.objects.filter(kind=K.TOKEN_REFRESHED, created_at__gte=started).count() >= len(pairs),
        what="every due portal refreshed",
    )
    wait_for(
        lambda: all("keep-alive chunk done" in w.log() for w in (first, second)) or None,
        timeout=60,
        what="both workers to take chunks",
        detail=lambda: first.log()[-2000:] + "\n---\n" + second.log()[-2000:],
    )
    for worker in (first, second):
        worker.stop()
    assert len(standin.oauth_requests) - before == len(pairs)
    for portal, _b24 in pairs:
        assert portal.events.filter(kind=K.TOKEN_REFRESHED, created_at__gte=started).count() == 1
    log_lines = [
        json.loads(line)
        for w in (first, second)
        for line in w.log().splitlines()
        if line.startswith("{") and "keep-alive chunk done" in line
    ]
    assert all(line.get("task_id") for line in log_lines)  # JSON log lines carry the task id


def _fresh_connections(app) -> None:
    """Forget this process's broker connections and producer pool (Celery keeps both once made)."""
    app.close()
    app.amqp._producer_pool = None


def test_a_broker_that_is_down_loses_no_event(client, b24, standin, monkeypatch, workers):
    """/events/ answers 200 with the row committed while the broker is down; the sweeper sends it later."""
    from b24widget.celery import app

    previous = app.conf.broker_url, app.conf.broker_transport
    unreachable = "amqp://guest:guest@127.0.0.1:1//"  # nothing listens on port 1
    monkeypatch.setenv("CELERY_BROKER_URL", unreachable)  # Celery reads the variable before its own setting
    # As the settings configure RabbitMQ: kombu's own transport (the embedded broker's is for filesystem://).
    app.conf.broker_url, app.conf.broker_transport = unreachable, None
    _fresh_connections(app)  # the next send connects to the (unreachable) broker
    try:
        do_install(client, b24, event=False)
        response = client.post("/events/", b24.event_payload("ONAPPINSTALL"))
    finally:
        monkeypatch.undo()
        app.conf.broker_url, app.conf.broker_transport = previous
        _fresh_connections(app)
    assert response.status_code == 200
    item = InboxItem.objects.get(pk=response.json()["id"])
    assert item.state == State.PENDING and item.enqueued_at is None  # stored, marked as never sent
    workers("w1", beat=True)  # the broker is back; beat runs the sweeper
    wait_for(lambda: item_state(item.pk) == State.DONE, what="the sweeper to send the stored event")
