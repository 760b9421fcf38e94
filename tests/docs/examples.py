"""A document's code blocks marked `<!-- example: NAME -->`, run as written (README.md, CONTRIBUTING.md)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_MARKED = re.compile(r"<!-- example: ([a-z ]+) -->\n```python\n(.*?)```", flags=re.S)


def examples(document: str) -> dict[str, str]:
    """NAME -> the code of each marked block of `document` (a path from the project's root)."""
    return dict(_MARKED.findall((ROOT / document).read_text(encoding="utf-8")))


def run(document: str, name: str, **given) -> dict:
    """Execute the block NAME of `document` in a fresh namespace holding `given`; returns the namespace."""
    namespace = {"__name__": f"example_{name.replace(' ', '_')}", **given}
    exec(compile(examples(document)[name], f"{document} example: {name}", "exec"), namespace)  # noqa: S102
    return namespace
