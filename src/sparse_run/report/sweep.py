"""``sparse-run-report``: aggregate every run under a run, sweep or results root into ``<dir>/report/``
(all_runs.csv, table.txt, hardware_all.csv, figures/), and the Hydra callback that does it when a sweep ends."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback

from sparse_run.store.files import atomic_write_text
from sparse_run.store.schema import SUMMARY_COLUMNS, rows_to_csv

from . import jobs
from .collect import FINISHED, _grouped, collect, counted, job_dirs, job_meta
from .dst import figures as dst_figures
from .dst import is_dst
from .experts import figures as expert_figures
from .experts import is_expert_prune
from .lazy_neuron import figures as lazy_figures
from .lazy_neuron import is_lazy_neuron
from .dass import figures as dass_figures
from .dass import is_dass
from .pattern_compare import figures as pattern_figures
from .pattern_compare import is_pattern_compare
from .random_search import figures as rs_figures
from .random_search import is_random_search
from .sharing import figures as sharing_figures
from .sharing import is_sharing
from .figures import accuracy_vs_density, accuracy_vs_nnz, compares_methods, method_comparison
from .hardware import read_hardware, speedup_vs_sparsity
from .nm import accuracy_figure
from .rnn import aggregate_figures
from .tables import aggregate, format_table


def report(root: Path, figures: bool = True, quiet: bool = False) -> pd.DataFrame:
    """Gather ``root`` into ``root/report/`` (all_runs.csv, table.txt, figures/) and print the table."""
    root = Path(root)
    df = collect(root)
    out = root / "report"
    atomic_write_text(out / "all_runs.csv", rows_to_csv(df.to_dict("records"), SUMMARY_COLUMNS))
    agg = aggregate(df)
    table = format_table(agg)
    failed = df[~df.status.isin(FINISHED)] if "status" in df else df.iloc[0:0]
    chance = df[df.status.isin(("at_chance", "diverged"))] if "status" in df else df.iloc[0:0]
    lines = [table]
    repeats = df[df.status.isin(FINISHED) & ~df.counted.fillna(True).astype(bool)] if "counted" in df else df.iloc[0:0]
    if "small_dense" in set(agg.get("variant", [])):
        lines.append("(small_dense rows: density % is the matched sparse level; the model itself is dense)")
    if len(repeats):
        lines.append(f"\n{len(repeats)} row(s) repeat a training another run already holds (same configuration "
                     "and seed: a cached dense stage reused by several jobs, a replicate run again …) and are "
                     "counted once (all_runs.csv: counted = False).")
    if len(chance):
        lines.append(f"\n{len(chance)} row(s) ended at chance accuracy (status at_chance, or diverged: recorded at "
                     "the majority class's share; included above):")
        lines += [f"  {r['run_dir']} {r.get('method', '')} {r.get('variant', '')} round {r.get('round', '')}"
                  + (" (diverged)" if r.get("status") == "diverged" else "") for r in chance.to_dict("records")]
    if len(failed):
        lines.append(f"\n{len(failed)} job(s) not complete:")
        lines += [f"  {r['status']}: {r['run_dir']} {r.get('error', '') or ''}" for r in failed.to_dict('records')]
    lines += _sweep_jobs(root, out)
    text = "\n".join(lines)
    atomic_write_text(out / "table.txt", text + "\n")
    if not quiet:
        print(text)
        print(f"report → {out}")
    hw = read_hardware(root)
    if len(hw):
        hw = hw[~hw.run_dir.str.contains("/report")]
        atomic_write_text(out / "hardware_all.csv", hw.to_csv(index=False))
    if figures:
        report_figures(counted(df), out / "figures")
        if len(hw):
            speedup_vs_sparsity(hw, out / "figures" / "speedup_vs_sparsity.png",
                                f"{root.name}: measured speedup of the final models (budgets "
                                f"{', '.join(sorted(hw.budget.astype(str).unique()))})")
    return df


def _sweep_jobs(root: Path, out: Path) -> list[str]:
    """``report/jobs.csv`` (every job of every sweep under ``root``, missing ones included) and the lines saying
    what is not complete."""
    rows = jobs.status(root, {str(d): job_meta(d) for d in job_dirs(root)})
    if not rows:
        return []
    atomic_write_text(out / "jobs.csv", rows_to_csv(rows, jobs.COLUMNS))
    lines = []
    for sweep in sorted({r["sweep"] for r in rows}):
        mine = [r for r in rows if r["sweep"] == sweep and r["status"] != "unknown"]
        counts: dict[str, int] = {}
        for r in mine:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        lines.append(f"\nsweep {sweep}: {len(mine)} job(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        lines += [f"  missing (never started): {r['job']}" for r in mine if r["status"] == "missing"]
        lines += [f"  {r['error']}" for r in rows if r["sweep"] == sweep and r["status"] == "unknown"]
    return lines


def _file_part(label: str, key: str) -> str:
    """A group label as part of a file name (shortened, with the group's hash when shortened)."""
    safe = re.sub(r"[^A-Za-z0-9._=+-]+", "_", label).strip("_")
    return safe if len(safe) <= 60 else f"{safe[:60]}_{key[:6]}"


def report_figures(ok: pd.DataFrame, out: Path) -> list[Path]:
    """Per experiment × budget: accuracy vs density (every method, or ticket vs reinit, with early-stop
    iterations; one line per configuration group), accuracy vs non-zeros when small-dense arms exist,
    N:M and sparse-RNN figures (one per configuration group) when present."""
    made = []
    ok = _grouped(ok)
    for (exp, budget), sub in ok.groupby(["experiment", "budget"]):
        if "density" not in sub or sub.density.isna().all():
            continue
        title = (f"{exp} (budget {budget}): {', '.join(sorted(sub.model.unique()))} on "
                 f"{', '.join(sorted(sub.dataset.unique()))}; seeds {sorted(int(s) for s in sub.seed.unique())}")
        stem = out / f"{exp}_{budget}"
        if is_sharing(sub):  # parameter sharing vs pruning: one set of figures over every run of the experiment
            made += sharing_figures(sub, f"{stem}_", title)
            continue
        if is_expert_prune(sub):  # MoE expert pruning: one figure over every run of the experiment
            made += expert_figures(sub, f"{stem}_", title)
            continue
        if is_lazy_neuron(sub):  # the Lazy Neuron study: one set of figures over every run of the experiment
            made += lazy_figures(sub, f"{stem}_", title)
            continue
        if is_pattern_compare(sub):  # selection patterns (SparseByteNN): one set of figures over every run
            made += pattern_figures(sub, f"{stem}_", title)
            continue
        if is_dass(sub):  # DASS vs DARTS vs hand-designed, pruned by learned scores
            made += dass_figures(sub, f"{stem}_", title)
            continue
        if is_random_search(sub):  # Random Search: one set of figures over every run of the experiment
            made += rs_figures(sub, f"{stem}_", title)
            continue
        if is_dst(sub):  # dynamic sparse training: per configuration group, or one ΔT figure across groups
            if "delta_t" in sub and sub[sub.variant != "dense"].delta_t.nunique() > 1:
                made += dst_figures(sub, f"{stem}_", title)
                continue
            for (key, group), part in sub.groupby([sub.group_key.fillna("") if "group_key" in sub
                                                   else pd.Series("", index=sub.index), "group"]):
                dense = sub[(sub.variant == "dense") & sub.dense_key.isin(set(part.dense_key))] \
                    if "dense_key" in sub else part.iloc[0:0]
                part = pd.concat([part[part.variant != "dense"], dense]).drop_duplicates()
                pstem = f"{stem}_{_file_part(group, str(key))}_" if group else f"{stem}_"
                made += dst_figures(part, pstem, f"{title}\n{group}" if group else title)
            continue
        rnn = bool({"policy_arm", "graph_family"} & set(sub.dropna(axis=1, how="all").columns))
        if rnn or ("pattern" in sub and sub.pattern.notna().any()):  # figures without group lines: one per group
            keys = sub.group_key if "group_key" in sub else pd.Series("", index=sub.index)
            dense = sub[sub.variant == "dense"]
            for (key, group), part in sub[sub.variant != "dense"].groupby([keys.fillna(""), "group"]):
                # the dense rows of this group's dense configuration (counted once, maybe in another run)
                part = pd.concat([dense[dense.dense_key.isin(set(part.dense_key))] if "dense_key" in part
                                  else dense, part])
                pstem = Path(f"{stem}_{_file_part(group, str(key))}") if group else stem
                ptitle = f"{title}\n{group}" if group else title
                if rnn:
                    made += aggregate_figures(part, pstem, ptitle)
                else:
                    made.append(accuracy_figure(part, Path(f"{pstem}_nm_accuracy.png"), ptitle))
            continue
        draw = method_comparison if compares_methods(sub) else accuracy_vs_density
        made.append(draw(sub, Path(f"{stem}_accuracy_vs_density.png"), title))
        if "small_dense" in set(sub.variant) and "nnz_params" in sub:
            made.append(accuracy_vs_nnz(sub, Path(f"{stem}_accuracy_vs_nnz.png"), title))
    return [m for m in made if m is not None]


class ReportCallback(Callback):
    """Hydra callback: aggregate a sweep when it ends (Hydra skips this when a job raised, so the
    CLI also reports every sweep it started — see ``cli.main``)."""

    started: set[str] = set()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        ReportCallback.started.add(str(config.hydra.sweep.dir))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep = str(config.hydra.sweep.dir)
        ReportCallback.started.discard(sweep)
        report(Path(sweep))


def main() -> None:
    """``sparse-run-report DIR [--no-figures]``: aggregate every run under DIR (a run, a sweep, a results root);
    ``sparse-run-report --claims DIR``: score every experiment's paper claims on the runs under DIR."""
    import argparse

    ap = argparse.ArgumentParser(prog="sparse-run-report", description=main.__doc__)
    ap.add_argument("dir", type=Path, nargs="?", default=Path("results"))
    ap.add_argument("--no-figures", action="store_true")
    ap.add_argument("--claims", action="store_true",
                    help="score the claims (conf/experiment/*.yaml) on the runs under DIR; writes claims.md, "
                         "claims.csv, claims.json to --out (default DIR/claims)")
    ap.add_argument("--out", type=Path, default=None, help="--claims: where the scoreboard files go")
    ap.add_argument("--budget", action="append", default=[],
                    help="--claims: also list this budget for every claim, run or not (repeatable)")
    args = ap.parse_args()
    if not args.dir.is_dir():
        sys.exit(f"error: dir: {args.dir} is not a directory; allowed: a run, sweep or results directory")
    if args.claims:
        _claims_main(args.dir, args.out or args.dir / "claims", args.budget)
        return
    df = report(args.dir, figures=not args.no_figures)
    if df.empty:
        sys.exit(f"error: dir: no runs under {args.dir}")


def _claims_main(root: Path, out: Path, budgets: list[str]) -> None:
    from sparse_run.config import ConfigError

    from . import claims, scoreboard

    try:
        scores = claims.evaluate(root, budgets=budgets)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    paths = scoreboard.write(scores, out)
    width = max((len(f"{s.claim.experiment}/{s.claim.name}") for s in scores), default=10)
    for s in scores:
        print(f"{s.claim.experiment + '/' + s.claim.name:<{width}}  {s.budget:<6} n={s.n:<3} "
              f"{scoreboard.ours(s):<28} {s.claim.expect:<14} {s.verdict}")
    print(scoreboard.summary_line(scores))
    print(f"scoreboard → {paths[0]} (+ {paths[1].name}, {paths[2].name})")
