"""Preemption through the public entry point: SIGTERM mid-arm stops a run at the next step with an in-flight
checkpoint of that step; run again (or requeued by submitit) it finishes identical to an uninterrupted run."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import CLI, run_cli

ARGS = ["experiment=lottery_mnist", "budget=smoke", "progress=false", "threads=1"]
SAME = ("round", "variant", "nonzeros", "test_acc", "val_acc", "early_stop_step", "test_acc_at_early_stop", "steps")


def _rows(run_dir: Path) -> list[tuple[str, ...]]:
    with open(run_dir / "summary.csv") as f:
        return [tuple(r[k] for k in SAME) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def smoke_ref(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("preempt_ref")
    run_cli(*ARGS, f"paths.results_dir={root}")
    return root / "lottery_mnist" / "budget=smoke"


def _wait_mid_arm(root: Path, proc: subprocess.Popen, not_arm: str = "r0/dense", timeout: float = 180) -> Path:
    """The run directory once an arm other than ``not_arm`` has an in-flight checkpoint."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for f in root.glob("lottery_mnist/*/checkpoints/inflight.pt"):
            try:
                arm = torch.load(f, weights_only=True)["arm"]
            except (FileNotFoundError, RuntimeError, EOFError, KeyError):
                continue
            if arm != not_arm:
                return f.parent.parent
        time.sleep(0.01)
    raise AssertionError("the run finished (or never checkpointed) before it could be signalled")


def test_sigterm_checkpoints_the_step_and_a_rerun_equals_an_uninterrupted_run(smoke_ref, tmp_path):
    proc = subprocess.Popen([CLI, *ARGS, "train.checkpoint_every=7", f"paths.results_dir={tmp_path}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = _wait_mid_arm(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("sparse-run: stopped by SIGTERM after step ") and "in-flight checkpoint" in line
    assert json.loads((run_dir / "run.json").read_text())["status"] == "preempted"
    step = int(line.split("after step ")[1].split()[0])
    assert torch.load(run_dir / "checkpoints/inflight.pt", weights_only=True)["state"]["step"] == step
    out = run_cli(*ARGS, "train.checkpoint_every=7", f"paths.results_dir={tmp_path}").stdout
    assert "resuming" in out
    assert _rows(run_dir) == _rows(smoke_ref)


def test_sigterm_under_submitit_local_requeues_and_finishes_identical(smoke_ref, tmp_path):
    proc = subprocess.Popen([CLI, "--multirun", "hydra/launcher=submitit_local", *ARGS, "seed=0",
                             f"paths.results_dir={tmp_path}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    run_dir = _wait_mid_arm(tmp_path, proc)
    jobs = [d for d in (tmp_path / "lottery_mnist/.submitit").iterdir() if d.name.isdigit()]
    assert len(jobs) == 1
    controller = int(jobs[0].name)  # submitit_local's job id is its controller's pid; it forwards SIGTERM
    subprocess.run(["kill", "-TERM", str(controller)], check=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    log = "".join(p.read_text() for p in sorted(jobs[0].glob("*_log.*")))
    assert "stopped by SIGTERM" in log and "Requeued job" in log, log[-3000:]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    assert _rows(run_dir) == _rows(smoke_ref)
