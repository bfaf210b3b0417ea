"""The scoreboard's text: claim scores (``claims.Score``) as a Markdown table, a side-by-side table of budgets, a
one-line summary, and the machine-readable ``claims.csv`` / ``claims.json``."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from sparse_run.store.files import atomic_write_text

from .claims import VERDICTS, Score

BUDGET_ORDER = ("quick", "paper", "smoke")



def _num(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def ours(s: Score) -> str:
    """'mean [lo, hi]' (no interval for one seed)."""
    if s.mean is None:
        return "—"
    return _num(s.mean) + (f" [{_num(s.lo)}, {_num(s.hi)}]" if s.lo is not None and s.hi is not None else "")


def summary_line(scores: list[Score]) -> str:
    """'k of n claims reproduced at quick (…)' per budget: the scoreboard's one-line summary."""
    parts = []
    found = list(dict.fromkeys(s.budget for s in scores))
    for budget in [b for b in BUDGET_ORDER if b in found] + [b for b in found if b not in BUDGET_ORDER]:
        mine = [s for s in scores if s.budget == budget]
        counts = {v: sum(s.verdict == v for s in mine) for v in VERDICTS}
        rest = ", ".join(f"{counts[v]} {v}" for v in VERDICTS[1:] if counts[v])
        parts.append(f"budget {budget}: {counts['reproduced']} of {len(mine)} claims reproduced" +
                     (f" ({rest})" if rest else ""))
    return "; ".join(parts)


def markdown(scores: list[Score], figure_links: dict[str, str] | None = None) -> str:
    """One row per claim × budget: what was compared, over how many seeds, at what budget, the paper's number,
    ours with its interval, the condition and the verdict (with the reason when it is not *reproduced*)."""
    links = figure_links or {}
    head = ("| experiment | claim (paper) | paper | we measure | budget | n | ours (95 % interval) | "
            "reproduced if | verdict |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for s in scores:
        c = s.claim
        exp = f"[`{c.experiment}`]({links[c.experiment]})" if c.experiment in links else f"`{c.experiment}`"
        paper = (_num(c.paper_value) if c.paper_value is not None else "—") + f" ({c.source})"
        measure = c.measure + (f"; at {s.at}" if s.at else "")
        why = [s.detail] if s.detail and s.verdict != "reproduced" else []
        if c.note and s.verdict in ("not reproduced", "inconclusive"):
            why.append(f"likely: {c.note}")
        verdict_cell = f"**{s.verdict}**" + (f" — {'; '.join(why)}" if why else "")
        interval = f" ({s.interval})" if s.interval and s.lo is not None else ""
        lines.append(f"| {exp} | {c.name}: {c.statement} | {paper} | {measure} | {s.budget} | {s.n} | "
                     f"{ours(s)}{interval} | {c.expect} | {verdict_cell} |")
    return head + "\n".join(line.replace("\n", " ") for line in lines) + "\n"


def write(scores: list[Score], out: Path, figure_links: dict[str, str] | None = None) -> list[Path]:
    """``claims.md`` (the table), ``claims.csv`` and ``claims.json`` (one record per claim × budget) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [s.row() for s in scores]
    paths = [out / "claims.md", out / "claims.csv", out / "claims.json"]
    atomic_write_text(paths[0], f"{summary_line(scores)}\n\n{markdown(scores, figure_links)}")
    atomic_write_text(paths[1], pd.DataFrame(rows).to_csv(index=False))
    atomic_write_text(paths[2], json.dumps(rows, indent=1, default=str) + "\n")
    return paths


def budgets(scores: list[Score]) -> list[str]:
    """The budgets with at least one measured claim, quick first."""
    found = {s.budget for s in scores if s.n > 0}
    return [b for b in BUDGET_ORDER if b in found] + sorted(found - set(BUDGET_ORDER))


def side_by_side(scores: list[Score], links: dict[str, str] | None = None) -> str:
    """One row per claim, one column pair per budget: ours (interval) and the verdict."""
    shown = budgets(scores) or ["quick"]
    head = "| claim | paper | " + " | ".join(f"{b}: ours | {b}: verdict" for b in shown) + " |\n"
    head += "|---|---|" + "---|---|" * len(shown) + "\n"
    rows = []
    seen: dict[tuple[str, str], dict[str, Score]] = {}
    for s in scores:
        seen.setdefault((s.claim.experiment, s.claim.name), {})[s.budget] = s
    for (exp, name), by in seen.items():
        c = next(iter(by.values())).claim
        paper = _num(c.paper_value) if c.paper_value is not None else "—"
        cells = []
        for b in shown:
            s = by.get(b)
            cells += [ours(s) if s else "—", s.verdict if s else "not run"]
        label = f"[`{exp}`]({links[exp]})" if links and exp in links else f"`{exp}`"
        rows.append(f"| {label} {name} | {paper} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"
