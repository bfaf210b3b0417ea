"""Reliability: resume after SIGKILL, determinism, NaN, atomic writes, bad input leaves results intact."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import run_cli, sigkill_inside
from sparse_run.store import files

ARGS = ["experiment=lottery_mnist", "budget=smoke", "method.schedule.rounds=2", "threads=1"]


def comparable(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "summary.csv").drop(columns=["wall_s"])


def run_dir(root: Path) -> Path:
    return next(p for p in (root / "lottery_mnist").iterdir() if p.is_dir())


def test_same_seed_gives_identical_results_and_other_seed_does_not(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for root, seed in ((a, 0), (b, 0), (c, 1)):
        run_cli(*ARGS, f"seed={seed}", f"paths.results_dir={root}")
    pd.testing.assert_frame_equal(comparable(run_dir(a)), comparable(run_dir(b)))
    assert not comparable(run_dir(a)).test_acc.equals(comparable(run_dir(c)).test_acc)
    for m in ("round_01.pt", "round_02.pt"):
        ma = torch.load(run_dir(a) / "masks" / m)
        mb = torch.load(run_dir(b) / "masks" / m)
        assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_sigkill_mid_round_then_rerun_equals_uninterrupted(tmp_path):
    args = [*ARGS, "budget.steps_scale=0.012", "budget.evals=6"]  # 600 steps per arm, checkpoint every 100
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    run_cli(*args, f"paths.results_dir={ref}")

    # mid-round, after a pruning event
    target = sigkill_inside(args, killed, "lottery_mnist", lambda arm: arm != "r0/dense")

    out = run_cli(*args, f"paths.results_dir={killed}").stdout
    assert "resuming" in out
    pd.testing.assert_frame_equal(comparable(run_dir(ref)), comparable(target))
    ref_metrics = [json.loads(x) for x in (run_dir(ref) / "metrics.jsonl").read_text().splitlines()]
    got_metrics = [json.loads(x) for x in (target / "metrics.jsonl").read_text().splitlines()]
    assert ref_metrics == got_metrics
    # a finished run is not redone
    again = run_cli(*args, f"paths.results_dir={killed}").stdout
    assert "already complete" in again


def test_nan_loss_stops_with_a_clear_message_and_keeps_results(tmp_path):
    proc = run_cli(*ARGS, "train.optimizer=sgd", "train.lr=1e30", f"paths.results_dir={tmp_path}", check=False)
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "loss became" in err and "train.lr" in err
    meta = json.loads((run_dir(tmp_path) / "run.json").read_text())
    assert meta["status"] == "failed" and "loss became" in meta["error"]


def test_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "summary.csv"
    files.atomic_write_text(target, "old\n")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        files.atomic_write_text(target, "new content that does not fit\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"], "no temp file may be left behind"


BAD = [
    (["method=nope"], "method", "dense"),
    (["budget=huge"], "budget", "paper, quick, smoke"),
    (["method.schedule.rate=1.5"], "method.schedule.rate", "(0, 1)"),
    (["method.schedule.rate=0"], "method.schedule.rate", "(0, 1)"),
    (["method.schedule.rounds=-1"], "method.schedule.rounds", "[0, inf]"),
    (["method.schedule.rewind=sometimes"], "method.schedule.rewind", "init, step, none"),
    (["method.selection.scope=everywhere"], "method.selection.scope", "layerwise"),
    (["method.criterion=vibes"], "method.criterion", "magnitude"),
    (["seed=-1"], "seed", "[0, inf]"),
    (["train.steps=0"], "train.steps", "[1, inf]"),
    (["train.lr=-0.1"], "train.lr", "(0, inf]"),
    (["train.batch_size=0"], "train.batch_size", "[1, "),
    (["train.batch_size=100000"], "train.batch_size", "[1, 3000]"),  # smoke trains on 3,000 examples
    (["train.momentum=1.5"], "train.momentum", "[0, 1)"),
    (["train.optimizer=rmsprop"], "train.optimizer", "adam"),
    (["budget.steps_scale=0"], "budget.steps_scale", "(0, inf]"),
    (["dataset.val_size=-5"], "dataset.val_size", "[0, "),
    (["device=tpu"], "device", "cpu, cuda, auto"),
    (["threads=0"], "threads", "[1, inf]"),
    (["logger=carrier_pigeon"], "logger", "csv, wandb"),
    (["dataset.root=/etc/hostname"], "dataset.root", "readable directory"),
    (["train.lrr=1"], "", "lrr"),
    (["train.linear_kernel=mkl"], "train.linear_kernel", "auto, onednn, aten"),
    (["device=cuda", "train.linear_kernel=onednn"], "train.linear_kernel", "use auto or aten"),
]


@pytest.fixture(scope="module")
def finished_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("kept")
    run_cli("experiment=lottery_mnist", "budget=smoke", "method.schedule.rounds=1", f"paths.results_dir={root}")
    return root


@pytest.mark.parametrize("bad, field, allowed", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_one_line_error_and_earlier_results_intact(finished_root, bad, field, allowed):
    before = {p: p.read_bytes() for p in finished_root.rglob("*") if p.is_file()}
    proc = run_cli("experiment=lottery_mnist", "budget=smoke", "method.schedule.rounds=1", *bad,
                   f"paths.results_dir={finished_root}", check=False, timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and field in err and allowed in err, err
    after = {p: p.read_bytes() for p in finished_root.rglob("*") if p.is_file()}
    assert after == before, "a rejected command must not touch earlier results"
