"""The docs stay navigable: every internal link and #anchor resolves, the README stays short and indexes
every page under docs/ (issue 13, item 6). Pure file checks, milliseconds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
CODE = re.compile(r"`[^`\n]*`")


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (``-`` and ``_`` kept), spaces → ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6} +(.*?) *#*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    text = CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # skip http:, mailto:


def broken_links(files: list[Path], root: Path = REPO) -> list[str]:
    bad = []
    for f in files:
        for target in links(f):
            file_part, _, anchor = target.partition("#")
            dest = (f.parent / file_part).resolve() if file_part else f
            where = f"{f.relative_to(root)}: ({target})"
            if not dest.exists():
                bad.append(f"{where} no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{where} no heading with anchor #{anchor}")
    return bad


def test_docs_internal_links_and_anchors_resolve():
    assert broken_links(doc_files()) == []


def test_link_checker_reports_a_missing_file_and_a_missing_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## A `code` heading\n\n[ok](#a-code-heading) [ok](#title) [bad](#nope) "
        "[gone](other.md) `[not a link](x.md)` [web](https://example.org)\n",
        encoding="utf-8",
    )
    assert broken_links([page], root=tmp_path) == [
        "page.md: (#nope) no heading with anchor #nope",
        "page.md: (other.md) no such file",
    ]


def test_readme_is_short_and_indexes_every_docs_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200, (
        "README.md should stay a newcomer's page (≤ ~200 lines); move detail to docs/"
    )
    assert "make test" in readme  # CI's command, named in the README
    pages = sorted((REPO / "docs").rglob("*.md"))
    assert pages, "docs/ is missing"
    linked = {(REPO / t.partition("#")[0]).resolve() for t in links(REPO / "README.md")}
    assert [str(p.relative_to(REPO)) for p in pages if p.resolve() not in linked] == []


@pytest.mark.parametrize(
    "page",
    [
        "usage",
        "methods",
        "results",
        "hardware",
        "performance",
        "reliability",
        "data",
        "models",
        "architecture",
        "extending",
        "papers/lottery",
        "papers/gmp",
        "papers/pai",
        "papers/nm",
        "papers/kernels",
        "papers/rnn",
    ],
)
def test_docs_page_exists(page):
    assert (REPO / "docs" / f"{page}.md").is_file()
