"""The maintenance commands: refresh_tokens (only due portals, once, even with copies running at once)
and sync_portals (app.info stored through lifecycle), against the stand-in over real HTTP."""

import os
import re
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from portals import tokens
from portals.management.commands.refresh_tokens import due as due_now
from portals.management.commands.refresh_tokens import refresh_if_due
from portals.models import Portal, PortalEvent
from tests.conftest import do_install
from tests.helpers import database_url

K = PortalEvent.Kind
S = Portal.Status
ROOT = Path(__file__).resolve().parents[2]

# Worker threads (and processes) read what the test wrote: it must be committed.
pytestmark = pytest.mark.django_db(transaction=True)


def install(client, standin, n):
    """n portals installed on the stand-in: [(stored Portal, stand-in portal)]."""
    out = []
    for _ in range(n):
        b24 = standin.add_portal()
        out.append((do_install(client, b24), b24))
    return out


def age(pairs, *, days):
    """Pretend the refresh tokens were last renewed `days` ago."""
    Portal.objects.filter(pk__in=[p.pk for p, _ in pairs]).update(
        refresh_renewed_at=timezone.now() - timedelta(days=days)
    )


def snapshot(pairs):
    """What a refresh would change, per portal."""
    rows = Portal.objects.filter(pk__in=[p.pk for p, _ in pairs])
    return {q.pk: (q.refresh_token, q.access_token, q.refresh_renewed_at, q.status) for q in rows}


def run(name, *args):
    out, err = StringIO(), StringIO()
    try:
        call_command(name, *args, stdout=out, stderr=err)
    except CommandError as exc:
        exc.out, exc.err = out.getvalue(), err.getvalue()
        raise
    return out.getvalue(), err.getvalue()


def summary(text):
    """The counters of the summary line (the last line with `failed=`)."""
    line = [line for line in text.splitlines() if "failed=" in line and not line.startswith("progress")][-1]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


# --- refresh_tokens -----------------------------------------------------------------------------------


@pytest.mark.slow  # over 1.5 s
def test_only_due_portals_are_refreshed(client, standin):
    due, fresh = install(client, standin, 3), install(client, standin, 2)
    age(due, days=160)
    age(fresh, days=100)
    others = install(client, standin, 2)
    age(others, days=170)
    blocked, uninstalled = others[0][0], others[1][0]
    Portal.objects.filter(pk=blocked.pk).update(status=S.BLOCKED)
    Portal.objects.filter(pk=uninstalled.pk).update(status=S.UNINSTALLED, refresh_token="", access_token="")
    before_fresh, before_others = snapshot(fresh), snapshot(others)
    before = len(standin.oauth_requests)

    out, _err = run("refresh_tokens", "--workers", "3", "--progress-every", "1")

    assert len(standin.oauth_requests) - before == len(due)
    assert summary(out) == {"refreshed": 3, "blocked": 0, "failed": 0, "skipped": 0}
    assert out.count("progress ") == 3
    for portal, _b24 in due:
        after = Portal.objects.get(pk=portal.pk)
        assert after.refresh_token != portal.refresh_token
        assert timezone.now() - after.refresh_renewed_at < timedelta(minutes=5)
        assert after.events.filter(kind=K.TOKEN_REFRESHED).count() == 1
    assert snapshot(fresh) == before_fresh
    assert snapshot(others) == before_others


@pytest.mark.slow  # over 1.5 s
def test_window_is_configurable(client, standin):
    pairs = install(client, standin, 2)
    age(pairs[:1], days=100)
    age(pairs[1:], days=20)
    before = len(standin.oauth_requests)
    out, _ = run("refresh_tokens", "--older-than-days", "90")
    assert summary(out)["refreshed"] == 1
    assert len(standin.oauth_requests) - before == 1
    assert Portal.objects.get(pk=pairs[0][0].pk).refresh_token != pairs[0][0].refresh_token
    assert Portal.objects.get(pk=pairs[1][0].pk).refresh_token == pairs[1][0].refresh_token


@pytest.mark.slow  # over 1.5 s
def test_second_run_refreshes_nothing(client, standin):
    pairs = install(client, standin, 3)
    age(pairs, days=151)
    run("refresh_tokens")
    tokens = snapshot(pairs)
    before = len(standin.oauth_requests)
    out, _ = run("refresh_tokens", "--expiring-access-tokens")
    assert len(standin.oauth_requests) == before
    assert summary(out) == {"refreshed": 0, "blocked": 0, "failed": 0, "skipped": 0}
    assert snapshot(pairs) == tokens


