"""A refresh token is never lost, and nothing hangs: faults at the OAuth server, the portal, the cache and
the database (issue 13). Bitrix24 is the stand-in over real HTTP; the HTTP-level faults (a trickling or
oversized answer) come from a small local server, as a misbehaving host would send them."""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.db import connection
from django.test import RequestFactory

from bitrix24 import cache as shared_cache
from bitrix24 import http, oauth
from portals import tokens
from portals.models import Portal, PortalEvent
from tests.helpers import QuietHandler, in_threads, local_server
from tests.placements.frames import is_widget, open_widget
from tests.workers import wait_for

ROOT = Path(__file__).resolve().parents[2]
K = PortalEvent.Kind


def expire(portal):
    Portal.objects.filter(pk=portal.pk).update(access_expires_at=None)
    return Portal.objects.get(pk=portal.pk)


def live_refresh_tokens(standin):
    return set(standin._refresh)


# --- the OAuth server answers late ------------------------------------------------------------------------


@pytest.mark.slow  # real time: a late OAuth answer
@pytest.mark.django_db
def test_a_late_oauth_answer_is_received_and_stored(installed, standin, settings):
    """The server rotates at once and answers after the REST read timeout: the refresh's own deadline waits."""
    portal, _b24 = installed
    settings.B24_READ_TIMEOUT = 0.3
    settings.B24_OAUTH_DEADLINE = 10
    standin.oauth_late = 1.0
    fresh = tokens.refresh_portal(portal, force=True)
    assert fresh.refresh_token != portal.refresh_token
    assert fresh.refresh_token in live_refresh_tokens(standin)
    assert fresh.status == Portal.Status.ACTIVE


@pytest.mark.slow  # real time: a 1.5 s late OAuth answer
@pytest.mark.django_db(transaction=True)
def test_no_row_lock_is_held_while_the_oauth_server_thinks(installed, standin):
    portal, _b24 = installed
    standin.oauth_late = 1.5
    done = threading.Event()

    def slow_refresh():
        try:
            tokens.refresh_portal(portal, force=True)
        finally:
            connection.close()
            done.set()

    worker = threading.Thread(target=slow_refresh)
    worker.start()
    try:
        # While the refresh waits for its answer, the row takes writes at once (a lock would make
        # this wait, and NOWAIT would fail on PostgreSQL).
        while not Portal.objects.filter(pk=portal.pk).exclude(refresh_lease_owner="").exists():
            assert not done.is_set(), "the refresh finished before its lease was seen"
        from django.db import transaction

        with transaction.atomic():
            locked = Portal.objects.select_for_update(nowait=connection.features.has_select_for_update_nowait)
            assert locked.get(pk=portal.pk).refresh_lease_owner
            Portal.objects.filter(pk=portal.pk).update(language="de")
        assert not done.is_set()
    finally:
        worker.join(30)
    stored = Portal.objects.get(pk=portal.pk)
    assert stored.refresh_token in live_refresh_tokens(standin) and stored.language == "de"
    assert stored.refresh_lease_owner == "" and stored.refresh_lease_until is None


@pytest.mark.slow  # real time: a 1.5 s late OAuth answer
@pytest.mark.django_db(transaction=True)
def test_callers_waiting_for_a_slow_refresh_do_not_pile_up(installed, standin):
    """20 callers find the token expired while one refresh waits 1.5 s: one OAuth request; the others
    wait briefly (B24_REFRESH_WAIT) and are told to try again, or find the new token."""
    portal, _b24 = installed
    portal = expire(portal)
    standin.oauth_late = 1.5
    before = len(standin.oauth_requests)
    outcomes = []

    def caller():
        try:
            tokens.refresh_portal(portal, seen_access_token=portal.access_token, wait=0.3)
            outcomes.append("fresh")
        except oauth.RefreshInProgress:
            outcomes.append("busy")

    in_threads(caller, 20, timeout=30)
    assert len(standin.oauth_requests) - before == 1
    assert len(outcomes) == 20 and outcomes.count("busy") >= 1
    assert Portal.objects.get(pk=portal.pk).refresh_token in live_refresh_tokens(standin)


