"""Fixtures: a local Bitrix24 stand-in over real HTTP, and portals installed through it."""

import pytest
from django.core.cache import caches
from django.test import Client

from inbox import queue as inbox
from inbox.models import InboxItem
from portals.models import Portal
from sandbox.standin import StandIn
from tests.redis_keys import clear_cache

# The frozen broker's fixtures (`frozen_broker`, `hang_guard`), for the tests that point Celery at one.
pytest_plugins = ["tests.frozen_broker"]


def pytest_collection_modifyitems(config, items):
    """On PostgreSQL, skip what would only repeat the SQLite pass: tests that never use the configured database
    (`own_database`), and, in CI (CI=true, where .ci/run runs the suite on SQLite too), the browser tests, which
    drive the pages; what the engine changes under them (locks, SKIP LOCKED, constraints) has its own tests here."""
    import os

    from django.conf import settings

    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        return
    in_ci = os.environ.get("CI", "").lower() == "true"
    for item in items:
        if item.get_closest_marker("own_database"):
            item.add_marker(pytest.mark.skip(reason="uses its own SQLite, whatever DATABASE_URL says: run on SQLite"))
        elif in_ci and item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.skip(reason="CI runs the browser tests on its SQLite pass"))


CLIENT_ID = "local.test.app"
CLIENT_SECRET = "test-client-secret"
# A second application on the same stand-in: genuine tokens on every portal, but not ours.
OTHER_CLIENT_ID = "local.second.app"
OTHER_CLIENT_SECRET = "other-client-secret"


@pytest.fixture(scope="session", autouse=True)
def _own_broker_queue():
    """At the end of the run, delete this run's own queue (RabbitMQ) or its broker folder (embedded)."""
    yield
    import shutil

    from django.conf import settings

    from b24widget.celery import app

    shutil.rmtree(settings.B24_TOKEN_SPOOL_DIR, ignore_errors=True)  # this run's held tokens (tests/settings.py)
    if settings.CELERY_BROKER_URL.startswith("filesystem:"):
        shutil.rmtree(settings.B24_CELERY_DIR, ignore_errors=True)
        return
    try:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(settings.CELERY_TASK_DEFAULT_QUEUE)
    except Exception:  # the broker went away: nothing of ours is left on it either
        pass


@pytest.fixture(scope="session")
def standin():
    with StandIn(CLIENT_ID, CLIENT_SECRET) as server:
        yield server


@pytest.fixture(scope="session")
def other_app(standin):
    """Another app registered with the stand-in's OAuth server (``portal.issue_tokens(client_id=...)``)."""
    if OTHER_CLIENT_ID in standin.apps:
        return standin.apps[OTHER_CLIENT_ID]
    return standin.add_app(OTHER_CLIENT_ID, OTHER_CLIENT_SECRET)


@pytest.fixture(autouse=True)
def _bitrix24(settings, standin):
    """Every test talks to the stand-in's OAuth server, with an empty cache."""
    settings.B24_OAUTH_URL = standin.oauth_url
    standin.oauth_down = False
    standin.oauth_delay = 0
    standin.oauth_late = 0
    standin.oauth_gate = None
    clear_cache(caches["default"])
    yield
    clear_cache(caches["default"])


@pytest.fixture
def b24(standin):
    """A fresh portal on the stand-in (not yet installed)."""
    return standin.add_portal()


def deliver(client, payload, **post):
    """POST an event to /events/ and, when it was stored, process the inbox right here, as a worker would.

    This in-process processing (inbox.process_pending, no broker) is what the unit tests use; the real
    worker runs in tests/portals/test_worker.py. Returns (response, the stored InboxItem or None).
    """
    response = client.post("/events/", payload, **post)
    item = None
    if response.status_code == 200:
        inbox.process_pending()
        item = InboxItem.objects.get(pk=response.json()["id"])
        if item.state == InboxItem.State.PROCESSING:  # a real worker runs beside (e2e): it has the item
            from tests.workers import wait_for

            wait_for(
                lambda: not InboxItem.objects.filter(pk=item.pk, state=InboxItem.State.PROCESSING).exists(),
                what="the worker to finish the event",
            )
            item.refresh_from_db()
    return response, item


def do_install(client, b24, *, user_id="1", lang="en", event=True):
    """Install as Bitrix24 does: the install POST into the frame, the page's installFinish, then ONAPPINSTALL
    (processed here, see `deliver`).

    settings/app-installation/installation-finish.md: no event is sent before installFinish.
    """
    response = client.post("/install/", b24.install_post(user_id=user_id, lang=lang))
    assert response.status_code == 200, response.content[:500]
    b24.finish_install()  # what the install page's BX24.installFinish() does
    if event:
        answer, item = deliver(client, b24.event_payload("ONAPPINSTALL"))
        assert answer.status_code == 200, answer.content[:500]
        assert item.state == InboxItem.State.DONE, (item.state, item.last_error)
    return Portal.objects.get(member_id=b24.member_id)


def do_uninstall(client, b24, *, clean=False, name="ONAPPUNINSTALL"):
    """Uninstall as Bitrix24 does: the app is removed from the portal, then ONAPPUNINSTALL is sent
    (and processed); returns the response, its stored InboxItem as `response.inbox_item`."""
    b24.uninstall()
    payload = b24.event_payload("ONAPPUNINSTALL", data={"CLEAN": "1" if clean else "0"})
    payload["event"] = name
    response, response.inbox_item = deliver(client, payload)
    return response


@pytest.fixture
def installed(db, client, b24):
    """(stored Portal, stand-in portal) after a complete install."""
    return do_install(client, b24), b24


@pytest.fixture
def frame():
    """What a browser inside the portal's frame is: a cross-site client with CSRF checks on."""
    return Client(enforce_csrf_checks=True)


@pytest.fixture
def frame_500():
    """The same client, but a server error comes back as a 500 response instead of an exception."""
    return Client(enforce_csrf_checks=True, raise_request_exception=False)
