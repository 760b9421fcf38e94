"""The vendored axe-core is the pinned npm release, unmodified (its published SRI hash)."""

import pytest

from tests.e2e.axe import AXE_JS, PINNED, vendored_sri

pytestmark = pytest.mark.browser  # every test under tests/e2e


def test_the_vendored_axe_core_is_the_pinned_release():
    version = PINNED["dependencies"]["axe-core"]
    assert AXE_JS.read_text(encoding="utf-8").startswith(f"/*! axe v{version}\n")
    assert vendored_sri() == PINNED["sri"]  # package/sri-history.json of that release
