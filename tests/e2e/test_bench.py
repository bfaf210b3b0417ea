"""The speed benchmark runs end to end (a few seconds at this size) and writes every documented key;
its ratios are measured by hand, not asserted: timings on shared machines are noise
(docs/performance.md)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

KEYS = ("sparse_run_s_per_epoch", "lean_s_per_epoch", "dataloader_s_per_epoch", "replicates_1_s", "replicates_5_s",
        "sparse_run_aten_s_per_epoch", "ratio_sparse_run_over_lean", "ratio_dataloader_over_sparse_run")


def test_bench_train_writes_its_documented_keys(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(REPO / "scripts/bench_train.py"), "--json", str(out), "--quick",
                    "--rounds", "1", "--epochs", "0.05", "--replicate-steps", "10", "--threads", "1"],
                   check=True, capture_output=True, timeout=600)
    got = json.loads(out.read_text())
    for key in KEYS:
        assert got[key] > 0, key
    assert got["ratio_sparse_run_over_lean"] == pytest.approx(got["sparse_run_s_per_epoch"] / got["lean_s_per_epoch"])
    assert not out.with_suffix(".tmp").exists()
