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


def test_bench_sparse_writes_ratios_per_density_and_the_crossover(tmp_path):
    out = tmp_path / "sparse.json"
    subprocess.run([sys.executable, str(REPO / "scripts/bench_sparse.py"), "--json", str(out), "--quick",
                    "--rounds", "1", "--threads", "1"], check=True, capture_output=True, timeout=600)
    got = json.loads(out.read_text())
    assert [(r["model"], r["density"]) for r in got["rows"]] == [
        ("lenet_300_100", d) for d in (1.0, 0.51, 0.21, 0.07, 0.036, 0.019)] + [
        ("mlp_1024_1024", d) for d in (0.10, 0.02, 0.01)]
    for r in got["rows"]:
        assert r["speedup_auto"] == pytest.approx(r["dense_ms_per_step"] / r["auto_ms_per_step"], rel=1e-3)
        assert r["auto_kernels"]
    assert set(got["crossover"]) == {"lenet_300_100/t1", "mlp_1024_1024/t1"}
    assert set(got["targets"]) == {"lenet_300_100@0.036/t1", "mlp_1024_1024@0.02/t1"}
