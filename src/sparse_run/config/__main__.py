"""``python -m sparse_run.config [--update FILE]``: the typed config schema as a Markdown table (key, type,
default, meaning); ``--update`` rewrites the table between FILE's ``schema-table`` markers (docs/usage.md; a test
checks that it is current).
"""
from __future__ import annotations

import sys
from pathlib import Path

from .schema import rows

START, END = "<!-- schema-table:start -->\n", "<!-- schema-table:end -->"


def table() -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, typ, default, meaning in rows():
        cells = [f"`{key}`", typ, default, meaning]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def update(path: Path) -> None:
    text = path.read_text()
    head, rest = text.split(START, 1)
    path.write_text(head + START + table() + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--update"] and len(sys.argv) == 3:
        update(Path(sys.argv[2]))
    else:
        print(table(), end="")
