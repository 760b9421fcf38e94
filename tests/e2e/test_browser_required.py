"""The browser tests are part of the suite: without Chromium they fail, loudly, instead of skipping."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# The check runs the browser tests in a subprocess on SQLite, whatever DATABASE_URL says: once, on SQLite.
# browser: every test under tests/e2e; slow: a pytest subprocess.
pytestmark = [pytest.mark.own_database, pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_browser_tests_fail_when_chromium_is_missing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}  # SQLite: never touch the caller's database
    env.update({"B24_TEST_CHROMIUM": str(tmp_path / "no-chromium"), "B24_TEST_RUN_ID": "chromium-missing-check"})
    answer = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "tests/e2e/test_widget_browser.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.returncode == 1, answer.stdout[-3000:]
    summary = answer.stdout.strip().splitlines()[-1]
    # Every test of the file fails (not skipped, not an error in a fixture): as many as the file defines.
    tests = len(re.findall(r"^def test_", (ROOT / "tests/e2e/test_widget_browser.py").read_text(), re.MULTILINE))
    assert tests >= 4
    assert re.fullmatch(rf"{tests} failed in [0-9.]+s( \([0-9:]+\))?", summary), summary
    assert f"Chromium not found at {tmp_path / 'no-chromium'}" in answer.stdout
    assert "apt-get install -y chromium" in answer.stdout