@pytest.mark.django_db
def test_a_refresh_token_lost_to_an_early_give_up_heals_at_an_administrators_open(installed, standin, settings, frame):
    """The worst case: the client gives up (deadline shorter than the server's answer) after the server
    rotated. The portal is blocked at its next refresh, and the next administrator's open heals it."""
    portal, b24 = installed
    settings.B24_OAUTH_DEADLINE = 0.3
    standin.oauth_late = 1.0
    with pytest.raises(oauth.OAuthUnavailable):
        tokens.refresh_portal(portal, force=True)
    standin.oauth_late = 0
    settings.B24_OAUTH_DEADLINE = 10
    with pytest.raises(oauth.OAuthRejected) as info:
        tokens.refresh_portal(portal, force=True)
    assert info.value.code == "invalid_grant"
    assert Portal.objects.get(pk=portal.pk).status == Portal.Status.BLOCKED
    # An ordinary user is asked for an administrator; the administrator's open restores the portal.
    assert open_widget(frame, b24.placement_post(user_id="2")).status_code == 403
    assert is_widget(open_widget(frame, b24.placement_post(user_id="1")))
    healed = Portal.objects.get(pk=portal.pk)
    assert healed.status == Portal.Status.ACTIVE and healed.refresh_token in live_refresh_tokens(standin)
    assert healed.events.filter(kind=K.RECOVERED).exists()


# --- answers that trickle or never end ---------------------------------------------------------------------


class _Misbehaving(QuietHandler):
    def do_GET(self):
        mode = self.path.split("?")[0].strip("/")
        if mode == "trickle":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            try:
                for _ in range(200):  # one byte every 0.1 s for 20 s: no single read ever times out
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    threading.Event().wait(0.1)
            except OSError:
                return
        elif mode == "huge":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(b" " * (1024 * 1024))
            except OSError:
                return
        elif mode == "declared":
            self.send_response(200)
            self.send_header("Content-Length", str(500 * 1024 * 1024))
            self.end_headers()

    do_POST = do_GET


@pytest.fixture(scope="module")
def misbehaving():
    with local_server(_Misbehaving) as server:
        yield server.url


@pytest.mark.slow  # real time: waits out a deadline
def test_a_trickling_answer_hits_the_total_deadline(misbehaving):
    with pytest.raises(http.HttpFailure) as info:
        http.send("GET", f"{misbehaving}/trickle", connect_timeout=2, read_timeout=5, deadline=1, max_bytes=1 << 20)
    assert info.value.code == "deadline"


@pytest.mark.parametrize("path", ["huge", "declared"])
def test_an_oversized_answer_is_cut_at_the_cap(misbehaving, path):
    with pytest.raises(http.HttpFailure) as info:
        http.send("GET", f"{misbehaving}/{path}", connect_timeout=2, read_timeout=5, deadline=20, max_bytes=1 << 20)
    assert info.value.code == "too_large"


@pytest.mark.slow  # real time: waits out a deadline
@pytest.mark.django_db
def test_the_oauth_server_trickling_is_unavailable_not_a_hang(settings, misbehaving):
    settings.B24_OAUTH_URL = f"{misbehaving}/trickle"
    settings.B24_OAUTH_DEADLINE = 1
    with pytest.raises(oauth.OAuthUnavailable) as info:
        oauth.request_refresh("a" * 32)
    assert info.value.code == "deadline"


# --- the cache (Redis) fails ------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_down(settings):
    working = settings.CACHES
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{_closed_port()}/0",
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }
    yield
    settings.CACHES = working  # before the suite's own fixtures clear the cache


@pytest.mark.django_db
def test_with_redis_down_installs_and_opens_still_work(client, frame, b24, redis_down):
    from tests.conftest import do_install

    portal = do_install(client, b24)
    assert portal.status == Portal.Status.ACTIVE and portal.bound_at is not None
    assert is_widget(open_widget(frame, b24.placement_post(user_id="2")))
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json()["checks"]["cache"].startswith("error")


# --- the database does not answer --------------------------------------------------------------------------


