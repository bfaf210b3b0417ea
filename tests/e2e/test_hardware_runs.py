"""Hardware targets end to end: runs write hardware.csv, 2:4 without CUDA completes as
"not available", exports round-trip, and the kernel study composes and runs."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from conftest import run_cli
from sparse_run import export as export_mod
from sparse_run.hardware.measurement import COLUMNS
from sparse_run.hardware.timing import VERDICTS

FAST = ["method.schedule.rounds=1", "method.controls.variants=[]", "hardware.batch_sizes=[1,64]", "threads=1"]


@pytest.fixture(scope="module")
def sparse_run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hw")
    run_cli("experiment=lottery_mnist", "budget=smoke", "hardware=cpu_sparse", *FAST, f"paths.results_dir={root}")
    return next((root / "lottery_mnist").iterdir())


def test_cpu_sparse_run_writes_hardware_csv_with_speedup_and_verdict(sparse_run_dir):
    df = pd.read_csv(sparse_run_dir / "hardware.csv")
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert set(df.scope) == {"model", "layer"} and sorted(df.batch.unique()) == [1, 64]
    assert len(df) == 2 * (1 + 3)  # (model + 3 layers) × 2 batch sizes
    assert df.speedup.notna().all() and (df.speedup_lo <= df.speedup).all() and (df.speedup <= df.speedup_hi).all()
    assert set(df.verdict) <= set(VERDICTS) and (df.status == "ok").all()
    model = df[df.scope == "model"]
    assert (model.density.round(2) == 0.8).all()  # one round of 20 %: far from any break-even
    assert (model.speedup_ideal > 1).all() and (model.weight_bytes_csr > model.weight_bytes_dense).all()
    # the dense baseline is the faster of ATen's and oneDNN's kernels, and the row says which
    assert set(df.dense_kernel) <= {"aten", "onednn"}
    fastest = df[["t_dense_aten_ms", "t_dense_onednn_ms"]].min(axis=1)
    assert ((df.t_dense_ms - fastest).abs() < 1e-9).all()
    meta = json.loads((sparse_run_dir / "hardware.json").read_text())
    assert meta["environment"]["threads"] == 1 and meta["environment"]["cpu"] and meta["environment"]["torch"]
    assert (sparse_run_dir / "figures" / "hardware.png").stat().st_size > 10_000


@pytest.mark.parametrize("fmt", ["masked", "csr", "slim"])
def test_exports_load_back_and_match_the_masked_model(sparse_run_dir, fmt, tmp_path):
    out = export_mod.export(sparse_run_dir, fmt, tmp_path / fmt)
    meta = json.loads((out / "model.json").read_text())
    assert meta["check"]["ok"] and meta["config"]["hardware"]["name"] == "cpu_sparse"
    assert not any(p.suffix in (".pt", ".pkl") for p in out.iterdir())  # nothing pickled
    cfg, model, masks, spec, x = export_mod._final(sparse_run_dir)
    loaded = export_mod.load(out)
    with torch.no_grad():
        assert torch.allclose(loaded(x[:64]), model(x[:64]), atol=1e-4)


def test_export_refuses_a_model_whose_pruned_weights_are_not_zero(sparse_run_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(sparse_run_dir, run)
    final = torch.load(run / "checkpoints/final.pt", weights_only=True)
    name = next(iter(final["masks"]))
    w = final["model"][name]
    w[~final["masks"][name]] = 1e-3
    torch.save(final, run / "checkpoints/final.pt")
    with pytest.raises(AssertionError, match="not zero"):
        export_mod.export(run, "csr")


def test_2of4_export_refuses_unstructured_masks(sparse_run_dir, tmp_path):
    with pytest.raises(ValueError, match="not 2:4"):
        export_mod.export(sparse_run_dir, "2of4", tmp_path / "x")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 execution needs CUDA (cuSPARSELt)")
def test_2of4_execution_matches_on_cuda():
    from torch import nn

    from sparse_run.hardware.execute import convert

    lin = nn.Linear(128, 256).half().cuda()
    mask = torch.zeros(256, 32, 4, dtype=torch.bool, device="cuda")
    mask[..., :2] = True
    mask = mask.reshape(256, 128)
    with torch.no_grad():
        lin.weight.mul_(mask)
    net = nn.Sequential(lin).eval()
    out = convert(net, {"0.weight": mask}, "semi_structured", dtype=torch.float16)
    x = torch.randn(64, 128, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        assert torch.allclose(out.model(x), net(x), atol=1e-2, rtol=1e-2)


def test_cuda_2of4_without_cuda_completes_as_not_available(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run_cli("hardware=cuda_2of4", "budget=smoke", "hardware.batch_sizes=[1]", "threads=1",
            f"paths.results_dir={tmp_path}")
    run = next((tmp_path / "default").iterdir())
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    df = pd.read_csv(run / "hardware.csv")
    assert (df.status == "not_available").all() and (df.verdict == "not available").all()
    assert df.speedup.isna().all() and df.speedup_ideal.notna().all()
    assert "no CUDA" in df.note.iloc[0]


def test_cuda_2of4_with_unstructured_imp_is_one_line(tmp_path):
    proc = run_cli("experiment=lottery_mnist", "hardware=cuda_2of4", f"paths.results_dir={tmp_path}", check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "method.selection.pattern" in err and "n=2, m=4" in err
    assert not any(tmp_path.iterdir())


def test_hw_sparse_1x1_smoke_writes_breakeven_table_and_figure(tmp_path):
    proc = run_cli("experiment=hw_sparse_1x1", "budget=smoke", "threads=1", f"paths.results_dir={tmp_path}")
    run = next((tmp_path / "hw_sparse_1x1").iterdir())
    kern = pd.read_csv(run / "kernel.csv")
    be = pd.read_csv(run / "breakeven.csv")
    ok = kern[(kern.status == "ok") & kern.c_in.notna()]
    assert set(ok.pattern) == {"unstructured", "block4x4"} and set(ok.backend) == {"torch_csr", "torch_bsr"}
    size = ok.pattern.map({"unstructured": 1, "block4x4": 16})
    expected = ((ok.c_in * ok.c_out / size * (1 - ok.sparsity)).round() * size).astype(int)
    assert (ok.nonzeros == expected).all()  # exact counts, in whole blocks
    assert ((ok.t_dense_ms - ok[["t_dense_aten_ms", "t_dense_onednn_ms"]].min(axis=1)).abs() < 1e-9).all()
    assert len(be) == 3 * 3  # (2 shapes + network sum) × (csr unstructured, csr block, bsr block)
    assert "break-even" in proc.stdout
    assert (run / "figures" / "speedup_vs_sparsity.png").stat().st_size > 10_000
    assert "subset" in json.loads((run / "kernel.json").read_text())["coverage"]


@pytest.mark.slow
def test_issue_command_cpu_sparse_smoke(tmp_path):
    run_cli("experiment=lottery_mnist", "budget=smoke", "hardware=cpu_sparse", f"paths.results_dir={tmp_path}")
    df = pd.read_csv(next((tmp_path / "lottery_mnist").iterdir()) / "hardware.csv")
    assert {"speedup", "speedup_lo", "speedup_hi", "verdict"} <= set(df.columns)
