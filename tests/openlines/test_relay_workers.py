"""The relay on real Celery workers (the suite's broker: the embedded one, or RabbitMQ in CI's PostgreSQL
run): a burst on one channel does not hold back another channel's next message, a burst is a handful of
tasks, and a worker killed mid-run gives its channel up within its lease while /healthz says degraded."""

import json

import pytest

from openlines.models import Channel, Delivery, InboundMessage
from sandbox.standin import rest_imconnector as imc
from tests.openlines.conftest import act, message, signed
from tests.workers import Worker, lose_the_queue, wait_for

# slow: real worker processes.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# The workers send the channel's tasks through the broker (not inline), with small batches and a short lease.
RELAY = {
    "B24_TEST_OPENLINES_VIA_BROKER": "1",
    "OPENLINES_SEND_BATCH": "5",
    "OPENLINES_RUN_BATCH": "10",
    "OPENLINES_LEASE_SECONDS": "2",
    "OPENLINES_SWEEP_INTERVAL": "1",
}


@pytest.fixture
def workers(standin, tmp_path, settings):
    """start(name, **options) -> a ready Worker; this process sends the channel's tasks to the broker too.

    The queue is emptied first: it is this test process's for the whole run, and earlier tests leave tasks in
    it (a stopped worker's countdown tasks go back to it, a swept channel's task may never have been taken).
    Their channel ids may be this test's (on SQLite a rolled-back test's ids are handed out again: channel 1
    is A here), so leftover `deliver_inbound(1)` tasks queued before B's each ran a batch of A's first, and
    B's message came after all 40 of A's (seen in the full suite, 4 processes)."""
    settings.OPENLINES_TASKS_INLINE = False
    lose_the_queue()
    started = []

    def start(name, env=None, **options):
        worker = Worker(standin, tmp_path, name, env={**RELAY, **(env or {})}, **options)
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.stop()


def arrivals(b24):
    """The texts Bitrix24 received, in the order they first arrived (a call cut short by a killed worker
    is sent again: its messages may arrive twice)."""
    messages = sorted((m for c in imc.conversations(b24) for m in c["messages"] if m["outside"]), key=lambda m: m["at"])
    return list(dict.fromkeys(m["text"] for m in messages))


def all_sent(count):
    return lambda: InboundMessage.objects.filter(state=Delivery.SENT).count() == count


def runs(worker, task="openlines.deliver_inbound"):
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    return sum(1 for line in lines if f"{task}[" in line.get("message", "") and "succeeded" in line["message"])


def test_a_burst_on_one_channel_does_not_hold_back_the_next_message_of_another(
    client, frame, channel, receiver, workers
):
    row, secret, b24 = channel
    answer = act(frame, b24, "connect", line="2", webhook_url=receiver.url, name="Other line")
    assert answer.status_code == 200, answer.content
    other, other_secret = Channel.objects.get(public_id=answer.json()["channel"]["id"]), answer.json()["secret"]
    for i in range(40):
        assert signed(client, row, secret, message(f"a{i}", f"A {i}", chat="chat-A")).status_code == 202
    assert signed(client, other, other_secret, message("b0", "B 0", chat="chat-B")).status_code == 202
    # 41 messages, one task waiting per channel.
    assert Channel.objects.filter(inbound_queued_at__isnull=False).count() == 2
    worker = workers("relay")
    wait_for(all_sent(41), timeout=120, what="every message at Bitrix24")
    order = arrivals(b24)
    assert sorted(order) == sorted([f"A {i}" for i in range(40)] + ["B 0"])
    assert [t for t in order if t.startswith("A")] == [f"A {i}" for i in range(40)]  # in order per channel
    # Channel A's run took a batch of 10 and went behind B's task: B's message arrived before A's burst was done.
    assert order.index("B 0") < order.index("A 39")
    assert order.index("B 0") <= 10
    worker.stop()
    assert runs(worker) <= 10  # a handful of runs for 41 messages (one task per message was 41)


def test_a_worker_killed_mid_run_gives_the_channel_up_and_healthz_says_degraded(client, channel, workers, settings):
    row, secret, b24 = channel
    settings.OPENLINES_STALL_SECONDS = 1
    for i in range(12):
        assert signed(client, row, secret, message(f"m{i}", f"text {i}")).status_code == 202
    b24.slow_answer("imconnector.send.messages", chunk=16, pause=0.5)  # the first call's answer takes ~a minute
    first = workers("first")
    wait_for(
        lambda: Channel.objects.filter(pk=row.pk).exclude(inbound_lease_owner="").exists(),
        what="the first worker to hold the channel",
    )
    first.kill()  # SIGKILL in the middle of its run: no release, no heartbeat any more
    wait_for(lambda: client.get("/healthz").json()["openlines"]["degraded"], what="/healthz to say degraded")
    wait_for(
        lambda: client.get("/healthz").json()["openlines"]["stalled_claims"] == 1,
        what="the dead worker's claim to show once its lease ended",
    )
    assert client.get("/healthz").json()["status"] == "degraded"
    workers("second", beat=True)  # beat: the sweep looks at every channel with due messages each second
    wait_for(all_sent(12), timeout=120, what="the second worker to take the channel over")
    assert arrivals(b24) == [f"text {i}" for i in range(12)]
    health = client.get("/healthz").json()["openlines"]
    assert health["stalled_claims"] == 0 and health["inbound"]["waiting"] == 0 and not health["degraded"]


def test_a_worker_on_postgresql_hands_off_what_the_requests_stored(client, channel, workers, settings):
    """B24_HANDOFF=dispatcher (the default on PostgreSQL): the request only stores; the worker's dispatcher hears
    the row (the table's trigger) and queues its channel, and a message stored before the worker started is
    queued by its catch-up."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the dispatcher listens on PostgreSQL")
    row, secret, b24 = channel
    settings.B24_HANDOFF = "dispatcher"
    assert signed(client, row, secret, message("before", "Before the worker")).status_code == 202
    assert Channel.objects.get(pk=row.pk).inbound_queued_at is None  # the request queued nothing
    worker = workers("dispatching", env={"B24_HANDOFF": "dispatcher"})
    wait_for(all_sent(1), timeout=60, what="the catch-up to queue the channel")
    wait_for(lambda: "hand-off dispatcher listening" in worker.log(), what="the dispatcher to listen")
    assert signed(client, row, secret, message("after", "After")).status_code == 202
    wait_for(all_sent(2), timeout=60, what="the dispatcher to queue the channel")
    assert arrivals(b24) == ["Before the worker", "After"]