@pytest.mark.slow  # a subprocess
def test_a_database_that_does_not_answer_is_a_fast_503_page_in_the_frame():
    """A host that accepts connections and never speaks (a frozen or unreachable PostgreSQL)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    script = (
        "import django; django.setup()\n"
        "from django.test import Client\n"
        "r = Client().post('/placement/', {'DOMAIN': 'portal.bitrix24.de', 'PROTOCOL': '1', 'LANG': 'de',"
        " 'member_id': 'abc', 'PLACEMENT': 'CONTACT_CENTER', 'AUTH_ID': 'x'})\n"
        "print(r.status_code, r['Retry-After'], r['Content-Security-Policy'])\n"
        "print(r.content.decode())\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DB_CONNECT_TIMEOUT": "1",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{port}/frozen",
        "LOG_LEVEL": "CRITICAL",
    }
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        silent.close()
    first, _, page = done.stdout.partition("\n")
    assert first.split(" ", 2) == ["503", "10", "frame-ancestors https://portal.bitrix24.de"], done.stderr[-2000:]
    assert "Datenbank" in page


def test_a_500_page_is_framed_by_the_portal_and_localized():
    from b24widget.errors import server_error

    request = RequestFactory().post("/placement/", {"DOMAIN": "portal.bitrix24.ru", "PROTOCOL": "1", "LANG": "ru"})
    response = server_error(request)
    assert response.status_code == 500
    assert response["Content-Security-Policy"] == "frame-ancestors https://portal.bitrix24.ru"
    assert "Попробуйте" in response.content.decode()
    # Elsewhere (the admin, an unreadable DOMAIN) nobody may frame it.
    assert server_error(RequestFactory().get("/admin/"))["Content-Security-Policy"] == "frame-ancestors 'none'"
    bad = server_error(RequestFactory().post("/placement/", {"DOMAIN": "evil/x", "LANG": "ru"}))
    assert bad["Content-Security-Policy"] == "frame-ancestors 'none'"


# --- the same faults from the stand-in's portal and OAuth server ----------------------------------------


@pytest.mark.slow  # real time: waits out a deadline
@pytest.mark.django_db
def test_a_portal_trickling_its_answer_hits_the_rest_deadline(installed, settings):
    from bitrix24.errors import TransportError
    from portals.tokens import PortalClient

    portal, b24 = installed
    settings.B24_REST_DEADLINE = 1
    settings.B24_READ_TIMEOUT = 5  # each byte arrives well within the read timeout: only the deadline ends it
    b24.slow_answer("user.admin", chunk=1, pause=0.2)
    with pytest.raises(TransportError) as info:
        PortalClient(portal).call("user.admin")
    assert info.value.code == "deadline"
    assert PortalClient(portal).call("user.admin") is True  # the next answer is normal again


@pytest.mark.django_db
def test_an_oversized_portal_answer_is_cut_at_the_cap(installed, settings):
    from bitrix24.errors import TransportError
    from portals.tokens import PortalClient

    portal, b24 = installed
    settings.B24_REST_MAX_BYTES = 1024 * 1024
    b24.oversized_answer("user.admin", megabytes=8)
    with pytest.raises(TransportError) as info:
        PortalClient(portal).call("user.admin")
    assert info.value.code == "too_large"


@pytest.mark.django_db
def test_an_oversized_oauth_answer_loses_no_token_it_was_not_given(installed, standin, settings):
    """The OAuth server pads its answer past the cap: the refresh fails as unavailable, the portal keeps
    serving, and (the stand-in rotated) the next administrator open heals it."""
    portal, _b24 = installed
    standin.oversized_answer("oauth.token", megabytes=1)
    with pytest.raises(oauth.OAuthUnavailable) as info:
        tokens.refresh_portal(portal, force=True)
    assert info.value.code == "too_large"
    assert Portal.objects.get(pk=portal.pk).status == Portal.Status.ACTIVE


@pytest.fixture
def redis_silent(settings):
    """A Redis host that accepts connections and never answers (frozen, or behind a broken network)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                accepted.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    working = settings.CACHES
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{listener.getsockname()[1]}/0",
            "OPTIONS": {"socket_connect_timeout": 0.3, "socket_timeout": 0.3},
        }
    }
    yield accepted
    settings.CACHES = working
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.mark.django_db
def test_a_silent_redis_costs_one_timeout_not_one_per_cache_operation(frame, installed, redis_silent):
    """A widget open makes a dozen cache operations; after the first times out, the breaker sends the rest
    to this process's memory for a few seconds."""
    _, b24 = installed
    attempts_before = len(redis_silent)
    assert is_widget(open_widget(frame, b24.placement_post(user_id="2")))
    assert time_left_open() > 0  # the breaker is open now
    assert len(redis_silent) - attempts_before <= 2


def time_left_open():
    return shared_cache._cache_down_until[0] - time.monotonic()


@pytest.mark.slow  # real time: a 1 s late OAuth answer
@pytest.mark.django_db(transaction=True)
def test_an_uninstall_during_a_refresh_keeps_the_secrets_wiped(client, installed, standin):
    """The refresh was on its way (the OAuth server answers late) when the uninstall arrived: the uninstall
    wins, the answer is not stored on the uninstalled row."""
    from tests.conftest import do_uninstall

    portal, b24 = installed
    standin.oauth_late = 1.0
    before = len(standin.oauth_requests)
    refresher = threading.Thread(target=lambda: (tokens.refresh_portal(portal, force=True), connection.close()))
    refresher.start()
    wait_for(lambda: len(standin.oauth_requests) > before, timeout=30, every=0.01, what="the refresh to reach OAuth")
    assert do_uninstall(client, b24).status_code == 200
    refresher.join(30)
    stored = Portal.objects.get(pk=portal.pk)
    assert stored.status == Portal.Status.UNINSTALLED
    assert (stored.access_token, stored.refresh_token, stored.application_token) == ("", "", "")
