"""The gallery page (``results/README.md``): the claims scoreboard, then every paper figure with its caption,
the small CSV behind it and how it was made (machine, threads, torch, commit, date, wall time).

``make figures`` (``scripts/make_figures.py``) runs the sweeps of ``conf/figures.yaml`` and calls ``build``;
this module only reads result files and writes the page, the PNGs and the CSVs."""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sparse_run.store.files import atomic_write_text

from . import scoreboard
from .claims import Score
from .collect import canonical_override
from .scoreboard import BUDGET_ORDER


@dataclass
class Entry:
    """One ``conf/figures.yaml`` entry: a sweep of one experiment with its seeds and overrides."""

    name: str
    experiment: str
    paper: str = ""
    seeds: list[int] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)


def entries(spec: dict[str, Any]) -> list[Entry]:
    """The entries of a parsed ``figures.yaml``."""
    return [Entry(name=k, experiment=v["experiment"], paper=v.get("paper", ""),
                  seeds=list(v.get("seeds", spec.get("seeds", [0]))), overrides=list(v.get("overrides", [])))
            for k, v in spec["figures"].items()]


def sweep_state(root: Path, budget: str) -> Path:
    """The file recording a finished sweep of an entry at a budget (command, wall time, environment)."""
    return root / f"sweep-{budget}.json"


def read_state(root: Path, budget: str) -> dict[str, Any]:
    f = sweep_state(root, budget)
    try:
        out = json.loads(f.read_text()) if f.exists() else {}
    except (ValueError, OSError):
        return {}
    return out if isinstance(out, dict) else {}


def _clean(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label.replace("=", "")).strip("_")


def _run_label(dir_name: str, budget: str, fixed: list[str]) -> str:
    """A run directory's name minus the budget and the entry's fixed overrides, keys shortened:
    ``budget=quick,hardware=cpu_sparse,method.schedule.rounds=12,seed=0`` → ``rounds12_seed0``."""
    parts = [p for p in dir_name.split(",") if p and p != f"budget={budget}" and p not in fixed]
    return _clean("_".join(p.split("=", 1)[0].rsplit(".", 1)[-1] + p.split("=", 1)[-1] if "=" in p else p
                           for p in parts))


def sweep_figures(sweep: Path, budget: str, fixed: list[str] = ()) -> list[tuple[Path, str]]:  # type: ignore[assignment]
    """(source PNG, gallery file name) for one sweep at one budget: the sweep report's aggregate figures, plus
    per-run figures of a kind the aggregate does not draw (N:M SAD, hardware timing per run)."""
    out: list[tuple[Path, str]] = []
    kinds: set[str] = set()
    tag = f"_{budget}_"
    for f in sorted((sweep / "report" / "figures").glob("*.png")):
        if tag in f.name:
            kind = f.name.split(tag, 1)[1]
            kinds.add(kind)
            out.append((f, f"{budget}_{kind}"))
        elif f.name.startswith("speedup_vs_sparsity"):  # the hardware report's aggregate (no budget in its name)
            kinds.add(f.name)
            out.append((f, f"{budget}_{f.name}"))
    for f in sorted(sweep.glob(f"budget={budget}*/figures/*.png")):
        if f.name in kinds or f.name == "accuracy_vs_density.png" or f.name.startswith(("dst_", "rps_", "rs_", "moe_", "lazy_")):
            continue  # drawn by the aggregate (DST: per configuration group, or the ΔT figure across groups; RPS, RS)
        label = _run_label(f.parent.parent.name, budget, list(fixed))
        out.append((f, f"{budget}_{label}_{f.name}" if label else f"{budget}_{f.name}"))
    return out


def _runs_csv(sweep: Path, budget: str, results: Path) -> pd.DataFrame | None:
    f = sweep / "report" / "all_runs.csv"
    if not f.exists():
        return None
    df = pd.read_csv(f)
    df = df[df.budget.astype(str) == budget] if "budget" in df else df
    if "run_dir" in df:
        df["run_dir"] = df.run_dir.map(lambda d: _relative(Path(d), results))
    return df