@pytest.mark.slow  # over 1.5 s
@pytest.mark.parametrize("error", ["PAYMENT_REQUIRED", "NOT_INSTALLED"])
def test_refused_refresh_blocks_the_portal_and_is_not_a_failure(client, standin, error):
    (refused, b24), (ok, _) = install(client, standin, 2)
    age([(refused, b24), (ok, None)], days=160)
    b24.block(error)
    out, _err = run("refresh_tokens")
    assert summary(out) == {"refreshed": 1, "blocked": 1, "failed": 0, "skipped": 0}
    assert f"blocked {refused.member_id}" in out
    after = Portal.objects.get(pk=refused.pk)
    assert after.status == S.BLOCKED
    assert after.last_error.startswith(f"{error}:")  # as tokens.refresh_portal writes it
    assert after.events.filter(kind=K.BLOCKED, detail__reason=error).exists()
    assert after.events.filter(kind=K.REFRESH_FAILED, detail__reason=error).exists()
    assert Portal.objects.get(pk=ok.pk).refresh_token != ok.refresh_token
    # A blocked portal is no longer serving: the next run leaves it alone.
    before = len(standin.oauth_requests)
    out, _ = run("refresh_tokens")
    assert len(standin.oauth_requests) == before


def test_outage_fails_the_run_without_blocking(client, standin):
    pairs = install(client, standin, 2)
    age(pairs, days=160)
    tokens = snapshot(pairs)
    standin.oauth_down = True
    with pytest.raises(CommandError) as info:
        run("refresh_tokens", "--workers", "2")
    assert summary(info.value.out) == {"refreshed": 0, "blocked": 0, "failed": 2, "skipped": 0}
    assert "bad_answer" in info.value.err  # the stand-in answers 503 with an HTML page
    assert snapshot(pairs) == tokens
    for portal, _b24 in pairs:
        after = Portal.objects.get(pk=portal.pk)
        assert after.status == S.ACTIVE
        assert after.events.filter(kind=K.REFRESH_FAILED).exists()
        assert not after.events.filter(kind=K.BLOCKED).exists()
    # Still due: once the OAuth server is back, the next run refreshes them.
    standin.oauth_down = False
    out, _ = run("refresh_tokens")
    assert summary(out)["refreshed"] == 2


