"""A rotated token is never lost to a database outage (issue 23).

The OAuth server rotates the refresh token and answers while our database is away: the answer is held
(encrypted, in the spool folder) until the database takes it, and the next refresh or beat's pass stores it
instead of asking Bitrix24 again with the spent token. The outage is real: on PostgreSQL our own server
(initdb/pg_ctl in a temp folder, another port) is stopped mid-refresh; on SQLite another process's
exclusive lock keeps every reader and writer out, which is how SQLite is unavailable to the app.
"""

import dataclasses
import glob
import io
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, connections
from django.test import Client

from portals import tokens
from portals.models import Portal, PortalEvent
from tests.conftest import do_install
from tests.workers import wait_for

K = PortalEvent.Kind


def live_refresh_tokens(standin):
    return set(standin._refresh)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class OwnPostgres:
    """A PostgreSQL server of this test's own, in a temp folder, on a free port (run as the postgres user)."""

    def __init__(self, folder: Path):
        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
        self.folder = folder
        self.data = folder / "data"
        self.port = _free_port()
        folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr[-2000:])

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


def _point_default_database_at(**changes) -> dict:
    """Point every connection of the default alias (this thread's and those threads will open) elsewhere."""
    connections.close_all()
    targets = {id(connections.settings["default"]): connections.settings["default"]}
    targets[id(connection.settings_dict)] = connection.settings_dict
    saved = {key: {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()} for key, d in targets.items()}
    for settings_dict in targets.values():
        for key, value in changes.items():
            if isinstance(value, dict):
                settings_dict.setdefault(key, {}).update(value)
            else:
                settings_dict[key] = value
    return {"targets": targets, "saved": saved}


def _restore(pointed: dict) -> None:
    connections.close_all()
    for key, settings_dict in pointed["targets"].items():
        settings_dict.clear()
        settings_dict.update(pointed["saved"][key])


