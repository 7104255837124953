"""Replace one `## ` section of docs/benchmarks.md, so each benchmark script owns its section."""

from __future__ import annotations

from pathlib import Path

from edgeeff.io import atomic_path, file_lock

BENCHMARKS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def replace_section(heading: str, section: str, path: Path = BENCHMARKS_PAGE) -> None:
    """Put `section` (starting with `heading`) in place of the old one, or append it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path):
        text = path.read_text() if path.exists() else "# Benchmarks\n"
        lines = text.splitlines(keepends=True)
        start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
        if start is None:
            new_text = text.rstrip("\n") + "\n\n" + section
        else:
            end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
            tail = "".join(lines[end:])
            new_text = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
        with atomic_path(path) as tmp:
            tmp.write_text(new_text)
