"""The docs' examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _block_after(page: str, heading: str) -> str:
    text = (DOCS / page).read_text(encoding="utf-8")
    section = text.split(f"## {heading}", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, f"no example under {heading!r} in {page}"
    return match.group(1)


def test_the_sync_testing_example_runs_as_written() -> None:
    namespace: dict[str, object] = {}
    exec(_block_after("sync.md", "Testing blocking code"), namespace)
    test = namespace["test_my_script"]
    assert callable(test)
    test()
