"""Browser fixtures: Debian's Chromium driven by Playwright (no browser downloads), the sandbox pages
in front of the live app, and screenshots under test-artifacts/screenshots/<run id>/."""

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox.pages import SandboxPages
from sandbox.standin import Portal as StandInPortal
from sandbox.standin import StandIn
from tests.conftest import CLIENT_ID, CLIENT_SECRET

CHROMIUM = os.environ.get("B24_TEST_CHROMIUM", "/usr/bin/chromium")
# The network is closed: without these Chromium keeps trying to reach Google's services.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
RUN_ID = os.environ.get("B24_TEST_RUN_ID") or f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots" / RUN_ID


class MissingBrowser:
    """Stands in for the browser when it cannot start: the first use fails the test with the reason."""

    def __init__(self, reason: str):
        self.reason = reason

    def __getattr__(self, name):
        pytest.fail(self.reason, pytrace=False)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per module. Missing Chromium fails the tests (never skips them)."""
    if not os.access(CHROMIUM, os.X_OK):
        yield MissingBrowser(
            f"Chromium not found at {CHROMIUM}: the browser tests need Debian's chromium package "
            "(apt-get install -y chromium; see README and .ci/run). They are part of the suite, not optional."
        )
        return
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        yield MissingBrowser("Playwright is not installed: .venv/bin/pip install -r requirements-dev.txt")
        return
    # Playwright's sync API keeps an asyncio loop on this thread, which Django's ORM guard takes for
    # async code; the test code here is plain synchronous code, so lift the guard while the browser lives.
    guard = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()
    finally:
        if guard is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = guard


@pytest.fixture(scope="module")
def bitrix24(live_server):
    """The sandbox as a person sees it: the stand-in with its Contact Center pages, pointed at the live app."""
    with StandIn(CLIENT_ID, CLIENT_SECRET) as standin:
        pages = SandboxPages(standin, app_url=live_server.url).attach()
        yield standin, pages
        assert standin.errors == []


@dataclass
class Sandbox:
    standin: StandIn
    pages: SandboxPages
    portal: StandInPortal
    app_url: str

    @property
    def url(self) -> str:
        """The portal's Contact Center page."""
        return self.pages.portal_url(self.portal)

    @property
    def portal_origin(self) -> str:
        return f"http://{self.portal.domain}"


@pytest.fixture
def sandbox(bitrix24, settings, live_server, tmp_path):
    """A fresh sandbox portal; the app's settings point at the stand-in, as `manage.py sandbox` sets them,
    and a Celery worker runs beside the app (it applies the events the portal delivers)."""
    from tests.workers import Worker

    standin, pages = bitrix24
    settings.B24_OAUTH_URL = standin.oauth_url
    settings.B24_APP_URL = live_server.url
    # The app and the portal must be different origins, as in real life.
    assert live_server.url.startswith("http://localhost:")
    worker = Worker(standin, tmp_path, "e2e", env={"B24_APP_URL": live_server.url}).wait_ready()
    yield Sandbox(standin=standin, pages=pages, portal=standin.add_portal(), app_url=live_server.url)
    worker.stop()


@pytest.fixture
def shoot(request):
    """shoot(page, name): save a screenshot as <run folder>/<test name>/<name>.png."""
    folder = SCREENSHOTS / request.node.name

    def take(page, name):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        page.screenshot(path=str(path))
        return path

    return take


def pytest_terminal_summary(terminalreporter):
    if SCREENSHOTS.exists():
        terminalreporter.write_line(f"browser screenshots: {SCREENSHOTS.relative_to(ROOT)}")
