"""axe-core in the browser tests: inject the vendored, pinned axe.min.js into a page or frame, run it, and
fail on any violation (WCAG 2.1 A/AA rules and axe's best practices), naming rule, element and help page."""

import base64
import hashlib
import json
from pathlib import Path

import pytest

VENDOR = Path(__file__).resolve().parent / "vendor" / "axe-core"
AXE_JS = VENDOR / "axe.min.js"
PINNED = json.loads((VENDOR / "package.json").read_text())


def vendored_sri() -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(AXE_JS.read_bytes()).digest()).decode()


def violations(target) -> list:
    """axe's violations on a Playwright Page or Frame (cross-origin frames included)."""
    if not target.evaluate("typeof window.axe !== 'undefined'"):
        target.add_script_tag(path=str(AXE_JS))
    result = target.evaluate("""() => axe.run(document, {
        runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']},
        resultTypes: ['violations']})""")
    return result["violations"]


def describe(found: list) -> str:
    lines = []
    for violation in found:
        lines.append(f"{violation['id']} ({violation['impact']}): {violation['help']} -- {violation['helpUrl']}")
        lines += [
            f"    {node['target']}: {node['failureSummary'].splitlines()[-1].strip()}"
            for node in violation["nodes"][:5]
        ]
    return "\n".join(lines)


def assert_accessible(target, what: str) -> None:
    found = violations(target)
    if found:
        pytest.fail(
            f"axe-core {PINNED['dependencies']['axe-core']} found {len(found)} violation(s) on {what}:\n"
            + describe(found),
            pytrace=False,
        )
