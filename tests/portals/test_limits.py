"""Per-portal pacing shared through the cache: no QUERY_LIMIT_EXCEEDED reaches Bitrix24's limit."""

import json
import os

import pytest
import redis

from bitrix24 import limits
from bitrix24.errors import RestError
from portals.models import Portal
from portals.tokens import PortalClient
from tests.helpers import in_threads, run_together
from tests.redis_keys import REDIS_URL, RUN_PREFIX, delete_prefixed


@pytest.mark.slow  # paced in real time
def test_gcra_allows_the_burst_then_paces(settings):
    settings.B24_RATE_LIMIT_MARGIN = 0
    settings.B24_RATE_LIMIT_BURST = 3
    settings.B24_RATE_LIMIT_PER_SECOND = 10
    waits = [limits.reserve("m-gcra", now=1000.0) for _ in range(6)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.1, 0.2, 0.3])
    # After a quiet second the bucket has drained: a burst is allowed again.
    assert limits.reserve("m-gcra", now=1002.0) == 0.0


def test_disabled_limiter_never_waits(settings):
    settings.B24_RATE_LIMIT_PER_SECOND = 0
    assert all(limits.reserve("m-off") == 0.0 for _ in range(100))


def test_operating_time_near_the_budget_pauses_the_method(settings):
    import time

    settings.B24_OPERATING_PAUSE_AT = 400
    limits.note_operating("m-op", "crm.item.list", {"operating": 450.5, "operating_reset_at": time.time() + 0.3})
    started = time.monotonic()
    limits.wait_for_method("m-op", "crm.item.list")
    assert time.monotonic() - started >= 0.25
    limits.wait_for_method("m-op", "user.current")  # other methods are not held back


def test_a_long_pause_fails_with_the_limit_code(settings, installed):
    import time

    portal, b24 = installed
    settings.B24_MAX_WAIT = 1
    limits.pause_method(portal.member_id, "user.admin", time.time() + 60)
    before = b24.calls("user.admin")  # the install asked once (is the installer an administrator?)
    with pytest.raises(RestError) as info:
        PortalClient(portal).call("user.admin")
    assert info.value.code == "OPERATION_TIME_LIMIT"
    assert b24.calls("user.admin") == before


def _limit(settings, b24):
    # The stand-in enforces a tight bucket so the test is quick; our limiter stays a little below it.
    b24.rate_limit = True
    # Headroom as in production (40 of 50): a late thread or process may send a few calls together.
    b24.rate_limit_burst = 16
    b24.rate_limit_drain = 50.0
    settings.B24_RATE_LIMIT_BURST = 6
    settings.B24_RATE_LIMIT_PER_SECOND = 30
    settings.B24_REST_MAX_RETRIES = 0  # a QUERY_LIMIT_EXCEEDED would surface, not be retried away


def _limited_answers(b24):
    return [r for r in b24.requests if r.get("status") == 503]


def _calls_from_threads(portal, *, threads: int, calls: int) -> list[str]:
    """`calls` server.time calls from each of `threads` threads, each with its own PortalClient; the error codes."""
    errors = []

    def worker():
        try:
            client_ = PortalClient(Portal.objects.get(pk=portal.pk))
            for _ in range(calls):
                client_.call("server.time")
        except RestError as exc:
            errors.append(exc.code)

    in_threads(worker, threads, timeout=120)
    return errors


@pytest.mark.slow  # paced in real time
@pytest.mark.django_db(transaction=True)
def test_threads_sharing_one_portal_stay_under_the_limit(settings, client, b24):
    from tests.conftest import do_install

    portal = do_install(client, b24)
    _limit(settings, b24)
    assert _calls_from_threads(portal, threads=6, calls=25) == []
    assert b24.calls("server.time") == 150
    assert _limited_answers(b24) == []


