"""Every method config end to end at budget=smoke (tiny overrides): exact sparsity at every pruning
event, pruned weights exactly zero under momentum + weight decay and after a checkpoint reload;
the new experiments; validation of the method fields."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from conftest import compose_cfg, run_cli
from sparse_run import execute as execute_mod
from sparse_run import models
from sparse_run.config import ConfigError
from sparse_run.data import DataSpec
from sparse_run.execute import effective
from sparse_run.sparsity import MaskSet, cubic_sparsity, gradual_events, prunable

SGD = ["train.optimizer=sgd", "train.lr=0.05", "train.momentum=0.9", "train.weight_decay=1e-3"]
AT_INIT = ["method.schedule.densities=[0.1,0.01]"]
METHODS = {
    "dense": [],
    "imp": ["method.schedule.rounds=2"],
    "ltr": ["method.schedule.rounds=1", "method.controls.variants=[reinit,random]", "method.controls.rounds=[1]"],
    "finetune": ["method.schedule.rounds=1", "method.selection.scope=global"],
    "oneshot": ["method.schedule.sparsities=[0.5,0.95]", "method.schedule.finetune_steps=5000",
                "method.controls.variants=[small_dense]"],
    "random": AT_INIT,
    "magnitude_init": AT_INIT + ["method.selection.scope=erk"],
    "snip": AT_INIT,
    "grasp": AT_INIT + ["method.selection.scope=layerwise"],
    "synflow": AT_INIT + ["method.synflow_rounds=10"],
    "pai": ["method.schedule.densities=[0.03]", "method.synflow_rounds=5"],
    "gmp": ["method.schedule.final_sparsity=[0.9]"],
    "gmp_global": ["method.schedule.final_sparsity=[0.8,0.95]", "method.selection.scope=global",
                   "method.controls.variants=[small_dense]"],
}


def run_method(tmp_path, method: str, *overrides: str):
    cfg = effective(compose_cfg(f"method={method.split('_global')[0]}", "budget=smoke", f"paths.results_dir={tmp_path}",
                                "progress=false", *overrides))
    out = execute_mod.execute(cfg, tmp_path / "run")
    return cfg, out


@pytest.mark.parametrize("method", list(METHODS))
def test_method_invariants(tmp_path, method):
    cfg, out = run_method(tmp_path, method, *SGD, *METHODS[method])
    summary, layers = pd.read_csv(out / "summary.csv"), pd.read_csv(out / "layers.csv")
    assert summary.status.isin(["ok", "at_chance"]).all() and set(summary.variant) <= {"dense", "ticket", "reinit", "sparse",
                                                                        "small_dense"}
    # achieved = target at every pruning event: per layer within one weight, in total within one per layer
    per_layer = layers.dropna(subset=["target_density"])
    assert ((per_layer.nonzeros - per_layer.target_density * per_layer.numel).abs() <= 1).all()
    for _, ev in layers.groupby(["method", "variant", "round", "step"]):
        n = ev.numel.sum()
        assert abs(ev.nonzeros.sum() - ev.total_target_density.iloc[0] * n) <= len(ev)
        assert ev.nonzeros.sum() / n == pytest.approx(ev.total_density.iloc[0], abs=1e-6)
    arms = summary[summary.variant != "small_dense"]
    assert ((arms.nonzeros - arms.target_density * arms.prunable).abs() <= 3).all()
    assert (summary.nnz_params > 0).all()
    # pruned weights are exactly zero after SGD with momentum and weight decay, and after a reload
    ck = torch.load(out / "checkpoints/final.pt", weights_only=True)
    model = models.build(cfg.model, DataSpec("mnist", (1, 28, 28), 10), seed=123)
    model.load_state_dict(ck["model"])
    masks = MaskSet(prunable(model, cfg.method.policy))
    masks.load_state_dict(ck["masks"])
    assert masks.violations() == {}
    last = summary[summary.variant.isin(["sparse", "ticket", "dense"])].iloc[-1]
    assert masks.nonzeros() == last.nonzeros
    assert (out / "figures/accuracy_vs_density.png").stat().st_size > 10_000


def test_gradual_follows_the_cubic_schedule_then_freezes(tmp_path):
    cfg, out = run_method(tmp_path, "gmp", "method.schedule.final_sparsity=[0.9]", "method.schedule.initial_sparsity=0.1")
    s = cfg.method.schedule
    layers = pd.read_csv(out / "layers.csv").query("variant == 'sparse'")
    events = gradual_events(s.start_step, s.end_step, s.every_steps)
    assert sorted(layers.step.unique().tolist()) == events
    for step, ev in layers.groupby("step"):
        planned = 1 - cubic_sparsity(step, 0.1, 0.9, s.start_step, s.end_step)
        assert ev.total_target_density.iloc[0] == pytest.approx(planned, abs=1e-6)
    final = torch.load(out / "masks/round_01.pt", weights_only=True)
    last = layers[layers.step == events[-1]]
    assert [int(final[n].sum()) for n in last.layer] == last.nonzeros.tolist()  # frozen after end_step
    row = pd.read_csv(out / "summary.csv").query("variant == 'sparse'").iloc[0]
    assert row.early_stop_step >= s.end_step  # early stop only among evaluations of the final mask


def test_oneshot_prunes_the_same_trained_weights_and_records_accuracy_before_finetuning(tmp_path):
    cfg, out = run_method(tmp_path, "oneshot", "method.schedule.sparsities=[0.5,0.9]",
                          "method.schedule.finetune_steps=5000")
    summary = pd.read_csv(out / "summary.csv")
    sparse = summary.query("variant == 'sparse'")
    assert sparse.test_acc_before_finetune.notna().all() and sparse.steps.tolist() == [20, 20]
    dense = torch.load(out / "checkpoints/round_00.pt", weights_only=True)["model"]
    m1 = torch.load(out / "masks/magnitude/round_02.pt", weights_only=True)
    w = dense["hidden.0.weight"]
    kept, dropped = w[m1["hidden.0.weight"]].abs(), w[~m1["hidden.0.weight"]].abs()
    assert kept.min() >= dropped.max()  # the 90 % mask is a magnitude cut of the trained dense weights


# -- experiments -----------------------------------------------------------------------------

def run_experiment(tmp_path, name: str, *overrides: str):
    cfg = effective(compose_cfg(f"experiment={name}", "budget=smoke", f"paths.results_dir={tmp_path}",
                                "progress=false", *overrides))
    return pd.read_csv(execute_mod.execute(cfg, tmp_path / name) / "summary.csv")


def test_gmp_mnist_large_sparse_vs_small_dense_at_matched_nnz(tmp_path):
    s = run_experiment(tmp_path, "gmp_mnist", "method.schedule.final_sparsity=[0.9,0.98]")
    assert s.variant.value_counts().to_dict() == {"dense": 1, "sparse": 2, "small_dense": 2}
    for r in (1, 2):
        sparse, small = s[(s["round"] == r) & (s.variant == "sparse")].iloc[0], \
            s[(s["round"] == r) & (s.variant == "small_dense")].iloc[0]
        assert small.matched_nnz == sparse.nnz_params
        # never fewer; above by at most one step of the integer hidden sizes ([8, 3] vs [8, 2] at 98 %)
        assert sparse.nnz_params <= small.nnz_params <= sparse.nnz_params * 1.1
        assert small.width < 1 and small.density == 1


def test_pai_mnist_compares_criteria_in_one_run(tmp_path):
    s = run_experiment(tmp_path, "pai_mnist", "method.criteria=[random,snip,synflow]",
                       "method.schedule.densities=[0.1,0.00316228]", "method.synflow_rounds=5")
    arms = s[s.variant == "sparse"]
    assert list(dict.fromkeys(arms.method)) == ["random", "snip", "synflow"]
    assert arms.groupby("method").size().tolist() == [2, 2, 2]
    assert (arms.nonzeros == (arms.target_density * arms.prunable).round()).all()
    assert len(s[s.variant == "dense"]) == 1


def test_rewind_mnist_runs_three_chains_and_random_control(tmp_path):
    s = run_experiment(tmp_path, "rewind_mnist", "method.schedule.rounds=1", "budget.control_rounds=[1]")
    assert set(s.method) == {"rewind", "lth", "ltr", "finetune", "random"}  # rewind: the shared dense round
    r1 = s[s["round"] == 1]
    assert r1.nonzeros.nunique() == 1  # matched densities across LTH, LTR, fine-tune and random


def test_new_experiment_runs_from_the_cli(tmp_path):
    run_cli("experiment=gmp_mnist", "budget=smoke", "threads=1", f"paths.results_dir={tmp_path}",
            "method.schedule.final_sparsity=[0.95]")
    s = pd.read_csv(tmp_path / "gmp_mnist" / "budget=smoke,method.schedule.final_sparsity=[0.95]" / "summary.csv")
    assert set(s.variant) == {"dense", "sparse", "small_dense"}


# -- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, field", [
    (["method=gmp", "method.selection.scope=diagonal"], "method.selection.scope"),
    (["method=gmp", "method.schedule.every_steps=0"], "method.schedule.every_steps"),
    (["method=gmp", "method.schedule.end_step=60000"], "method.schedule.end_step"),
    (["method=gmp", "method.schedule.start_step=40000", "method.schedule.end_step=30000"], "method.schedule.end_step"),
    (["method=gmp", "method.schedule.initial_sparsity=0.95"], "method.schedule.initial_sparsity"),
    (["method=gmp", "method.schedule.final_sparsity=[0.9,1.0]"], "method.schedule.final_sparsity[1]"),
    (["method=pai", "method.criteria=[snip,bogus]"], "method.criteria[1]"),
    (["method=pai", "method.criteria=[snip,snip]"], "method.criteria"),
    (["method=pai", "method.criteria=[]"], "method.criteria"),
    (["method=snip", "method.schedule.densities=[0]"], "method.schedule.densities[0]"),
    (["method=snip", "method.schedule.sparsities=[0.5]"], "method.schedule"),
    (["method=snip", "method.synflow_rounds=0"], "method.synflow_rounds"),
    (["method=grasp", "method.grasp_temperature=0"], "method.grasp_temperature"),
    (["method=oneshot", "method.schedule.finetune_steps=0"], "method.schedule.finetune_steps"),
    (["method=imp", "method.criterion=snip"], "method.criterion"),
    (["method=imp", "method.selection.scope=erk"], "method.selection.scope"),
    (["method=imp", "method.controls.variants=[small_dense]"], "method.controls.variants"),
    (["method=imp", "method.schedule.rewinds=[init,init]"], "method.schedule.rewinds"),
    (["method=imp", "method.schedule.rewinds=[init,later]"], "method.schedule.rewinds[1]"),
    (["method=gmp", "method.controls.variants=[reinit]"], "method.controls.variants"),
    (["method=imp", "+method.policy.rate_scale.out=-1"], "method.policy.rate_scale"),
])
def test_bad_method_fields_are_rejected(overrides, field):
    with pytest.raises(ConfigError) as e:
        effective(compose_cfg(*overrides))
    assert e.value.field.startswith(field), str(e.value)


def test_bad_method_field_from_the_cli_is_one_line(tmp_path):
    proc = run_cli("method=gmp", "method.schedule.every_steps=0", f"paths.results_dir={tmp_path}", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "method.schedule.every_steps" in proc.stderr and not any(tmp_path.iterdir())


def test_rank_orders_methods_per_level_and_seed(capsys):
    from sparse_run.execute import rank_methods

    rows = [{"variant": "dense", "method": "pai", "seed": 0, "target_density": 1.0, "test_acc": 0.98}]
    for m, accs in {"random": (0.90, 0.11), "snip": (0.95, 0.57), "synflow": (0.94, 0.74)}.items():
        for d, a in zip((0.1, 0.00316), accs):
            rows.append({"variant": "sparse", "method": m, "seed": 0, "target_density": d, "test_acc": a})
    rank_methods(rows)
    ranks = {(r["method"], r["target_density"]): r["rank"] for r in rows if r["variant"] == "sparse"}
    assert ranks[("snip", 0.1)] == 1 and ranks[("random", 0.1)] == 3
    assert [ranks[(m, 0.00316)] for m in ("synflow", "snip", "random")] == [1, 2, 3]
    assert "rank" not in rows[0]
    assert "synflow 74.0 > snip 57.0 > random 11.0" in capsys.readouterr().out
