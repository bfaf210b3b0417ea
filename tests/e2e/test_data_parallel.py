"""Data-parallel single runs through the public entry point: ``torchrun --standalone --nproc-per-node 2 -m sparse_run``
on CPU (gloo) equals the one-process run with the same global batch, resumes a killed run, writes only from rank 0,
and refuses bad launches with one line."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_cli, run_main, sigkill_inside

from sparse_run.engine import onednn

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
# SGD with momentum: Adam divides each gradient by its running RMS, so float-rounding noise in near-zero gradients
# becomes full-size steps and even a one-process run with another thread count drifts (measured at smoke: |Δw| 1e-3
# after 200 steps, 1.2 pp val accuracy by round 1); SGD keeps rounding noise at rounding size, which is what
# isolates the claim tested here: the data-parallel machinery computes the same steps as one process.
# The dense kernel is pinned to oneDNN, under which the tolerances below were measured: `auto` measures oneDNN
# against ATen per machine, and with ATen (MKL) a 30-row and a 60-row product block differently, which on an
# AVX2 host moved three test examples of a reinit arm (0.3 pp) — the BLAS, not the data-parallel machinery.
SGD = ["train.optimizer=sgd", "train.lr=0.05", "train.momentum=0.9", "train.linear_kernel=onednn"]
ARGS = ["experiment=lottery_mnist", "budget=smoke", "progress=false", *SGD]
RUN = Path("lottery_mnist") / ("budget=smoke,train.linear_kernel=onednn,train.lr=0.05,train.momentum=0.9,"
                               "train.optimizer=sgd")
pytestmark = pytest.mark.skipif(not onednn.available(), reason="the tolerances hold for oneDNN's kernels")
# Tolerance: both runs compute the mean gradient of the same 60 examples per step; two ranks average two 30-example
# means, so only the float32 summation order differs (~1e-7 relative per operation). Measured over 800 steps: max
# |Δw| 5e-7, masks and accuracies identical. Allowed: |Δw| <= 1e-5, |Δ loss| <= 1e-5, accuracies within one
# evaluation example (1/1000), masks identical.
W_TOL, LOSS_TOL, ACC_TOL = 1e-5, 1e-5, 1.01e-3


def torchrun(results: Path, *args: str, nproc: int = 2, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    base = [a for a in ARGS if not (a.startswith("experiment=") and any(b.startswith("experiment=") for b in args))]
    proc = subprocess.run([TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", "-m", "sparse_run", *base,
                           *args, f"paths.results_dir={results}", "threads=1"],
                          capture_output=True, text=True, timeout=600, env={**env, "OMP_NUM_THREADS": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


def assert_equivalent(a: Path, b: Path) -> None:
    ra, rb = rows(a), rows(b)
    assert [(r["round"], r["variant"], r["nonzeros"]) for r in ra] == [(r["round"], r["variant"], r["nonzeros"])
                                                                        for r in rb]
    for x, y in zip(ra, rb):
        for k in ("test_acc", "val_acc", "test_acc_at_early_stop"):
            assert abs(float(x[k]) - float(y[k])) <= ACC_TOL, (k, x, y)
    ma = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert len(ma) == len(mb)
    for x, y in zip(ma, mb):
        assert abs(x["train_loss"] - y["train_loss"]) <= LOSS_TOL and abs(x["val_loss"] - y["val_loss"]) <= LOSS_TOL
    fa = torch.load(a / "checkpoints/final.pt", weights_only=True)
    fb = torch.load(b / "checkpoints/final.pt", weights_only=True)
    for k, w in fa["model"].items():
        assert (w - fb["model"][k]).abs().max() <= W_TOL, k
    for k, m in fa["masks"].items():
        assert torch.equal(m, fb["masks"][k]), k


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dp_one")
    run_cli(*ARGS, f"paths.results_dir={root}", "threads=1")
    return root / RUN


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(one_process, tmp_path):
    proc = torchrun(tmp_path)
    run_dir = tmp_path / RUN
    assert_equivalent(one_process, run_dir)
    assert "2 processes (dist backend gloo)" in proc.stdout
    assert proc.stdout.count("lottery_mnist (budget smoke, seed 0) →") == 1  # rank 0 alone reports
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("sparse-run-rank1-*/checkpoints"))  # scratch removed


@pytest.mark.slow
def test_a_killed_one_process_run_resumes_on_two_processes(one_process, tmp_path):
    """The global batch fixes the data order, so a checkpoint does not depend on how many processes wrote it."""
    run_dir = sigkill_inside([*ARGS, "threads=1", "train.checkpoint_every=5"], tmp_path, "lottery_mnist",
                             lambda arm: arm not in ("r0/dense",))
    proc = torchrun(tmp_path, "train.checkpoint_every=5")
    assert "resuming" in proc.stdout
    assert_equivalent(one_process, run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["gmp_mnist", "pai_mnist", "dst_mnist"])
def test_every_data_parallel_kind_equals_one_process(tmp_path, experiment):
    """gradual (hooks prune mid-arm), at_init (SNIP / GraSP / SynFlow scores from seeded batches), dynamic (RigL grows
    on all-reduced gradients) — besides iterative above."""
    args = [f"experiment={experiment}", *ARGS[1:]]
    run_cli(*args, f"paths.results_dir={tmp_path / 'one'}", "threads=1")
    torchrun(tmp_path / "two", f"experiment={experiment}")
    one, = (tmp_path / "one" / experiment).glob("*/summary.csv")
    two, = (tmp_path / "two" / experiment).glob("*/summary.csv")
    assert_equivalent(one.parent, two.parent)


@pytest.mark.parametrize("env, extra, field, allowed", [
    ({"WORLD_SIZE": "2", "RANK": "0"}, ["dist.world_size=4"], "dist.world_size", "allowed: 2, or null"),
    ({}, ["dist.world_size=2"], "dist.world_size", "allowed: 1, or null"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, ["train.batch_size=61"], "train.batch_size", "a multiple of 2"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, ["experiment=random_search_mnist"], "method.schedule.kind",
     "allowed: none, iterative"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, ["train.replicates=2"], "train.replicates", "allowed: 1"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, ["dist.backend=mpi"], "dist.backend", "allowed: auto, gloo, nccl"),
    ({"WORLD_SIZE": "two"}, [], "WORLD_SIZE", "allowed: a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, ["--multirun", "seed=0,1"], "--multirun", "allowed: sweep"),
])
def test_bad_launches_are_one_line_errors_before_anything_is_written(tmp_path, monkeypatch, capsys, env, extra,
                                                                      field, allowed):
    args = [a for a in ARGS if not a.startswith("experiment=") or not any(e.startswith("experiment=") for e in extra)]
    code, err = run_main(monkeypatch, capsys, [*args, *extra, f"paths.results_dir={tmp_path}"], env)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {field}:") and allowed in lines[0], lines
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    args = [a for a in ARGS if not a.startswith("train.linear_kernel=")]  # onednn is CPU-only: its own error
    code, err = run_main(monkeypatch, capsys, [*args, "device=cuda", f"paths.results_dir={tmp_path}"], {})
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: device:"), err
    assert not any(tmp_path.iterdir())
