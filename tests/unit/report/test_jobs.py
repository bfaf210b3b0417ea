"""A sweep's jobs from its ``multirun.yaml`` (``report/jobs.py``): expanded as Hydra's basic sweeper does and named
as the run directories are; when the Hydra internals it leans on move, the present jobs are still listed."""
from __future__ import annotations

from pathlib import Path

import yaml

from sparse_run.report import jobs

EXCLUDE = ["experiment", "paths.results_dir", "threads"]


def _sweep(root: Path, task: list[str], params: dict | None = None) -> Path:
    sweep = root / "lottery_mnist"
    sweep.mkdir(parents=True)
    hydra = {"overrides": {"task": task},
             "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                         "params": params or {}},
             "job": {"config": {"override_dirname": {"kv_sep": "=", "item_sep": ",", "exclude_keys": EXCLUDE}}}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra, "seed": 0}))
    return sweep


def test_expected_jobs_are_the_sweeps_product_named_like_run_directories(tmp_path):
    sweep = _sweep(tmp_path, ["experiment=lottery_mnist", "seed=0,1", "method.schedule.rate=0.2,0.5", "threads=1"],
                   params={"budget": "smoke"})
    assert jobs.expected(sweep) == [
        "budget=smoke,method.schedule.rate=0.2,seed=0", "budget=smoke,method.schedule.rate=0.5,seed=0",
        "budget=smoke,method.schedule.rate=0.2,seed=1", "budget=smoke,method.schedule.rate=0.5,seed=1"]


def test_status_marks_jobs_that_never_started(tmp_path):
    sweep = _sweep(tmp_path, ["seed=0,1,2"])
    present = {str(sweep / "seed=0"): {"status": "complete"},
               str(sweep / "seed=1"): {"status": "failed", "error": "ConfigError: x"}}
    rows = {r["job"]: (r["status"], r["error"]) for r in jobs.status(tmp_path, present)}
    assert rows == {"seed=0": ("complete", ""), "seed=1": ("failed", "ConfigError: x"),
                    "seed=2": ("missing", "never started")}


def test_when_hydra_internals_move_present_jobs_are_still_listed(tmp_path, monkeypatch):
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    def moved(*args, **kwargs):
        raise AttributeError("split_arguments moved")

    monkeypatch.setattr(BasicSweeper, "split_arguments", moved)
    sweep = _sweep(tmp_path, ["seed=0,1,2"])
    rows = jobs.status(tmp_path, {str(sweep / "seed=0"): {"status": "complete"}})
    assert [(r["job"], r["status"]) for r in rows] == [("", "unknown"), ("seed=0", "complete")]
    assert "not listed" in rows[0]["error"]
