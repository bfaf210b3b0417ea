"""Sweeps: launchers, failed jobs, aggregation, cached stages."""
from __future__ import annotations

import time

import pandas as pd
import pytest

from conftest import run_cli

SMOKE = ["experiment=lottery_mnist", "budget=smoke", "threads=1", "method.controls.variants=[]"]


def summaries(root):
    return sorted((root / "lottery_mnist").glob("*/summary.csv"))


# submitit_local is the slow one (50 s here); its requeue path is covered by default in test_preemption.py
@pytest.mark.parametrize("launcher", ["joblib", pytest.param("submitit_local", marks=pytest.mark.slow)])
def test_multirun_2x2_with_a_failing_job_still_aggregates(tmp_path, launcher):
    proc = run_cli("--multirun", f"hydra/launcher={launcher}", *SMOKE, "seed=0,1", "method.schedule.rate=0.2,1.5",
                   "method.schedule.rounds=1", f"paths.results_dir={tmp_path}", check=False, timeout=600)
    assert proc.returncode != 0  # Hydra reports the failed jobs …
    assert len(summaries(tmp_path)) == 2  # … after running every job
    report = tmp_path / "lottery_mnist" / "report"
    table = pd.read_csv(report / "all_runs.csv")
    failed = table[table.status == "failed"]
    assert len(failed) == 2 and failed.error.str.contains("method.schedule.rate").all()
    ok = table[table.status == "ok"]
    assert sorted(ok.seed.unique()) == [0, 1] and set(ok.variant) == {"dense", "ticket"}
    assert "2 job(s) not complete" in (report / "table.txt").read_text()
    assert (report / "figures" / "lottery_mnist_smoke_accuracy_vs_density.png").exists()
    assert (report / "figures" / "lottery_mnist_smoke_accuracy_vs_density.pdf").exists()
    jobs = pd.read_csv(report / "jobs.csv")
    assert sorted(jobs.status) == ["complete", "complete", "failed", "failed"]
    # a job that never started (a cluster job still queued, or cancelled): the separate report command names it
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    gone = summaries(tmp_path)[0].parent
    shutil.rmtree(gone)
    exe = str(Path(sys.executable).parent / "sparse-run-report")
    out = subprocess.run([exe, str(tmp_path / "lottery_mnist"), "--no-figures"], capture_output=True, text=True,
                         check=True).stdout
    assert f"missing (never started): {gone.name}" in out and "1 complete, 2 failed, 1 missing" in out
    assert sorted(pd.read_csv(report / "jobs.csv").status) == ["complete", "failed", "failed", "missing"]


def test_report_command_on_a_results_root(tmp_path):
    run_cli("--multirun", *SMOKE, "seed=0,1", "method.schedule.rounds=1", f"paths.results_dir={tmp_path}")
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).parent / "sparse-run-report")
    out = subprocess.run([exe, str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert "ticket" in out and "± " in out
    table = pd.read_csv(tmp_path / "report" / "all_runs.csv")
    assert len(table) == 4 and (table.status == "ok").all()
    bad = subprocess.run([exe, str(tmp_path / "nope")], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error: dir:")


def test_rerun_reuses_the_cached_dense_stage(tmp_path):
    args = [*SMOKE, "budget.steps_scale=0.02", f"paths.results_dir={tmp_path}"]  # 1,000 steps per arm
    first = run_cli(*args, "method.schedule.rounds=1").stdout
    assert "reusing cached dense stage" not in first
    t0 = time.perf_counter()
    second = run_cli(*args, "method.schedule.rounds=2").stdout  # a different job sharing round 0
    t_second = time.perf_counter() - t0
    assert "reusing cached dense stage" in second
    a = pd.read_csv(next((tmp_path / "lottery_mnist").glob("*rounds=1*/summary.csv")))
    b = pd.read_csv(next((tmp_path / "lottery_mnist").glob("*rounds=2*/summary.csv")))
    pd.testing.assert_frame_equal(a.iloc[:2].drop(columns="wall_s"), b.iloc[:2].drop(columns="wall_s"))
    t0 = time.perf_counter()
    third = run_cli(*args, "method.schedule.rounds=2").stdout  # the same job again: nothing to do
    assert "already complete" in third and time.perf_counter() - t0 < t_second


def test_report_draws_speedup_vs_sparsity_from_hardware_rows(tmp_path):
    run_cli("--multirun", *SMOKE, "hardware=cpu_sparse", "hardware.batch_sizes=[64]", "method.schedule.rounds=1,2",
            f"paths.results_dir={tmp_path}")
    report = tmp_path / "lottery_mnist" / "report"
    hw = pd.read_csv(report / "hardware_all.csv")
    model = hw[hw.scope == "model"]
    assert sorted(model.density.round(3).unique()) == [0.641, 0.8] and model.speedup.notna().all()
    assert (report / "figures" / "speedup_vs_sparsity.png").exists()
