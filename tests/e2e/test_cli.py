"""The command line as a user meets it: multirun, loggers, and bad input."""
from __future__ import annotations

import pytest

from conftest import run_cli


@pytest.mark.parametrize("args, field, allowed", [
    (["method=nope"], "method", "allowed: dass, dense, "),
    (["experiment=lottery_mnist", "method.schedule.rate=1.5"], "method.schedule.rate", "(0, 1)"),
    (["dataset.root=/proc/1/root/nonexistent"], "dataset.root", "not readable"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, field, allowed):
    proc = run_cli(*args, f"paths.results_dir={tmp_path}", check=False, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and field in err and allowed in err
    assert not any(tmp_path.iterdir()), "a rejected run must not write anything"


def test_multirun_writes_one_directory_per_seed(tmp_path):
    run_cli("--multirun", "experiment=lottery_mnist", "budget=smoke", "seed=0,1,2", f"paths.results_dir={tmp_path}",
            "method.schedule.rounds=1", "method.controls.variants=[]")
    dirs = sorted(p.name for p in (tmp_path / "lottery_mnist").iterdir() if (p / "summary.csv").exists())
    assert len(dirs) == 3 and all("seed=" in d for d in dirs)


def test_wandb_logger_offline_finishes_each_job(tmp_path):
    run_cli("--multirun", "experiment=lottery_mnist", "budget=smoke", "seed=0,1", "logger=wandb",
            "method.schedule.rounds=1", "method.controls.variants=[]", f"paths.results_dir={tmp_path}",
            env={"WANDB_SILENT": "true"})
    runs = sorted((tmp_path / "lottery_mnist").glob("*/wandb/offline-run-*"))
    assert len(runs) == 2 and runs[0].parent.parent != runs[1].parent.parent
    for r in runs:
        assert any(r.glob("*.wandb")), f"{r} has no run log"
