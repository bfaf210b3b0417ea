"""The scoreboard: each experiment's paper claims (``claims:`` in ``conf/experiment/*.yaml``) scored on our runs.

A claim names two arms (row selectors on a run file, ``summary.csv`` by default), a metric and how to combine
them: ``value`` (A), ``diff`` (A − B) or ``ratio`` (A / B), computed **per seed inside one run** — the arms of a
run share seeds, initialisations and data order, so the pairing removes most seed noise — then averaged over
seeds with a 95 % Student-t interval (``unit: run``: each arm's rows of a run are averaged first and the runs are
the replicates — a Random Search's retrain seeds share its masks); ``corr`` pools A's rows over every run and gives
Pearson's r with a Fisher-z interval. The verdict compares the interval with the claim's condition: *reproduced* (the interval
satisfies it), *not reproduced* (the interval lies outside it), *inconclusive* (it straddles the boundary, or
fewer than ``min_n`` seeds), *not run* (no run of the experiment at that budget, or no row matches an arm).

Only runs made with the claim's own ``overrides`` (besides budget and seed) count: a sweep that changes the
protocol (another hardware target, fewer rounds) never leaks into the paper's claim. When two runs hold the
same seed (a single run and a replicated one), the first run directory in sorted order supplies it.
"""
from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import yaml

from sparse_run.config import ConfigError

from .collect import FINISHED, canonical_override, job_config, job_meta, job_overrides, run_seed

QUANTITIES = ("value", "diff", "ratio", "corr")
UNITS = ("seed", "run")
VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not run")
NEAR_FACTOR = 1.5  # {near: x} matches the closest level within a factor of 1.5 of x
# overrides that do not change what a claim measures (seeds are pooled; the rest are display and placement)
_IGNORED = ("seed=", "budget=", "experiment=", "paths.", "logger", "hydra/", "hydra.", "threads=", "device=",
            "progress=", "cache=", "restart=", "train.replicates=")
_EXPECT = re.compile(r"^\s*(>=|<=|>|<)\s*(-?[\d.eE+-]+)\s*$|^\s*in\s*\[\s*(-?[\d.eE+-]+)\s*,\s*(-?[\d.eE+-]+)\s*\]\s*$")


# ---------------------------------------------------------------------------------------------
# Claims: loading and checking
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    """One checked claim of one experiment (the fields of ``config.schema.ClaimConfig``)."""

    experiment: str
    name: str
    statement: str
    source: str
    measure: str
    expect: str
    quantity: str = "diff"
    metric: str = "test_acc_at_early_stop"
    metric_b: str | None = None
    table: str = "summary.csv"
    a: dict[str, Any] = field(default_factory=dict)
    b: dict[str, Any] = field(default_factory=dict)
    x: str | None = None
    scale: float = 1.0
    paper_value: float | None = None
    overrides: tuple[str, ...] = ()
    unit: str = "seed"
    min_n: int = 3
    note: str | None = None


def parse_expect(expect: str, where: str = "expect") -> tuple[str, float, float]:
    """'> 0' → ('>', 0, 0); 'in [a, b]' → ('in', a, b); anything else is a one-line ConfigError."""
    m = _EXPECT.match(str(expect))
    if not m:
        raise ConfigError(where, f"got {expect!r}; allowed: '> x', '>= x', '< x', '<= x' or 'in [a, b]'")
    if m.group(1):
        return m.group(1), float(m.group(2)), float(m.group(2))
    lo, hi = float(m.group(3)), float(m.group(4))
    if lo > hi:
        raise ConfigError(where, f"got {expect!r}; the interval's lower end is above its upper end")
    return "in", lo, hi