@pytest.fixture
def outage(request, tmp_path, django_db_blocker):
    """(stop, start): a real database outage for this test's database, whatever the suite runs on."""
    engine = connection.settings_dict["ENGINE"]
    if engine.endswith("postgresql"):
        if not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"):
            pytest.skip("no PostgreSQL server binaries to start a server of our own")
        # Not under pytest's tmp_path: the postgres user must be able to reach the folder.
        folder = Path(tempfile.mkdtemp(prefix="b24widget-held-pg-"))
        folder.chmod(0o755)
        request.addfinalizer(lambda: shutil.rmtree(folder, ignore_errors=True))
        server = OwnPostgres(folder / "pg")
        server.start()
        server._run("createdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "held")
        with django_db_blocker.unblock():
            pointed = _point_default_database_at(NAME="held", HOST="127.0.0.1", PORT=server.port, USER="postgres")
            try:
                call_command("migrate", verbosity=0)

                def start():
                    server.start()
                    connections.close_all()  # as the next task or request does with a connection the restart broke

                yield server.stop, start
            finally:
                _restore(pointed)
                try:
                    server.stop()
                except subprocess.CalledProcessError:
                    pass
        return
    # SQLite: a file of our own, and another process's exclusive lock on it while the outage lasts.
    path = str(tmp_path / "held.sqlite3")
    with django_db_blocker.unblock():
        pointed = _point_default_database_at(NAME=path, OPTIONS={"timeout": 1})
        try:
            call_command("migrate", verbosity=0)
            holder: dict = {}

            def stop():
                lock = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                lock.execute("BEGIN EXCLUSIVE")
                holder["lock"] = lock

            def start():
                lock = holder.pop("lock")
                lock.execute("ROLLBACK")
                lock.close()

            yield stop, start
            if "lock" in holder:
                start()
        finally:
            _restore(pointed)


def _spool_files() -> list[Path]:
    return tokens.HELD.files()


@pytest.fixture
def empty_spool(settings, tmp_path):
    settings.B24_TOKEN_SPOOL_DIR = tmp_path / "held"
    yield settings.B24_TOKEN_SPOOL_DIR


def _refresh_during_outage(portal, standin, stop, errors: list):
    """Start a forced refresh; stop the database once the OAuth server has rotated (it answers late)."""
    spent = portal.refresh_token

    def refresh():
        try:
            tokens.refresh_portal(portal, force=True)
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    worker = threading.Thread(target=refresh)
    worker.start()
    wait_for(lambda: spent not in live_refresh_tokens(standin), what="the OAuth server to rotate", timeout=10)
    stop()  # the answer is still on its way: the database goes away before it arrives
    worker.join(60)
    assert not worker.is_alive()
    return spent


@pytest.mark.slow  # starts a database server (PostgreSQL) or waits out lock timeouts (SQLite)
def test_a_token_rotated_while_the_database_is_down_is_held_and_stored_when_it_is_back(
    outage, empty_spool, standin, settings
):
    stop, start = outage
    settings.B24_TOKEN_STORE_WAIT = 1.0
    standin.oauth_late = 1.0
    portal = do_install(Client(), standin.add_portal())
    errors: list = []
    spent = _refresh_during_outage(portal, standin, stop, errors)

    # The refresh could not store its answer and said so: a database error, not an OAuth one.
    assert len(errors) == 1 and isinstance(errors[0], DatabaseError), errors
    # The answer is held, encrypted: the live refresh token is in the spool, its text nowhere in the file.
    files = _spool_files()
    assert len(files) == 1
    grant, _held_at = tokens.held(portal.member_id)
    assert grant.refresh_token in live_refresh_tokens(standin) and spent not in live_refresh_tokens(standin)
    assert grant.refresh_token not in files[0].read_text() and grant.access_token not in files[0].read_text()

    start()
    standin.oauth_late = 0
    # The next refresh stores the held grant instead of sending the spent token (which would block the portal).
    after = tokens.refresh_portal(Portal.objects.get(pk=portal.pk), force=True)
    assert after.refresh_token == grant.refresh_token
    assert _spool_files() == []
    stored = Portal.objects.get(pk=portal.pk)
    assert stored.status == Portal.Status.ACTIVE and stored.refresh_token in live_refresh_tokens(standin)
    assert not stored.events.filter(kind__in=(K.BLOCKED, K.REFRESH_FAILED)).exists()
    # And the portal goes on refreshing with Bitrix24 as before.
    again = tokens.refresh_portal(stored, force=True)
    assert again.refresh_token != grant.refresh_token and again.refresh_token in live_refresh_tokens(standin)
    assert Portal.objects.get(pk=portal.pk).status == Portal.Status.ACTIVE


@pytest.mark.slow  # starts a database server (PostgreSQL) or waits out lock timeouts (SQLite)
def test_beat_stores_held_tokens_once_the_database_is_back_and_waits_while_it_is_not(
    outage, empty_spool, standin, settings
):
    stop, start = outage
    settings.B24_TOKEN_STORE_WAIT = 0.5
    standin.oauth_late = 1.0
    portals = [do_install(Client(), standin.add_portal()) for _ in range(2)]
    errors: list = []
    for portal in portals:
        _refresh_during_outage(portal, standin, stop, errors)
        start()
    # Both answers came while the database was away.
    assert len(errors) == 2 and all(isinstance(e, DatabaseError) for e in errors)
    stop()
    # Beat during the outage: nothing stored, nothing lost, nothing dropped; both still held.
    assert tokens.store_held() == {"stored": 0, "superseded": 0, "dropped": 0, "waiting": 2}
    assert len(_spool_files()) == 2
    start()
    assert tokens.store_held() == {"stored": 2, "superseded": 0, "dropped": 0, "waiting": 0}
    assert _spool_files() == []
    for portal in portals:
        row = Portal.objects.get(pk=portal.pk)
        assert row.status == Portal.Status.ACTIVE and row.refresh_token in live_refresh_tokens(standin)
        assert row.events.filter(kind=K.TOKEN_REFRESHED, detail__reason="held").exists()


@pytest.mark.django_db
def test_a_held_grant_older_than_what_is_stored_is_dropped_not_applied(installed, standin, empty_spool):
    """A held copy left behind (its removal failed) must never overwrite a newer stored token."""
    portal, _b24 = installed
    first = tokens.refresh_portal(portal, force=True)
    stale, _ = tokens.held(portal.member_id) or (None, None)
    assert stale is None  # stored: let go
    # Put back a copy of an old grant, as if its removal had failed, then let beat's pass see it.
    old_grant = tokens.oauth.TokenGrant(
        access_token="old-access",
        refresh_token="spent-long-ago",
        expires_in=3600,
        member_id=portal.member_id,
        client_endpoint=first.client_endpoint,
        domain=first.domain,
    )
    document = {"grant": dataclasses.asdict(old_grant), "held_at": time.time() - 3600, "portal": portal.pk}
    tokens.HELD.put(portal.member_id, document)
    assert tokens.store_held() == {"stored": 0, "superseded": 1, "dropped": 0, "waiting": 0}
    row = Portal.objects.get(pk=portal.pk)
    assert row.refresh_token == first.refresh_token and row.refresh_token in live_refresh_tokens(standin)
    assert _spool_files() == []


@pytest.mark.django_db
def test_metrics_count_held_tokens(installed, empty_spool, settings, client):
    from tests.b24widget.test_metrics import TOKEN, scrape, value

    settings.METRICS_TOKEN = TOKEN
    portal, _b24 = installed
    assert value(scrape(client), "b24widget_held_tokens") == 0
    grant = tokens.oauth.TokenGrant(
        access_token="a", refresh_token="r", expires_in=3600, member_id=portal.member_id, client_endpoint="", domain=""
    )
    tokens._hold(grant, portal.pk)
    assert value(scrape(client), "b24widget_held_tokens") == 1


@pytest.mark.django_db
def test_key_rotation_re_encrypts_held_tokens(installed, empty_spool, settings):
    portal, _b24 = installed
    grant = tokens.oauth.TokenGrant(
        access_token="a", refresh_token="r", expires_in=3600, member_id=portal.member_id, client_endpoint="", domain=""
    )
    tokens._hold(grant, portal.pk)
    before = _spool_files()[0].read_text()
    new_key = "bmV3LWtleS1mb3ItaGVsZC10b2tlbnMtcm90YXRpb24="
    settings.TOKEN_ENCRYPTION_KEYS = [new_key, *settings.TOKEN_ENCRYPTION_KEYS]
    call_command("rotate_token_keys", stdout=io.StringIO())
    after = _spool_files()[0].read_text()
    assert after != before
    settings.TOKEN_ENCRYPTION_KEYS = [new_key]  # the old keys retired: the held grant still opens
    assert tokens.held(portal.member_id)[0].refresh_token == "r"
