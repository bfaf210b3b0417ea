#!/usr/bin/env python
"""Regenerate the gallery (``make figures``): the sweeps of conf/figures.yaml, the claims scoreboard and
results/README.md.

    python scripts/make_figures.py [--budget quick|paper|smoke] [--only NAME ...] [--results DIR]
                                   [--threads N] [--readme README.md] [--page-only]

Each entry runs as one sweep through the normal CLI into <results>/paper/<name>/ (finished runs return in
seconds, interrupted ones resume); a finished sweep is recorded in <results>/paper/<name>/sweep-<budget>.json
(command, wall time, cores) and skipped on the next call with the same command. Then every sweep is
aggregated by sparse-run-report, the claims of conf/experiment/*.yaml are scored on all runs under
<results>/paper/ (every budget found), and <results>/README.md is written with the figures and their CSVs.
``budget=smoke`` defaults to results/smoke/ so it never overwrites the committed gallery.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import yaml

from sparse_run.report import claims, gallery, report, scoreboard
from sparse_run.store.files import atomic_write_text

MARK_BEGIN, MARK_END = "<!-- scoreboard:begin -->", "<!-- scoreboard:end -->"


def _command(entry: gallery.Entry, budget: str, root: Path, threads: int | None) -> list[str]:
    cli = str(Path(sys.executable).parent / "sparse-run")
    return [cli, "--multirun", f"experiment={entry.experiment}", f"budget={budget}",
            f"seed={','.join(map(str, entry.seeds))}", f"paths.results_dir={root}", "progress=false",
            *entry.overrides, *([f"threads={threads}"] if threads else [])]


def _skipped(entry: gallery.Entry, budget: str, root: Path, threads: int | None) -> bool:
    """The state file says this sweep finished with the same command."""
    state = gallery.read_state(root, budget)
    return state.get("status") == "complete" and state.get("command") == " ".join(_command(entry, budget, root,
                                                                                            threads)[1:])


def _run(entry: gallery.Entry, budget: str, root: Path, threads: int | None, k: int, total: int, t0: float) -> bool:
    """Run one sweep and record it in its state file; True when every job succeeded."""
    cmd = _command(entry, budget, root, threads)
    shown = " ".join(cmd[1:])
    elapsed = f"{(time.time() - t0) / 60:.1f} min elapsed"
    print(f"[{k}/{total}] {entry.name} ({budget}): {shown} ({elapsed})", flush=True)
    start = time.time()
    ok = subprocess.run(cmd).returncode == 0
    if ok:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(gallery.sweep_state(root, budget), json.dumps({
            "status": "complete", "command": shown, "wall_s": round(time.time() - start, 1),
            "cores": os.cpu_count(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1) + "\n")
    print(f"[{k}/{total}] {entry.name} ({budget}): {'done' if ok else 'FAILED'} in {(time.time() - start) / 60:.1f} min",
          flush=True)
    return ok


def _update_readme(readme: Path, scores: list[claims.Score], results: Path) -> None:
    """Replace the README's scoreboard block (between the markers) with the summary line and the LTH figure."""
    text = readme.read_text()
    if MARK_BEGIN not in text or MARK_END not in text:
        sys.exit(f"error: --readme: {readme} has no {MARK_BEGIN} … {MARK_END} block to update")
    rel = os.path.relpath(results, readme.parent)
    lth = sorted((results / "figures").glob("lth_lenet_mnist_quick_accuracy_vs_density.png"))
    block = [MARK_BEGIN, f"**Reproduction scoreboard** ([{rel}/README.md]({rel}/README.md)): "
             f"{scoreboard.summary_line(scores)}.", ""]
    if lth:
        block += [f"![LTH on LeNet-300-100: ticket vs reinit vs dense]({rel}/figures/{lth[0].name})", ""]
    block.append(MARK_END)
    new = re.sub(re.escape(MARK_BEGIN) + ".*?" + re.escape(MARK_END), lambda _: "\n".join(block), text, flags=re.S)
    atomic_write_text(readme, new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="quick", choices=["paper", "quick", "smoke"])
    ap.add_argument("--results", type=Path, default=None, help="default: results (smoke: results/smoke)")
    ap.add_argument("--only", nargs="*", default=None, help="entry names of conf/figures.yaml")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per job")
    ap.add_argument("--readme", type=Path, default=None, help="also update this README's scoreboard block")
    ap.add_argument("--page-only", action="store_true", help="run nothing; rebuild the page from the runs on disk")
    args = ap.parse_args()
    results = args.results or Path("results/smoke" if args.budget == "smoke" else "results")
    spec = yaml.safe_load(resources.files("sparse_run.conf").joinpath("figures.yaml").read_text())
    items = gallery.entries(spec)
    unknown = sorted(set(args.only or []) - {e.name for e in items})
    if unknown:
        sys.exit(f"error: --only: unknown entries {', '.join(unknown)}; allowed: {', '.join(e.name for e in items)}")
    chosen = [e for e in items if not args.only or e.name in args.only]
    t0, failures = time.time(), []
    for k, entry in enumerate(chosen, 1):
        root = results / "paper" / entry.name  # its own root: sweeps never mix in one report
        ran = not args.page_only and not _skipped(entry, args.budget, root, args.threads)
        if ran and not _run(entry, args.budget, root, args.threads, k, len(chosen), t0):
            failures.append(entry.name)
        elif not ran and not args.page_only:
            print(f"[{k}/{len(chosen)}] {entry.name} ({args.budget}): finished earlier; skipped "
                  f"({(time.time() - t0) / 60:.1f} min elapsed)", flush=True)
        sweep = root / entry.experiment
        if sweep.is_dir() and (ran or not (sweep / "report" / "all_runs.csv").exists()):
            report(sweep, quiet=True)  # a skipped sweep keeps the report its run wrote
    shown = [args.budget] if args.budget == "smoke" else ["quick", "paper"]  # a budget not run is listed as such
    scores = claims.evaluate(results / "paper", budgets=shown)
    page = gallery.build(results, items, scores, args.budget)
    if args.readme:
        _update_readme(args.readme, scores, results)
    print(f"{scoreboard.summary_line(scores)}\ngallery → {page} ({(time.time() - t0) / 60:.1f} min)")
    if failures:
        sys.exit(f"error: figures: sweeps with failed jobs: {', '.join(failures)} (see their report/table.txt)")


if __name__ == "__main__":
    main()