def test_without_the_limiter_the_stand_in_does_refuse(settings, installed):
    """The control: the same load with pacing off meets QUERY_LIMIT_EXCEEDED (the limit is real)."""
    portal, b24 = installed
    _limit(settings, b24)
    settings.B24_RATE_LIMIT_PER_SECOND = 0
    # The documented drain (2/s) rather than the fast test bucket's 50/s: the calls outrun it however slow
    # this machine is (at 50/s a loaded machine's sequential calls could stay under it and refute nothing).
    b24.rate_limit_drain = 2.0
    with pytest.raises(RestError) as info:
        for _ in range(80):
            PortalClient(portal).call("server.time")
    assert info.value.code == "QUERY_LIMIT_EXCEEDED"


PROCESS_SCRIPT = """
import json, os, sys, django
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
django.setup()
from portals.models import Portal
from portals.tokens import PortalClient
from bitrix24.errors import RestError
spec = json.loads(sys.argv[1])
portal = Portal(member_id=spec["member_id"], domain=spec["domain"], client_endpoint=spec["endpoint"],
                access_token=spec["token"], status="active")
sys.stdin.readline()
errors = 0
for _ in range(spec["calls"]):
    try:
        PortalClient(portal).call("server.time")
    except RestError as exc:
        errors += 1
        print(exc.code, file=sys.stderr)
print(errors)
"""


@pytest.mark.slow  # processes paced in real time
@pytest.mark.django_db
def test_processes_sharing_one_portal_through_redis_stay_under_the_limit(settings, installed):
    portal, b24 = installed
    prefix = f"{RUN_PREFIX}-limiter"  # only this test's keys, on a server others may use
    try:
        delete_prefixed(REDIS_URL, prefix)
    except redis.RedisError as exc:
        pytest.fail(f"Redis is needed at {REDIS_URL} for the multi-process limiter test ({exc})")
    _limit(settings, b24)
    env = {
        **os.environ,
        "CACHE_URL": REDIS_URL,
        "B24_TEST_CACHE_PREFIX": prefix,
        "B24_RATE_LIMIT_BURST": "6",
        "B24_RATE_LIMIT_PER_SECOND": "30",
        "B24_REST_MAX_RETRIES": "0",
    }
    spec = json.dumps(
        {
            "member_id": portal.member_id,
            "domain": portal.domain,
            "endpoint": portal.client_endpoint,
            "token": portal.access_token,
            "calls": 50,
        }
    )
    for out, err in run_together(PROCESS_SCRIPT, spec, count=4, env=env):
        assert out == "0", err[-2000:]
    assert b24.calls("server.time") == 200
    assert _limited_answers(b24) == []
    assert delete_prefixed(REDIS_URL, prefix) > 0  # the processes did share their limiter under the prefix


# --- the plan's bucket, adapting --------------------------------------------------------------------


@pytest.mark.parametrize(
    "license,plan",
    [
        ("de_ent250", "enterprise"),
        ("en_ent10000", "enterprise"),
        ("ru_project", "standard"),
        ("de_pro100", "standard"),
        ("", "standard"),
    ],
)
def test_the_plan_is_read_from_the_licence(license, plan):
    """api-reference/common/system/app-info.md: LICENSE is "<region>_<plan>", Enterprise plans "ent..."."""
    assert limits.plan_of(license) == plan


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("plan", ["enterprise", "others"])
def test_install_stores_the_portals_plan_from_app_info(client, b24, plan):
    from tests.conftest import do_install

    b24.set_plan(plan)  # LICENSE follows the plan (en_ent250 / en_project)
    b24.rate_limit = False  # only the licence matters here
    portal = do_install(client, b24)
    assert portal.license == b24.license
    assert portal.rest_plan == ("enterprise" if plan == "enterprise" else "standard")
    assert PortalClient(portal)._plan() == portal.rest_plan


def test_the_plans_buckets_are_the_documented_ones(settings):
    settings.B24_RATE_LIMIT_MARGIN = 0
    for plan, burst, interval in (("standard", 50, 0.5), ("enterprise", 250, 0.2)):
        waits = [limits.reserve(f"m-plan-{plan}", now=1000.0, plan=plan) for _ in range(burst + 2)]
        assert waits[:burst] == pytest.approx([0.0] * burst, abs=1e-6)
        assert waits[burst:] == pytest.approx([interval, 2 * interval])


