"""``python -m sparse_run.config``: the typed config schema as a Markdown table (key, type, default, meaning).

docs/usage.md embeds this output between the ``schema-table`` markers; a test checks that it is current.
"""
from __future__ import annotations

from .schema import rows


def table() -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, typ, default, meaning in rows():
        cells = [f"`{key}`", typ, default, meaning]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(), end="")