@pytest.mark.slow  # a manage.py subprocess
def test_outage_exit_status_of_manage_py(client, standin):
    pairs = install(client, standin, 1)
    age(pairs, days=160)
    standin.oauth_down = True
    result = subprocess.run(
        [sys.executable, "manage.py", "refresh_tokens"],
        cwd=ROOT,
        env=_command_env(standin),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "failed=1" in result.stdout
    assert Portal.objects.get(pk=pairs[0][0].pk).status == S.ACTIVE


@pytest.mark.slow  # over 1.5 s
def test_dry_run_changes_nothing(client, standin):
    pairs = install(client, standin, 3)
    age(pairs[:2], days=160)
    tokens = snapshot(pairs)
    events = PortalEvent.objects.count()
    before = len(standin.oauth_requests)
    out, _ = run("refresh_tokens", "--dry-run")
    assert len(standin.oauth_requests) == before
    assert snapshot(pairs) == tokens
    assert PortalEvent.objects.count() == events
    assert summary(out)["due"] == 2
    assert all(f"due {p.member_id}" in out for p, _ in pairs[:2])
    assert pairs[2][0].member_id not in out


@pytest.mark.slow  # over 1.5 s
def test_expiring_access_tokens_only_with_the_flag(client, standin):
    soon, later, gone = install(client, standin, 3)
    now = timezone.now()
    Portal.objects.filter(pk=soon[0].pk).update(access_expires_at=now + timedelta(minutes=2))
    Portal.objects.filter(pk=later[0].pk).update(access_expires_at=now + timedelta(minutes=40))
    Portal.objects.filter(pk=gone[0].pk).update(access_expires_at=now - timedelta(minutes=1))
    before = len(standin.oauth_requests)
    out, _ = run("refresh_tokens")
    assert summary(out)["refreshed"] == 0
    assert len(standin.oauth_requests) == before

    out, _ = run("refresh_tokens", "--expiring-access-tokens", "--within-minutes", "5")
    assert summary(out)["refreshed"] == 2
    assert len(standin.oauth_requests) - before == 2
    assert Portal.objects.get(pk=soon[0].pk).access_token != soon[0].access_token
    assert Portal.objects.get(pk=gone[0].pk).access_token != gone[0].access_token
    assert Portal.objects.get(pk=later[0].pk).access_token == later[0].access_token
    assert not Portal.objects.get(pk=soon[0].pk).access_token_expired(leeway=30 * 60)


@pytest.mark.slow  # over 1.5 s
def test_limit_and_batch_size(client, standin):
    pairs = install(client, standin, 5)
    age(pairs, days=160)
    before = len(standin.oauth_requests)
    out, _ = run("refresh_tokens", "--limit", "3", "--batch-size", "2", "--workers", "2")
    assert summary(out)["refreshed"] == 3
    assert len(standin.oauth_requests) - before == 3
    out, _ = run("refresh_tokens", "--batch-size", "1")
    assert summary(out)["refreshed"] == 2
    assert len(standin.oauth_requests) - before == 5


@pytest.mark.parametrize(
    "args",
    [
        ["--older-than-days", "180"],
        ["--older-than-days", "0"],
        ["--expiring-access-tokens", "--within-minutes", "60"],
        ["--workers", "0"],
        ["--batch-size", "0"],
        ["--limit", "0"],
    ],
)
def test_unsafe_arguments_are_refused(args, standin):
    before = len(standin.oauth_requests)
    with pytest.raises(CommandError):
        run("refresh_tokens", *args)
    assert len(standin.oauth_requests) == before


def test_claim_judges_due_again_under_the_lock(client, standin):
    """The id was read while the portal was due; another copy refreshed it before the claim."""
    ((portal, _b24),) = install(client, standin, 1)
    age([(portal, None)], days=160)
    listed = list(Portal.objects.filter(due_now(older_than_days=150, within_minutes=None)).values_list("pk", flat=True))
    assert listed == [portal.pk]
    tokens.refresh_portal(portal, force=True)  # what the other copy did
    before = len(standin.oauth_requests)
    assert refresh_if_due(portal.pk, due_now(older_than_days=150, within_minutes=None)).kind == "skipped"
    assert len(standin.oauth_requests) == before


def test_a_portal_another_copy_is_refreshing_is_skipped(client, standin):
    """Another copy holds the portal's refresh lease (it is waiting for the OAuth server): skipped, no
    second OAuth request, and no database lock held meanwhile; once the lease ends it is refreshed."""
    from datetime import timedelta

    from django.utils import timezone

    ((portal, _b24),) = install(client, standin, 1)
    age([(portal, None)], days=160)
    Portal.objects.filter(pk=portal.pk).update(
        refresh_lease_owner="another-copy", refresh_lease_until=timezone.now() + timedelta(seconds=60)
    )
    before = len(standin.oauth_requests)
    assert refresh_if_due(portal.pk, due_now(older_than_days=150, within_minutes=None)).kind == "skipped"
    assert len(standin.oauth_requests) == before
    # The row is not locked: a widget open's write goes through at once.
    Portal.objects.filter(pk=portal.pk).update(last_seen_at=timezone.now())
    # The holder died: its lease expires by itself.
    Portal.objects.filter(pk=portal.pk).update(refresh_lease_until=timezone.now() - timedelta(seconds=1))
    assert refresh_if_due(portal.pk, due_now(older_than_days=150, within_minutes=None)).kind == "refreshed"
    assert len(standin.oauth_requests) == before + 1
    assert Portal.objects.get(pk=portal.pk).refresh_lease_owner == ""


def _command_env(standin):
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        "B24_OAUTH_URL": standin.oauth_url,
        "LOG_LEVEL": "WARNING",
    }


