#!/usr/bin/env python
"""Regenerate the paper figure set (``make figures``) from the sweeps listed in conf/figures.yaml.

    python scripts/make_figures.py [--budget quick|paper|smoke] [--seeds 0,1,2] [--only NAME ...]

Each sweep runs through the normal CLI (so finished jobs and cached stages are reused), is
aggregated by sparse-run-report, and its figures (PNG, PDF and the provenance JSON recording
budget, seeds and commit) are copied to results/figures/<name>_*.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import yaml

from sparse_run.report import report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="quick", choices=["paper", "quick", "smoke"])
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: conf/figures.yaml)")
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per job (1 on a shared machine)")
    args = ap.parse_args()
    spec = yaml.safe_load(resources.files("sparse_run.conf").joinpath("figures.yaml").read_text())
    out = args.results / "figures"
    cli = str(Path(sys.executable).parent / "sparse-run")
    failures = []
    for name, entry in spec["figures"].items():
        if args.only and name not in args.only:
            continue
        seeds = args.seeds or ",".join(str(s) for s in entry.get("seeds", spec["seeds"]))
        root = args.results / "paper" / name  # its own root: sweeps never mix in one report
        cmd = [cli, "--multirun", f"experiment={entry['experiment']}", f"budget={args.budget}", f"seed={seeds}",
               f"paths.results_dir={root}", "progress=false", *entry.get("overrides", []),
               *([f"threads={args.threads}"] if args.threads else [])]
        print(f"== {name} ({entry.get('paper', '')}): {' '.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            failures.append(name)
        sweep = root / entry["experiment"]
        report(sweep, quiet=True)
        figures = sorted((sweep / "report" / "figures").glob("*"))
        figures += sorted(p for p in sweep.glob("*/figures/*") if "accuracy_vs_density" not in p.name)
        for f in figures:  # the sweep's aggregate figures, plus per-run ones (N:M SAD, kernel study)
            target = out / f"{name}_{f.parent.parent.name.replace('=', '').replace(',', '_')}_{f.name}" \
                if f.parent.parent.name != "report" else out / f"{name}_{f.name}"
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
            print(f"   → {target}")
    if failures:
        sys.exit(f"error: figures: sweeps with failed jobs: {', '.join(failures)} (see their report/table.txt)")


if __name__ == "__main__":
    main()
