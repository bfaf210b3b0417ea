"""Dynamic sparse training end to end: ``experiment=dst_mnist budget=smoke`` writes the results schema with every
arm, exact counts at every update, zero weights outside the final masks and the DST figures; every bad setting is
one line naming its field before any work."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from conftest import compose_cfg, run_cli
from sparse_run import models
from sparse_run.config import ConfigError
from sparse_run.data import DataSpec
from sparse_run.execute import effective
from sparse_run.sparsity import MaskSet, prunable


@pytest.fixture(scope="module")
def dst_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dst")
    run_cli("experiment=dst_mnist", "budget=smoke", "threads=1", "progress=false", "method.schedule.every_steps=10",
            f"paths.results_dir={root}")
    return root / "dst_mnist" / "budget=smoke,method.schedule.every_steps=10"


def test_dst_smoke_writes_every_arm_with_exact_counts(dst_run):
    summary, layers = pd.read_csv(dst_run / "summary.csv"), pd.read_csv(dst_run / "layers.csv")
    arms = {"static", "set", "rigl", "snfs", "gmp", "rigl_2x", "small_dense"}
    assert set(summary.variant) == arms | {"dense"}
    sparse = summary[summary.variant.isin(arms - {"small_dense"})]
    assert ((sparse.nonzeros - sparse.target_density * sparse.prunable).abs() <= 3).all()
    assert (sparse[sparse.variant == "rigl_2x"].steps == 2 * sparse[sparse.variant == "rigl"].steps.iloc[0]).all()
    for variant in ("set", "rigl", "snfs"):
        rows = summary[summary.variant == variant]
        assert (rows.updates > 0).all() and (rows.swapped > 0).all() and (rows.itop > rows.density).all()
    assert summary.set_index("variant").train_flops_ratio["dense"] == 1.0
    for (variant, r), ev in layers[layers.variant.isin(["set", "rigl", "snfs"])].groupby(["variant", "round"]):
        start = ev[ev.step == 0].set_index("layer").nonzeros
        for step, e in ev.groupby("step"):
            counts = e.set_index("layer").nonzeros
            if variant == "snfs":  # redistribution moves weights between layers; the total is the budget
                assert counts.sum() == start.sum()
            else:
                assert counts.equals(start), (variant, r, step)
        assert ev[ev.step > 0].swapped.notna().all() and (ev.zeta.dropna() <= 0.3).all()
    for fig in ("dst_accuracy", "dst_flops", "dst_itop", "dst_swaps"):
        assert (dst_run / "figures" / f"{fig}.png").stat().st_size > 10_000


def test_dst_final_model_keeps_pruned_weights_zero_after_reload(dst_run):
    cfg = compose_cfg("experiment=dst_mnist")
    ck = torch.load(dst_run / "checkpoints/final.pt", weights_only=True)
    model = models.build(cfg.model, DataSpec("mnist", (1, 28, 28), 10), seed=5)
    model.load_state_dict(ck["model"])
    masks = MaskSet(prunable(model, cfg.method.policy))
    masks.load_state_dict(ck["masks"])
    assert masks.violations() == {}


@pytest.mark.parametrize("override, message", [
    ("method.schedule.zeta0=0", r"^method.schedule.zeta0: got 0"),
    ("method.schedule.zeta0=1.5", r"^method.schedule.zeta0: got 1.5"),
    ("method.schedule.every_steps=0", r"^method.schedule.every_steps: got 0"),
    ("method.schedule.end_step=20000", r"^method.schedule.end_step: got 20000; must be in \[1, 11000\]"),
    ("method.schedule.variants=[static,sett]", r"^method.schedule.variants\[1\]: got 'sett'.*rigl"),
    ("method.schedule.sparsities=[0.9,1.0]", r"^method.schedule.sparsities\[1\]: got 1.0"),
    ("method.schedule.sparsities=[-0.1]", r"^method.schedule.sparsities\[0\]: got -0.1"),
    ("method.selection.scope=global", r"^method.selection.scope \(schedule.kind=dynamic\): got 'global'"),
    ("method.schedule.long_variants=[gmp]", r"^method.schedule.long_variants\[0\]: got 'gmp'"),
    ("train.replicates=2", r"^train.replicates: got 2 with method.schedule.kind=dynamic"),
], ids=["zeta0_zero", "zeta0_above_one", "delta_t_zero", "t_end_beyond_training", "unknown_arm", "sparsity_one",
        "negative_sparsity", "global_scope", "long_gmp", "replicates"])
def test_bad_dynamic_settings_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        effective(compose_cfg("experiment=dst_mnist", override), explicit=[override.split("=")[0]])
    assert "\n" not in str(err.value)


def test_bad_dynamic_setting_on_the_command_line_writes_nothing(tmp_path):
    proc = run_cli("experiment=dst_mnist", "budget=smoke", "method.schedule.zeta0=2", f"paths.results_dir={tmp_path}/r",
                   check=False, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: method.schedule.zeta0: got 2")
    assert not (tmp_path / "r").exists()


# -- DSL on implicit feedback ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dsl_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dsl")
    run_cli("experiment=dsl_recsys", "budget=smoke", "threads=1", "progress=false", "method.schedule.every_steps=5",
            f"paths.results_dir={root}")
    return root / "dsl_recsys" / "budget=smoke,method.schedule.every_steps=5"


def test_dsl_smoke_ranks_with_recall_and_ndcg_at_exact_budgets(dsl_run):
    summary, layers = pd.read_csv(dsl_run / "summary.csv"), pd.read_csv(dsl_run / "layers.csv")
    assert set(summary.variant) == {"dense", "static", "dsl", "prune_ft", "small_dense"}
    assert summary.test_ndcg.between(0, 1).all() and summary.test_acc.between(0, 1).all()
    sparse = summary[summary.variant.isin(["static", "dsl", "prune_ft"])]
    assert (sparse.nonzeros == (sparse.target_density * sparse.prunable).round()).all()
    assert set(layers.layer) == {"user.weight", "item.weight"}
    for _, ev in layers[layers.variant == "dsl"].groupby("round"):
        start = ev[ev.step == 0].set_index("layer").nonzeros
        assert all(e.set_index("layer").nonzeros.equals(start) for _, e in ev.groupby("step"))
    flops = summary.set_index(["variant", "round"]).train_flops_ratio
    assert flops["static", 1] == pytest.approx(0.2, abs=0.01) and flops["prune_ft", 1] > 1
    metrics = [line for line in (dsl_run / "metrics.jsonl").read_text().splitlines() if '"dsl"' in line]
    assert '"test_ndcg"' in metrics[-1] and '"itop"' in metrics[-1]
    assert (dsl_run / "figures" / "dst_accuracy.png").stat().st_size > 10_000


@pytest.mark.parametrize("overrides, message", [
    (["experiment=dsl_recsys", "model=lenet_300_100"], r"^model.arch: got 'mlp'; dataset implicit_synth gives"),
    (["experiment=dst_mnist", "model=mf_bpr"], r"^model.arch: mf needs \(user, item\) interactions"),
    (["experiment=dsl_recsys", "method=dense", "train.replicates=2"], r"^train.replicates: got 2 with dataset.layout"),
    (["experiment=dsl_recsys", "method.schedule.dense=false"], r"^method.schedule.dense: got false; variant prune_ft"),
], ids=["mlp_on_interactions", "mf_on_images", "replicates_on_ranking", "prune_ft_without_dense"])
def test_mismatched_model_data_or_arms_are_one_line_errors(tmp_path, overrides, message):
    import re

    proc = run_cli(*overrides, "budget=smoke", "progress=false", f"paths.results_dir={tmp_path}/r", check=False,
                   timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and re.match(r"^error: " + message[1:], err), err


def test_dynamic_models_export_with_their_zeros_and_embeddings_refuse_compressed_formats(dst_run, dsl_run):
    from sparse_run.export import export, load

    out = export(dst_run, "csr")  # raises unless the loaded CSR model computes what the masked model computes
    assert (out / "model.safetensors").exists()
    out = export(dsl_run, "masked")
    model = load(out)
    assert hasattr(model, "all_scores") and (model.user.weight == 0).float().mean() > 0.5
    with pytest.raises(ValueError, match="format csr: user.weight, item.weight are not Linear / Conv weights"):
        export(dsl_run, "csr")