def _relative(p: Path, base: Path) -> str:
    try:
        return str(p.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(p)


def _seconds(meta: dict[str, Any]) -> float:
    import datetime as dt

    try:
        a, b = (dt.datetime.fromisoformat(str(meta[k])) for k in ("started", "finished"))
    except (KeyError, ValueError):
        return 0.0
    return max((b - a).total_seconds(), 0.0)


def _provenance(root: Path, budget: str) -> dict[str, Any]:
    """From the runs' ``run.json`` (and the sweep's state file): environment, commits, dates, and the run
    time summed over the runs (started → finished; a resumed run counts from its resumption)."""
    state = read_state(root, budget)
    metas = []
    for f in sorted(root.glob(f"*/budget={budget}*/run.json")):
        try:
            metas.append(json.loads(f.read_text()))
        except (ValueError, OSError):
            continue
    env = next((m.get("environment") for m in metas if m.get("environment")), {}) or {}
    commits = sorted({str(m.get("commit")) for m in metas if m.get("commit")})
    finished = sorted(str(m.get("finished")) for m in metas if m.get("finished"))
    return {"runs": len(metas), "cpu": env.get("cpu", "?"), "threads": env.get("threads", "?"),
            "torch": env.get("torch", "?"), "commits": commits, "finished": finished[-1] if finished else "",
            "wall_s": sum(_seconds(m) for m in metas), "command": state.get("command", ""),
            "cores": state.get("cores")}


def _paper_not_run(quick_runs: pd.DataFrame | None, quick_wall_s: float) -> str:
    """The line saying the paper's protocol was not run, with a lower bound on its cost on this machine when the
    entry trains (the paper budget trains 1 / steps_scale times quick's steps per arm, with at least as many arms)."""
    import yaml
    from importlib import resources

    scale = yaml.safe_load(resources.files("sparse_run.conf").joinpath("budget/quick.yaml").read_text())["steps_scale"]
    steps = pd.to_numeric(quick_runs.steps, errors="coerce") if quick_runs is not None and "steps" in quick_runs \
        else pd.Series(dtype=float)
    if not steps.fillna(0).gt(0).any():
        return "*budget=paper not run here.*\n"
    return f"*budget=paper (the paper's protocol) not run here: it trains {1 / scale:.0f}× quick's steps per arm, " \
           f"at least {quick_wall_s / scale / 60:.0f} min of this machine for these seeds.*\n"


def _we_see(scores: list[Score], experiment: str, budget: str, overrides: list[str] = ()) -> str:
    """The verdicts of the claims scored on this entry's runs: its experiment, budget and exactly its overrides."""
    own = tuple(sorted(canonical_override(o) for o in overrides))
    mine = [s for s in scores if s.claim.experiment == experiment and s.budget == budget and s.claim.overrides == own]
    if not mine:
        return "no claims are scored on these runs (a figure to read, not a verdict)"
    return "; ".join(f"{s.claim.name} **{s.verdict}** ({scoreboard.ours(s)}, n = {s.n})" for s in mine)


def build(results: Path, items: list[Entry], scores: list[Score], budget: str) -> Path:
    """Write ``results/README.md``, ``results/figures/*.png|csv`` and ``results/claims.{md,csv,json}``."""
    figures = results / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    links: dict[str, str] = {}
    sections: list[str] = []
    written: set[Path] = set()
    for e in items:
        root = results / "paper" / e.name
        sweep = root / e.experiment
        links.setdefault(e.experiment, f"#{e.name}")
        parts = [f"### {e.name}\n", f"`{e.experiment}` · seeds {', '.join(map(str, e.seeds))}"
                 + (f" · `{' '.join(e.overrides)}`" if e.overrides else "") + "\n"]
        budgets = [b for b in BUDGET_ORDER if any(sweep.glob(f"budget={b}*/run.json"))]
        if not budgets:
            parts.append("*Not run yet.*\n")
        provs = {b: _provenance(root, b) for b in budgets}
        tables = {b: _runs_csv(sweep, b, results) for b in budgets}
        if "quick" in budgets and "paper" not in budgets:
            parts.append(_paper_not_run(tables["quick"], provs["quick"]["wall_s"]))
        for b in budgets:
            prov = provs[b]
            wall = f"run time {prov['wall_s'] / 60:.1f} min (summed over the runs)"
            parts.append(f"**{b}** — Paper: {e.paper}.  \nWe see: {_we_see(scores, e.experiment, b, e.overrides)}.\n")
            parts.append(f"<sub>{prov['runs']} runs · {prov['cpu']}, {prov['threads']} threads"
                         + (f" of {prov['cores']} cores" if prov["cores"] else "")
                         + f" · torch {prov['torch']} · commit {', '.join(prov['commits']) or '?'} · "
                         f"finished {prov['finished'] or '?'} · {wall}</sub>\n")
            for src, name in sweep_figures(sweep, b, e.overrides):
                target = figures / f"{e.name}_{name}"
                shutil.copy2(src, target)
                written.add(target)
                parts.append(f"![{e.name} {b}](figures/{target.name})\n")
            table = tables[b]
            if table is not None and len(table):
                csv = figures / f"{e.name}_{b}.csv"
                atomic_write_text(csv, table.to_csv(index=False))
                written.add(csv)
                parts.append(f"Data: [{csv.name}](figures/{csv.name}) (every summary row of the sweep)\n")
        sections.append("\n".join(parts))
    for stale in figures.iterdir():  # the folder is the gallery's own: what this build did not write goes
        if stale.is_file() and stale not in written:
            stale.unlink()
    scoreboard.write(scores, results, links)
    smoke = budget == "smoke" or scoreboard.budgets(scores) == ["smoke"]
    text = "\n".join([
        "# Reproduction scoreboard and paper figures",
        "",
        "Generated by `make figures` (`scripts/make_figures.py`) from the runs under `results/paper/`; "
        "nothing here is typed by hand. Each claim is scored per seed inside one run (arms share seeds, θ0 "
        "and data order), averaged over seeds with a 95 % Student-t interval (correlations: Fisher z); "
        "*reproduced* = the whole interval meets the condition, *not reproduced* = none of it does, "
        "*inconclusive* = it straddles the condition or too few seeds, *not run* = no run at that budget. "
        "Definitions: [docs/results.md](../docs/results.md#claims-and-the-scoreboard).",
        "",
        *(["> **budget=smoke: plumbing check only — these numbers and verdicts mean nothing.**", ""] if smoke else []),
        f"**{scoreboard.summary_line(scores)}**",
        "",
        "## Scoreboard",
        "",
        scoreboard.side_by_side(scores, links),
        "Every row in full (paper statement and source, what we compute, level reached, interval, reasons): "
        "[claims.md](claims.md) · machine-readable: [claims.csv](claims.csv), [claims.json](claims.json).",
        "",
        "## Figures",
        "",
        *sections,
    ])
    page = results / "README.md"
    atomic_write_text(page, text + "\n")
    return page