def _share(member_id, now):
    return limits._state(limits.cache.get(f"b24widget:rl:{member_id}"), now)[1]


def test_a_limit_answer_fills_the_bucket_repeated_ones_halve_the_rate_then_it_probes_up(settings):
    settings.B24_RATE_LIMIT_MARGIN = 0
    limits.note_limited("m-adapt", now=1000.0)
    # Full: the next slot is one interval (0.5 s) away; a lone answer keeps the plan's rate.
    assert limits.reserve("m-adapt", now=1000.0) == pytest.approx(0.5)
    assert _share("m-adapt", 1000.0) == 1.0
    limits.note_limited("m-adapt", now=1002.0)  # again, soon: the portal allows less than the plan
    assert _share("m-adapt", 1002.0) == limits.BACKOFF
    # Full again, and the slots are now 1 s apart.
    assert limits.reserve("m-adapt", now=1002.0) == pytest.approx(1.0)
    assert limits.reserve("m-adapt", now=1002.0) == pytest.approx(2.0)
    # Quiet for PROBE_SECONDS: the rate steps back up toward the plan's, one step at a time.
    later = 1002.0 + limits.PROBE_SECONDS + 60
    limits.reserve("m-adapt", now=later)
    assert _share("m-adapt", later) == 1.0
    limits.reserve("m-adapt", now=later + limits.PROBE_SECONDS)
    assert _share("m-adapt", later + limits.PROBE_SECONDS) == 1.0  # never past the plan's


def test_once_limit_answers_stop_the_plans_rate_is_back_within_three_quiet_probes(settings):
    """settings/performance/limits.md: the counter drains at the plan's rate whatever filled it. A block long
    enough to bring the rate to its floor (1/8) is followed by the plan's rate again after three quiet
    PROBE_SECONDS, each doubling it (not seven steps of 1/8: a backlog waited behind our own pacing)."""
    settings.B24_RATE_LIMIT_MARGIN = 0
    now = 1000.0
    for _ in range(6):  # a block: answers a second apart, each halving until the floor
        limits.note_limited("m-block", now=now)
        now += 1.0
    assert _share("m-block", now) == limits.FLOOR
    shares = []
    for _ in range(3):
        now += limits.PROBE_SECONDS
        limits.reserve("m-block", now=now)
        shares.append(_share("m-block", now))
    assert shares == [2 * limits.FLOOR, 4 * limits.FLOOR, 1.0]


def test_an_answer_at_the_slowed_pace_doubles_the_rate_back_at_most_once_a_second(settings):
    """The limit answers stopped: each request answered at the slowed pace doubles the rate back toward the
    plan's (its floor, 1/8, is the plan's rate after three such answers a second apart, not after three quiet
    PROBE_SECONDS); answers arriving together, or within a second of a limit answer, count once or not at all."""
    settings.B24_RATE_LIMIT_MARGIN = 0
    now = 1000.0
    for _ in range(6):
        limits.note_limited("m-answered", now=now)
        now += 1.0
    last_limited = now - 1.0
    assert _share("m-answered", now) == limits.FLOOR
    limits.note_answered("m-answered", now=last_limited + 0.5)  # sent before the last limit answer came
    assert _share("m-answered", now) == limits.FLOOR
    shares = []
    for _ in range(3):
        limits.note_answered("m-answered", now=now)
        limits.note_answered("m-answered", now=now + 0.2)  # together with it: once
        shares.append(_share("m-answered", now))
        now += 1.0
    assert shares == [2 * limits.FLOOR, 4 * limits.FLOOR, 1.0]
    limits.note_answered("m-answered", now=now)
    assert _share("m-answered", now) == 1.0  # never past the plan's