def make_claim(experiment: str, raw: dict[str, Any], where: str) -> Claim:
    """A claim from its YAML mapping, typed by the config schema and checked (one-line ``ConfigError``)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from sparse_run.config.schema import ClaimConfig

    try:
        node = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(ClaimConfig), raw), throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}.{getattr(e, 'full_key', '') or '?'}", str(e).splitlines()[0]) from None
    assert isinstance(node, dict)
    if node["quantity"] not in QUANTITIES:
        raise ConfigError(f"{where}.quantity", f"got {node['quantity']!r}; allowed: {', '.join(QUANTITIES)}")
    if node["unit"] not in UNITS or (node["unit"] == "run" and node["quantity"] == "corr"):
        raise ConfigError(f"{where}.unit", f"got {node['unit']!r}; allowed: {', '.join(UNITS)} (run: not with corr)")
    if not node["a"]:
        raise ConfigError(f"{where}.a", "empty; name arm A's rows (e.g. {variant: ticket})")
    if node["quantity"] in ("diff", "ratio") and not node["b"]:
        raise ConfigError(f"{where}.b", f"empty; quantity {node['quantity']} compares arm A with arm B")
    if node["quantity"] == "corr" and not node["x"]:
        raise ConfigError(f"{where}.x", "empty; quantity corr correlates column x with the metric")
    if Path(node["table"]).name != node["table"] or node["table"].startswith("."):
        raise ConfigError(f"{where}.table", f"got {node['table']!r}; a file name in the run directory "
                                            "(summary.csv, kernel.csv, hardware.csv ...)")
    parse_expect(node["expect"], f"{where}.expect")
    node["overrides"] = tuple(sorted(canonical_override(o) for o in node["overrides"]))
    return Claim(experiment=experiment, **node)


def load_claims(experiments: Iterable[str] | None = None, conf: Path | None = None) -> list[Claim]:
    """Every claim of the experiment configs (``conf/experiment/*.yaml``), in file then declaration order."""
    folder = Path(conf) if conf else Path(str(resources.files("sparse_run.conf").joinpath("experiment")))
    out: list[Claim] = []
    for f in sorted(folder.glob("*.yaml")):
        if experiments is not None and f.stem not in experiments:
            continue
        try:
            doc = yaml.safe_load(f.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(str(f), f"not valid YAML ({str(e).splitlines()[0]})") from None
        name = doc.get("name", f.stem)
        seen: set[str] = set()
        for i, raw in enumerate(doc.get("claims") or []):
            claim = make_claim(name, raw, f"{f.name}: claims[{i}]")
            if claim.name in seen:
                raise ConfigError(f"{f.name}: claims[{i}].name", f"{claim.name!r} is used twice in this experiment")
            seen.add(claim.name)
            out.append(claim)
    return out


# ---------------------------------------------------------------------------------------------
# Rows: which runs count, which rows are arm A / B
# ---------------------------------------------------------------------------------------------

def _overrides(run_dir: Path) -> tuple[str, ...]:
    """The run's command-line overrides that change its protocol (budget, seed, placement left out)."""
    return tuple(sorted(canonical_override(o) for o in job_overrides(Path(run_dir), _IGNORED)))


def _matches(df: pd.DataFrame, sel: dict[str, Any]) -> pd.DataFrame:
    """The rows of ``df`` selected by ``sel`` (exact values, string globs, ``{near: x}`` = the closest level)."""
    keep = pd.Series(True, index=df.index)
    near: dict[str, float] = {}
    for col, want in sel.items():
        if col not in df:
            return df.iloc[0:0]
        if isinstance(want, dict):
            near[col] = float(want["near"])
        elif isinstance(want, str):
            keep &= df[col].map(lambda v, w=want: isinstance(v, str) and fnmatch.fnmatchcase(v, w))
        elif isinstance(want, (int, float)) and not isinstance(want, bool):
            keep &= pd.to_numeric(df[col], errors="coerce").sub(float(want)).abs() < 1e-9
        else:
            keep &= df[col] == want
    out = df[keep]
    for col, x in near.items():
        values = pd.to_numeric(out[col], errors="coerce")
        ok = values > 0
        if not ok.any() or x <= 0:
            return out.iloc[0:0]
        dist = (values[ok] / x).map(lambda r: abs(math.log(r)))
        if dist.min() > math.log(NEAR_FACTOR):
            return out.iloc[0:0]
        out = out[ok & (dist.reindex(out.index) - dist.min()).abs().lt(1e-9)]
    return out


def _read(run_dir: Path, table: str) -> pd.DataFrame | None:
    f = Path(run_dir) / table
    try:
        return pd.read_csv(f) if f.exists() else None
    except (ValueError, OSError, UnicodeDecodeError):
        return None


def _select(df: pd.DataFrame, sel: dict[str, Any]) -> pd.DataFrame:
    rows = _matches(df, sel)
    return rows[rows.status.isin(FINISHED)] if "status" in rows else rows


# ---------------------------------------------------------------------------------------------
# Statistics and verdicts
# ---------------------------------------------------------------------------------------------

def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean (n ≥ 2)."""
    from scipy import stats

    s = pd.Series(values, dtype=float)
    half = stats.t.ppf(0.5 + level / 2, len(s) - 1) * s.std(ddof=1) / math.sqrt(len(s))
    return float(s.mean() - half), float(s.mean() + half)


def fisher_interval(r: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Interval of Pearson's r through Fisher's z (n ≥ 4)."""
    from scipy import stats

    z, half = math.atanh(max(min(r, 1 - 1e-12), -1 + 1e-12)), stats.norm.ppf(0.5 + level / 2) / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)


def verdict(expect: str, lo: float | None, hi: float | None) -> str:
    """Where the interval [lo, hi] lies against the condition; no interval → inconclusive."""
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return "inconclusive"
    op, a, b = parse_expect(expect)
    if op == "in":
        return "reproduced" if a <= lo and hi <= b else "not reproduced" if hi < a or lo > b else "inconclusive"
    inside = {">": lo > a, ">=": lo >= a, "<": hi < a, "<=": hi <= a}[op]
    outside = {">": hi <= a, ">=": hi < a, "<": lo >= a, "<=": lo > a}[op]
    return "reproduced" if inside else "not reproduced" if outside else "inconclusive"


@dataclass
class Score:
    """A claim's result at one budget (one scoreboard row)."""

    claim: Claim
    budget: str
    n: int = 0
    mean: float | None = None
    lo: float | None = None
    hi: float | None = None
    interval: str = ""
    verdict: str = "not run"
    seeds: list[int] = field(default_factory=list)
    per_seed: list[float] = field(default_factory=list)
    at: str = ""            # the level the selectors landed on (e.g. "13.52 % weights")
    detail: str = ""        # why not run / inconclusive, ratio of means, …
    runs: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        c = self.claim
        return {"experiment": c.experiment, "claim": c.name, "budget": self.budget, "statement": c.statement,
                "source": c.source, "paper_value": c.paper_value, "measure": c.measure, "at": self.at,
                "quantity": c.quantity, "metric": c.metric, "expect": c.expect, "n": self.n,
                "seeds": " ".join(str(s) for s in self.seeds), "mean": self.mean, "ci_lo": self.lo, "ci_hi": self.hi,
                "interval": self.interval, "verdict": self.verdict, "detail": self.detail,
                "per_seed": " ".join(f"{v:.6g}" for v in self.per_seed), "note": c.note or "",
                "runs": " ".join(self.runs)}


def _show(sel: dict[str, Any]) -> str:
    return ", ".join(f"{k}≈{v['near']}" if isinstance(v, dict) else f"{k}={v}" for k, v in sel.items())


def _levels(rows: pd.DataFrame) -> str:
    if "density" in rows and rows.density.notna().any() and rows.density.nunique() >= 1:
        d = pd.to_numeric(rows.density, errors="coerce").dropna()
        return f"{100 * d.mean():.3g} % weights" if len(d) else ""
    return ""


def _paired(claim: Claim, runs: list[Path]) -> Score:
    """value / diff / ratio: one number per seed from arms of the same run and seed."""
    score = Score(claim, "")
    got: dict[int, float] = {}
    extra: dict[int, tuple[float, float]] = {}
    at: list[str] = []
    problems: list[str] = []
    for d in runs:
        df = _read(d, claim.table)
        if df is None or claim.metric not in df:
            problems.append(f"no {claim.table}" if df is None else f"no column {claim.metric} in {claim.table}")
            continue
        by_run = claim.unit == "run"
        seeds = sorted(pd.to_numeric(df["seed"], errors="coerce").dropna().astype(int).unique()) if "seed" in df \
            and not by_run else [None]
        for seed in seeds:
            part = df if seed is None else df[pd.to_numeric(df["seed"], errors="coerce") == seed]
            key = run_seed(d) if by_run else -1 if seed is None else int(seed)
            if key in got:
                continue
            a = _select(part, claim.a)
            b = _select(part, claim.b) if claim.quantity in ("diff", "ratio") else a
            if by_run and len(a) and len(b):  # one value per run: each arm's rows (e.g. its retrain seeds) averaged
                a = a[[claim.metric]].mean().to_frame().T.assign(density=a.density.mean() if "density" in a else None)
                col = claim.metric_b or claim.metric
                b = b[[col]].mean().to_frame().T if col in b else b.iloc[:1]
            if len(a) != 1 or len(b) != 1:
                arm, sel, k = ("A", claim.a, len(a)) if len(a) != 1 else ("B", claim.b, len(b))
                problems.append(f"arm {arm} ({_show(sel)}) matches {k} rows")
                continue
            col_b = claim.metric_b or claim.metric if claim.quantity in ("diff", "ratio") else claim.metric
            if col_b not in b:
                problems.append(f"no column {col_b} in {claim.table}")
                continue
            va, vb = float(a[claim.metric].iloc[0]), float(b[col_b].iloc[0])
            if math.isnan(va) or math.isnan(vb):
                problems.append(f"{claim.metric} is empty")
                continue
            if claim.quantity == "ratio" and vb == 0:
                problems.append(f"arm B's {claim.metric} is 0")
                continue
            value = va if claim.quantity == "value" else va - vb if claim.quantity == "diff" else va / vb
            got[key] = value * claim.scale
            extra[key] = (va, vb)
            at.append(_levels(a))
            if len(a) == 1 and claim.quantity == "value" and f"{claim.metric}_lo" in a and f"{claim.metric}_hi" in a:
                score.lo, score.hi = float(a[f"{claim.metric}_lo"].iloc[0]), float(a[f"{claim.metric}_hi"].iloc[0])
                score.interval = "bootstrap (in the run's file)"
            if str(d) not in score.runs:
                score.runs.append(str(d))
    score.seeds = [k for k in got if k >= 0]
    score.per_seed = list(got.values())
    score.n = len(got)
    score.at = next((x for x in at if x), "")
    if not got:
        score.detail = "; ".join(dict.fromkeys(problems))[:300] or "no matching rows"
        return score
    score.mean = float(pd.Series(score.per_seed).mean())
    if score.n >= 2:
        score.lo, score.hi = t_interval(score.per_seed)
        score.interval = "t, 95 %"
    elif not score.interval:
        score.lo = score.hi = None
    if claim.quantity == "ratio" and score.n >= 2:
        num = sum(v[0] for v in extra.values())
        den = sum(v[1] for v in extra.values())
        score.detail = f"ratio of means {num / den * claim.scale:.3g}" if den else ""
    if problems:
        score.detail = "; ".join(filter(None, [score.detail, *dict.fromkeys(problems)]))[:300]
    return score


def _corr(claim: Claim, runs: list[Path]) -> Score:
    """corr: Pearson's r of column x and the metric over arm A's rows of every run."""
    from scipy import stats

    score = Score(claim, "", interval="Fisher z, 95 %")
    parts = []
    for d in runs:
        df = _read(d, claim.table)
        if df is not None and {claim.x, claim.metric, "seed"} <= set(df.columns):
            rows = _select(df, claim.a)
            if len(rows):
                parts.append(rows)
                score.runs.append(str(d))
    rows = pd.concat(parts) if parts else pd.DataFrame()
    if len(rows):
        rows = rows[[claim.x, claim.metric, "seed"]].apply(pd.to_numeric, errors="coerce").dropna()
    score.n = len(rows)
    if score.n < 4:
        score.detail = f"{score.n} points" if score.n else "no matching rows"
        score.interval = ""
        return score
    r = float(stats.pearsonr(rows[claim.x], rows[claim.metric])[0]) if rows[claim.x].nunique() > 1 else float("nan")
    score.seeds = sorted(rows.seed.astype(int).unique().tolist())
    score.mean = r * claim.scale
    if not math.isnan(r):
        score.lo, score.hi = (v * claim.scale for v in fisher_interval(r, score.n))
    score.detail = f"n = {score.n} graphs/rows over {len(score.seeds)} seed(s)"
    return score


def score_claim(claim: Claim, runs: list[Path], budget: str) -> Score:
    """The claim on the given runs (all of one experiment, budget and protocol)."""
    score = (_corr if claim.quantity == "corr" else _paired)(claim, runs)
    score.budget = budget
    if score.n == 0:
        score.verdict = "not run"
    elif score.n < claim.min_n:
        score.verdict = "inconclusive"
        score.detail = "; ".join(filter(None, [f"n = {score.n} < {claim.min_n}", score.detail]))
    else:
        score.verdict = verdict(claim.expect, score.lo, score.hi)
    return score


def _runs(root: Path) -> pd.DataFrame:
    """One row per finished run under ``root`` (``run.json`` status complete): experiment, budget, protocol
    overrides, directory. Studies whose summary is empty (the kernel study) count too."""
    rows = []
    for f in sorted(Path(root).rglob("run.json")):
        cfg = job_config(f.parent)
        if job_meta(f.parent).get("status") != "complete" or not cfg:
            continue
        rows.append({"experiment": cfg.get("name"), "budget": (cfg.get("budget") or {}).get("name"),
                     "overrides": _overrides(f.parent), "run_dir": str(f.parent)})
    return pd.DataFrame(rows, columns=["experiment", "budget", "overrides", "run_dir"])


def evaluate(root: Path, claims: list[Claim] | None = None, budgets: Iterable[str] = ()) -> list[Score]:
    """Every claim at each of ``budgets`` and at every budget any run under ``root`` used, run or not (so each
    budget's summary counts every claim); with no runs and no budgets, one *not run* row per claim."""
    claims = load_claims() if claims is None else claims
    runs = _runs(Path(root))
    shown = list(dict.fromkeys([*budgets, *sorted(runs.budget.dropna().astype(str).unique())])) or ["—"]
    out: list[Score] = []
    for claim in claims:
        mine = runs[(runs.experiment == claim.experiment) & runs.overrides.map(lambda o, c=claim: o == c.overrides)]
        for budget in shown:
            dirs = [Path(d) for d in mine[mine.budget.astype(str) == budget].run_dir]
            score = score_claim(claim, dirs, budget)
            if not dirs:
                score.detail = f"no finished run of {claim.experiment} at budget {budget}" + (
                    f" with {', '.join(claim.overrides)}" if claim.overrides else "")
            out.append(score)
    return out