@pytest.mark.slow  # two manage.py subprocesses
def test_two_copies_at_once_refresh_each_portal_once(client, standin):
    pairs = install(client, standin, 12)
    age(pairs, days=160)
    standin.oauth_delay = 0.05  # keep rows locked long enough for the copies to meet
    before = len(standin.oauth_requests)
    started = timezone.now()
    env = _command_env(standin)
    procs = [
        subprocess.Popen(
            [sys.executable, "manage.py", "refresh_tokens", "--workers", "3", "--batch-size", "4"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
    counts = [summary(out) for out, _err in outputs]
    assert sum(c["refreshed"] for c in counts) == len(pairs)
    assert sum(c["failed"] + c["blocked"] for c in counts) == 0
    assert len(standin.oauth_requests) - before == len(pairs)
    for portal, _b24 in pairs:
        assert portal.events.filter(kind=K.TOKEN_REFRESHED, created_at__gte=started).count() == 1
        assert Portal.objects.get(pk=portal.pk).refresh_token != portal.refresh_token


def _start(standin, *args, secret=None):
    env = _command_env(standin)
    if secret is not None:
        env["B24_CLIENT_SECRET"] = secret
    return subprocess.Popen(
        [sys.executable, "manage.py", "refresh_tokens", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _lost(standin, pairs):
    """Portals whose stored refresh token the OAuth server no longer knows (spent, answer not stored)."""
    live = set(standin._refresh)
    return [p.pk for p, _ in pairs if Portal.objects.get(pk=p.pk).refresh_token not in live]


def _wait_for_refreshes(standin, before, count):
    import time

    deadline = time.monotonic() + 60
    while len(standin.oauth_requests) - before < count and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.slow  # a manage.py subprocess, signalled
def test_sigterm_finishes_what_is_in_flight_and_loses_no_token(client, standin):
    import signal

    pairs = install(client, standin, 16)
    age(pairs, days=160)
    standin.oauth_delay = 0.3  # each refresh takes a while: SIGTERM lands in the middle of the run
    before = len(standin.oauth_requests)
    proc = _start(standin, "--workers", "2", "--batch-size", "4")
    _wait_for_refreshes(standin, before, 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err
    sent = len(standin.oauth_requests) - before
    assert 3 <= sent < len(pairs)  # it stopped early...
    assert _lost(standin, pairs) == []  # ...and every answer it received was stored
    assert sum(summary(out)[k] for k in ("refreshed",)) == sent


@pytest.mark.slow  # a manage.py subprocess, signalled
def test_sigkill_loses_at_most_the_refreshes_in_flight(client, standin):
    import signal

    pairs = install(client, standin, 16)
    age(pairs, days=160)
    standin.oauth_late = 0.3  # the OAuth server rotates at once and answers late: the worst moment to die
    before = len(standin.oauth_requests)
    proc = _start(standin, "--workers", "2", "--batch-size", "4")
    _wait_for_refreshes(standin, before, 3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert len(_lost(standin, pairs)) <= 2  # at most one per worker; each heals at an administrator's open


@pytest.mark.slow  # a manage.py subprocess
def test_a_wrong_client_secret_stops_the_run_and_blocks_nobody(client, standin):
    pairs = install(client, standin, 6)
    age(pairs, days=160)
    before = len(standin.oauth_requests)
    proc = _start(standin, "--workers", "1", secret="not-the-secret")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "check B24_CLIENT_ID and B24_CLIENT_SECRET" in err and "not-the-secret" not in err + out
    assert len(standin.oauth_requests) - before == 1  # stopped at the first such answer
    assert not Portal.objects.filter(status=S.BLOCKED).exists()
    assert _lost(standin, pairs) == []


# --- sync_portals -------------------------------------------------------------------------------------


@pytest.mark.slow  # over 1.5 s
def test_sync_stores_app_info_and_records_status_changes(client, standin):
    (trial, b24_trial), (free, b24_free), (blocked, b24_blocked), (new, b24_new) = install(client, standin, 4)
    Portal.objects.filter(pk=blocked.pk).update(status=S.BLOCKED)
    Portal.objects.filter(pk=new.pk).update(status=S.NEW)
    Portal.objects.filter(pk=free.pk).update(payment_expired=False, license="en_project")
    b24_trial.app_status = "T"
    asked = {b.member_id: b.calls("app.info") for b in (b24_blocked, b24_new, b24_trial, b24_free)}
    server_asked = len(standin.server_requests)

    out, _err = run("sync_portals", "--workers", "2")

    counts = summary(out)
    assert (counts["synced"], counts["failed"], counts["skipped"]) == (2, 0, 0)
    # Asked at the OAuth server's REST (the trusted source), never at the portals themselves.
    assert len(standin.server_requests) - server_asked == 2
    assert {b.member_id: b.calls("app.info") for b in (b24_blocked, b24_new, b24_trial, b24_free)} == asked
    # The OAuth server's app.info gives the status only (install.status; b24pysdk B24AppInfoResultData).
    trial = Portal.objects.get(pk=trial.pk)
    assert trial.app_status == "T"
    assert trial.events.filter(kind=K.APP_STATUS_CHANGED, detail__old="F", detail__new="T").exists()
    # The OAuth server's answer has no PAYMENT_EXPIRED or LICENSE: what the portal said stays.
    free = Portal.objects.get(pk=free.pk)
    assert free.app_status == "F"
    assert not free.events.filter(kind=K.APP_STATUS_CHANGED).exists()

    # Nothing changed since: a second run stores nothing new.
    events = PortalEvent.objects.count()
    out, _ = run("sync_portals")
    assert summary(out)["changed"] == 0
    assert PortalEvent.objects.count() == events


def test_sync_refuses_a_token_of_another_app(client, standin, other_app):
    # The OAuth server names the token's application in client_id (b24pysdk B24AppInfoResultData).
    ((portal, b24),) = install(client, standin, 1)
    stored = Portal.objects.get(pk=portal.pk)
    stored.access_token = b24.issue_tokens("1", client_id=other_app.client_id)["access_token"]
    stored.save(update_fields=["access_token"])
    b24.app_status = "P"
    with pytest.raises(CommandError) as info:
        run("sync_portals")
    assert "failure_codes=wrong_app:1" in info.value.out
    assert Portal.objects.get(pk=portal.pk).app_status == "F"


def test_sync_reports_an_install_the_oauth_server_does_not_know_as_finished(client, standin):
    ((portal, b24),) = install(client, standin, 1)
    b24.install_finished = False  # install.installed false in the OAuth server's answer
    with pytest.raises(CommandError) as info:
        run("sync_portals")
    assert "failure_codes=not_installed:1" in info.value.out


def test_sync_refreshes_an_expired_access_token(client, standin):
    ((portal, b24),) = install(client, standin, 1)
    b24.expire_access_tokens()
    b24.app_status = "P"
    before = len(standin.oauth_requests)
    out, _ = run("sync_portals")
    assert summary(out)["synced"] == 1
    assert len(standin.oauth_requests) - before == 1
    assert Portal.objects.get(pk=portal.pk).app_status == "P"


def test_sync_blocks_a_portal_whose_refresh_is_refused(client, standin):
    (refused, b24), (ok, _) = install(client, standin, 2)
    b24.expire_access_tokens()
    b24.block("PAYMENT_REQUIRED")
    out, _ = run("sync_portals")
    counts = summary(out)
    assert (counts["synced"], counts["blocked"], counts["failed"]) == (1, 1, 0)
    after = Portal.objects.get(pk=refused.pk)
    assert after.status == S.BLOCKED
    assert after.events.filter(kind=K.BLOCKED, detail__reason="PAYMENT_REQUIRED").exists()


def test_sync_counts_other_errors_as_failed_with_their_code(client, standin):
    (failing, b24), (ok, b24_ok) = install(client, standin, 2)
    b24.fail_next("app.info", "ACCESS_DENIED", 403)
    b24_ok.app_status = "S"
    with pytest.raises(CommandError) as info:
        run("sync_portals")
    counts = summary(info.value.out)
    assert (counts["synced"], counts["failed"]) == (1, 1)
    assert "failure_codes=ACCESS_DENIED:1" in info.value.out
    assert f"failed {failing.member_id}" in info.value.err and "ACCESS_DENIED" in info.value.err
    assert Portal.objects.get(pk=failing.pk).status == S.ACTIVE
    assert Portal.objects.get(pk=ok.pk).app_status == "S"


def test_sync_dry_run_calls_nothing(client, standin):
    ((portal, b24),) = install(client, standin, 1)
    calls = b24.calls("app.info")
    out, _ = run("sync_portals", "--dry-run")
    assert b24.calls("app.info") == calls
    assert f"would ask {portal.member_id}" in out