def test_an_answer_at_the_slowed_pace_brings_the_next_free_slot_nearer(settings):
    """Slots handed out at 1/8 of the plan's rate (4 s apart) queue the next free one 12 s ahead; the rate
    doubled, what is queued takes half as long, so the next free slot is 6 s ahead (never inside the burst)."""
    settings.B24_RATE_LIMIT_MARGIN = 0
    now = 1000.0
    for _ in range(6):
        limits.note_limited("m-ahead", now=now)
        now += 1.0
    now += 0.5
    for _ in range(3):
        limits.reserve("m-ahead", now=now)
    ahead = limits.next_slot_in("m-ahead", now=now)
    limits.note_answered("m-ahead", now=now)
    assert limits.next_slot_in("m-ahead", now=now) == pytest.approx(ahead / 2)
    assert limits.reserve("m-ahead", now=now) == pytest.approx(ahead / 2)


@pytest.mark.django_db
def test_a_call_answered_at_the_slowed_pace_speeds_the_portals_pacing_up(settings, installed):
    """Through the client and the stand-in: the portal's bucket was slowed to its floor by limit answers in
    the last seconds; the next call is answered, and the pacing is faster at once (not after PROBE_SECONDS)."""
    import time

    portal, b24 = installed
    settings.B24_RATE_LIMIT_BURST, settings.B24_RATE_LIMIT_PER_SECOND = 5, 500.0  # slowed slots of ms
    limits.cache.delete(f"b24widget:rl:{portal.member_id}")  # the install's own calls are not part of it
    now = time.time()
    for ago in (4.5, 3.4, 2.3, 1.2):  # a block: answers a second apart, each halving
        limits.note_limited(portal.member_id, now=now - ago)
    assert _share(portal.member_id, time.time()) == limits.FLOOR
    PortalClient(portal).call("server.time")
    assert _share(portal.member_id, time.time()) >= 2 * limits.FLOOR


@pytest.mark.slow  # paced in real time
@pytest.mark.django_db(transaction=True)
def test_a_bucket_more_optimistic_than_the_portal_adapts_and_no_limit_error_surfaces(settings, client, b24):
    """Our numbers say 40 burst, 40/s; the portal allows 10, then 20/s (another app on our address, a wrong
    plan): Bitrix24 answers QUERY_LIMIT_EXCEEDED, the client slows down and retries; every call succeeds."""
    from tests.conftest import do_install

    portal = do_install(client, b24)
    b24.rate_limit, b24.rate_limit_burst, b24.rate_limit_drain = True, 10, 20.0
    settings.B24_RATE_LIMIT_BURST, settings.B24_RATE_LIMIT_PER_SECOND = 40, 40
    settings.B24_REST_MAX_RETRIES = 0
    before = limits.counters.snapshot().get("limit_answers", 0)
    assert _calls_from_threads(portal, threads=3, calls=30) == []
    assert limits.counters.snapshot()["limit_answers"] > before  # the portal did refuse, and it was absorbed
    assert b24.calls("server.time") == 90 + len(_limited_answers(b24))


# --- operating time: billed per nested method -------------------------------------------------------


def test_a_method_near_its_budget_is_held_back_inside_a_batch_and_the_rest_goes(settings, installed):
    """settings/performance/limits.md: the outer batch is not billed, its nested methods are, each on its own."""
    portal, b24 = installed
    settings.B24_MAX_WAIT = 1
    b24.crm_items = 10
    b24.limits.operating_cost = {"crm.item.list": 150.0}  # three calls pass B24_OPERATING_PAUSE_AT (400)
    client_ = PortalClient(portal)
    result = client_.batch({f"c{i}": ("crm.item.list", {"entityTypeId": 2}) for i in range(3)})
    assert not result.errors
    assert limits.paused_until(portal.member_id, "crm.item.list")  # read from the commands' result_time
    assert not limits.paused_until(portal.member_id, "batch")
    calls = b24.calls("crm.item.list")
    result = client_.batch({"list": ("crm.item.list", {"entityTypeId": 2}), "admin": ("user.admin", {})})
    assert result.result["admin"] is True  # the other method and the batch itself go on
    assert result.errors["list"].code == "OPERATION_TIME_LIMIT"  # held back, not sent
    assert b24.calls("crm.item.list") == calls
    assert client_.call("server.time")  # the portal is not paused
