"""The sparse-RNN experiments (Darji's thesis): one-shot pruning of RNN matrices per cell × scope,
RNNs on random-graph masks, their statistics, and the gradient clip they train with."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import compose_cfg, run_cli
from sparse_run import graph_rnn, pipeline
from sparse_run.config import effective
from sparse_run.data import DataBundle, DataSpec
from sparse_run.sparsity import MaskSet
from sparse_run.train import train
from sparse_run.validate import ConfigError

# Seconds on one thread: a sliver of the data, a few steps, one or two cells.
TINY = ["budget=smoke", "threads=1", "budget.min_steps=1", "budget.train_subset=256", "budget.eval_subset=128",
        "budget.evals=1"]


def run_tiny(name: str, tmp_path, *extra: str):
    cfg = effective(compose_cfg(f"experiment={name}", f"paths.results_dir={tmp_path}",
                                f"paths.data_dir={tmp_path / 'no-data'}", *TINY, *extra))
    return pipeline.execute(cfg, tmp_path / "run")


def test_experiments_carry_the_thesis_protocol():
    reber = effective(compose_cfg("experiment=rnn_prune_reber"))
    seq = effective(compose_cfg("experiment=rnn_prune_seq_mnist"))
    for c in (reber, seq):
        t, s = c.train, c.method.schedule
        assert (t.optimizer, t.lr, t.batch_size, t.grad_clip) == ("adam", 1e-3, 32, 5.0)
        assert [round(x, 2) for x in s.sparsities] == [round(0.1 * k, 2) for k in range(1, 11)]
        assert [m["cell"] for m in s.models] == ["tanh", "relu", "gru", "lstm"]
        assert [p["label"] for p in c.method.policies] == ["i2h+h2h", "i2h", "h2h"]
        assert list(c.method.policy.layers) == ["rnn"] and s.finetune_evals == 10
    assert (reber.model.layers, reber.model.hidden, reber.model.embedding) == (3, 50, 50)
    assert reber.train.steps == 50 * 527 and reber.method.schedule.finetune_steps == 10 * 527
    quick = effective(compose_cfg("experiment=rnn_prune_seq_mnist", "budget=quick"))
    assert list(quick.method.schedule.sparsities) == [0.5, 0.7, 0.8, 0.9, 1.0]
    # a command-line value beats the experiment's per-budget sizes
    over = effective(compose_cfg("experiment=rnn_prune_seq_mnist", "budget=quick", "method.schedule.sparsities=[0.3]"))
    assert list(over.method.schedule.sparsities) == [0.3]
    graph = effective(compose_cfg("experiment=rnn_random_graph_reber"))
    assert graph.method.schedule.graphs == 100 and graph.train.batch_size == 128 and graph.train.steps == 15 * 131


def test_rnn_prune_smoke_prunes_each_scope_and_zeroes_everything_at_100(tmp_path):
    run = run_tiny("rnn_prune_reber", tmp_path, "method.schedule.models=[{cell:gru}]",
                   "train.steps=2000", "method.schedule.finetune_steps=1000")
    summary = pd.read_csv(run / "summary.csv")
    assert list(summary.method) == ["gru", "gru/i2h+h2h", "gru/i2h+h2h", "gru/i2h", "gru/i2h", "gru/h2h", "gru/h2h"]
    sparse = summary[summary.variant == "sparse"]
    assert (sparse.nonzeros[sparse.target_density == 0] == 0).all()
    assert (sparse.density == sparse.target_density).all()
    assert sparse.test_acc_before_finetune.notna().all()
    assert sparse.test_acc_ft_2.notna().all() and "test_acc_ft_3" not in summary  # 4 steps, 2 evaluations
    layers = pd.read_csv(run / "layers.csv")
    by_arm = layers.groupby("method").layer.apply(set)
    assert all("weight_ih" in n for n in by_arm["gru/i2h"]) and all("weight_hh" in n for n in by_arm["gru/h2h"])
    assert len(by_arm["gru/i2h+h2h"]) == 6
    # the last arm is h2h at 100 %: every W_hh exactly zero, every W_ih untouched (dense)
    final = torch.load(run / "checkpoints/final.pt", weights_only=True)["model"]
    for k in range(3):
        assert (final[f"rnn.weight_hh_l{k}"] == 0).all()
        assert (final[f"rnn.weight_ih_l{k}"] != 0).all()
    masks = torch.load(run / "masks/gru/i2h/magnitude/round_02.pt", weights_only=True)
    assert set(masks) == {f"rnn.weight_ih_l{k}" for k in range(3)} and not any(m.any() for m in masks.values())
    assert (run / "figures/rnn_prune.png").exists()


def test_rnn_prune_seq_mnist_runs_at_smoke_on_the_stand_in(tmp_path):
    run = run_tiny("rnn_prune_seq_mnist", tmp_path, "dataset=synthetic_seq_mnist", "model.hidden=16",
                   "method.schedule.models=[{cell:lstm},{cell:tanh}]", "method.schedule.sparsities=[1.0]",
                   "train.steps=2000", "method.schedule.finetune_steps=500")
    summary = pd.read_csv(run / "summary.csv")
    assert set(summary.dataset) == {"synthetic_seq_mnist"} and summary.status.isin(["ok", "at_chance"]).all()
    assert list(summary.model_arm) == ["lstm"] * 4 + ["tanh"] * 4
    assert list(summary.policy_arm.fillna("")) == ["", "i2h+h2h", "i2h", "h2h"] * 2
    assert (summary[summary.variant == "sparse"].nonzeros == 0).all()


def test_graph_mask_is_the_graphs_acyclic_adjacency():
    import networkx as nx

    g = nx.Graph([(0, 1), (1, 2), (0, 2), (2, 3)])
    adj = graph_rnn.adjacency(g, seed=3)
    unit = graph_rnn.unit_order(g, 3)
    assert sorted(unit.values()) == [0, 1, 2, 3]
    assert int(adj.sum()) == g.number_of_edges() and not torch.tril(adj).any()  # each edge once, low → high
    for u, v in g.edges():
        assert adj[min(unit[u], unit[v]), max(unit[u], unit[v])]
    mask = graph_rnn.hh_mask(adj, gates=4)
    assert mask.shape == (16, 4)
    for gate in range(4):
        assert torch.equal(mask[gate * 4:(gate + 1) * 4], adj.t())  # row = receiving unit, column = sender
    props = graph_rnn.properties(g, adj)
    assert (props["nodes"], props["edges"], props["diameter"]) == (4, 4, 2)
    assert props["sources"] == int((adj.sum(0) == 0).sum()) >= 1 and math.isclose(props["density"], 4 / 6)


def test_graph_rnn_smoke_masks_match_the_drawn_graphs(tmp_path):
    run = run_tiny("rnn_random_graph_reber", tmp_path, "method.schedule.graphs=3", "method.schedule.nodes=[10,12]",
                   "train.steps=1000")
    summary = pd.read_csv(run / "summary.csv")
    assert len(summary) == 6 and set(summary.graph_family) == {"ba", "ws"}
    cfg = OmegaConf.load(run / "config.yaml")
    fake = pipeline.Run(cfg=cfg, dir=run, data=None, writer=None, log=None, device=torch.device("cpu"))
    for row in summary.itertuples():
        g, adj, seed = graph_rnn.graph_spec(fake, row.graph_family, int(row.round) - 1)
        assert seed == row.graph_seed and g.number_of_nodes() == row.graph_nodes
        masks = torch.load(run / f"masks/lstm/{row.graph_family}/graph_{int(row.round):03d}.pt", weights_only=True)
        assert set(masks) == {f"rnn.weight_hh_l{k}" for k in range(3)}
        assert all(torch.equal(m, graph_rnn.hh_mask(adj, 4)) for m in masks.values())
        assert row.nonzeros == 3 * 4 * g.number_of_edges()
    corr = pd.read_csv(run / "correlations.csv")
    assert set(corr.property) == set(graph_rnn.PROPERTIES) and set(corr.graph_family) == {"all", "ba", "ws"}
    nodes = corr[(corr.graph_family == "all") & (corr.property == "nodes")].iloc[0]
    r, _ = graph_rnn.pearson(summary.graph_nodes.tolist(), summary.test_acc.tolist())
    assert nodes.n == 6 and (math.isclose(nodes.r, r, rel_tol=1e-5) or (math.isnan(r) and math.isnan(nodes.r)))
    assert (run / "figures/graph_rnn.png").exists()


def test_pearson_and_its_p_value_on_known_examples():
    r, p = graph_rnn.pearson([1, 2, 3, 4, 5], [2, 4, 5, 4, 5])
    assert math.isclose(r, 0.7745966692414834, rel_tol=1e-12) and math.isclose(p, 0.12402706265755825, rel_tol=1e-9)
    assert math.isclose(graph_rnn.pearson([0, 1, 2], [0, 2, 4])[1], 0.0)
    assert all(math.isnan(v) for v in graph_rnn.pearson([1, 1, 1], [1, 2, 3]))
    # two-sided p at t = t_0.975(8) = 2.306004 is 0.05: p = I_{df/(df+t²)}(df/2, 1/2)
    assert math.isclose(graph_rnn.betainc(4.0, 0.5, 8 / (8 + 2.306004 ** 2)), 0.05, abs_tol=1e-6)
    rows = [{"model_arm": "gru", "graph_family": f, "graph_nodes": n, "test_acc": a,
             **{f"graph_{p}": 1.0 for p in graph_rnn.PROPERTIES if p != "nodes"}}
            for f, n, a in [("ba", 10, 0.5), ("ba", 20, 0.6), ("ws", 30, 0.8), ("ws", 40, 0.7)]]
    out = {(c["graph_family"], c["property"]): c for c in graph_rnn.correlations(rows)}
    assert math.isclose(out[("all", "nodes")]["r"], graph_rnn.pearson([10, 20, 30, 40], [0.5, 0.6, 0.8, 0.7])[0])
    assert math.isnan(out[("all", "edges")]["r"]) and math.isnan(out[("ba", "nodes")]["r"])  # constant / n < 3


def test_grad_clip_bounds_each_step_and_keeps_pruned_weights_zero():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    masks = MaskSet({"0.weight": model[0].weight})
    keep = torch.rand(3, 6) > 0.5
    masks.set({"0.weight": keep})
    x, y = torch.randn(32, 6) * 50, torch.randint(0, 3, (32,))
    data = DataBundle(DataSpec("toy", (6,), 3), x, y, x[:8], y[:8], x[:8], y[:8])
    before = [p.detach().clone() for p in model.parameters()]
    tcfg = OmegaConf.create({"optimizer": "sgd", "lr": 1.0, "batch_size": 32, "grad_clip": 1e-3})
    train(model, masks, data, tcfg, steps=1, eval_every=1, seed=0)
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert 0 < float(moved) <= 1e-3 * (1 + 1e-5)
    assert (model[0].weight[~keep] == 0).all()


@pytest.mark.parametrize("override,field", [
    ("method.schedule.models=[{cel:gru}]", "method.schedule.models[0].cel"),
    ("method.schedule.models=[{cell:gru},{cell:gru}]", "method.schedule.models"),
    ("method.schedule.finetune_evals=0", "method.schedule.finetune_evals"),
    ("method.schedule.sparsities=[1.5]", "method.schedule.sparsities[0]"),
    ("train.grad_clip=-1", "train.grad_clip"),
    ("method.schedule.models=[{cell:elman}]", "method.schedule.models[0].cell"),
])
def test_bad_rnn_prune_fields_are_one_line_errors(override, field):
    with pytest.raises(ConfigError) as e:
        effective(compose_cfg("experiment=rnn_prune_reber", override))
    assert str(e.value).startswith(field) and "\n" not in str(e.value)


@pytest.mark.parametrize("overrides,field", [
    (["method.schedule.families=[er]"], "method.schedule.families[0]"),
    (["method.schedule.nodes=[10]"], "method.schedule.nodes"),
    (["method.policy.exclude=[]"], "method.policy"),
    (["model.width=0.5"], "model"),
])
def test_bad_graph_fields_are_one_line_errors(overrides, field):
    with pytest.raises(ConfigError) as e:
        effective(compose_cfg("experiment=rnn_random_graph_reber", *overrides))
    assert str(e.value).startswith(field)


def test_arms_only_where_a_runner_uses_them_and_100_percent_only_for_oneshot():
    with pytest.raises(ConfigError, match=r"^method.policies"):
        effective(compose_cfg("experiment=lottery_mnist", "+method.policies=[{label:a,exclude:[]}]"))
    with pytest.raises(ConfigError, match=r"^method.schedule.sparsities\[0\]"):
        effective(compose_cfg("method=random", "method.schedule.densities=null", "method.schedule.sparsities=[1.0]"))
    effective(compose_cfg("method=oneshot", "method.schedule.sparsities=[1.0]"))  # one-shot may prune everything


def test_cli_prints_one_line_for_a_bad_cell():
    proc = run_cli("experiment=rnn_prune_reber", "budget=smoke", "method.schedule.models=[{cell:elman}]",
                   check=False, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "method.schedule.models[0].cell" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name,extra", [("rnn_prune_reber", []), ("rnn_prune_seq_mnist", ["dataset=synthetic_seq_mnist"]),
                                        ("rnn_random_graph_reber", [])])
def test_experiment_runs_at_plain_smoke(name, extra, tmp_path):
    """``budget=smoke`` untrimmed, through the CLI (all four cells for the pruning experiments)."""
    run_cli(f"experiment={name}", "budget=smoke", "threads=1", f"paths.results_dir={tmp_path}", *extra)
    summary = pd.read_csv(next(tmp_path.rglob("summary.csv")))
    assert summary.status.isin(["ok", "at_chance"]).all()
    if name != "rnn_random_graph_reber":
        assert len(summary) == 4 * (1 + 3 * 2)  # cells × (dense + scopes × levels)
        assert (summary[summary.target_density == 0].nonzeros == 0).all()
    else:
        assert len(summary) == 2 * 2 and next(tmp_path.rglob("correlations.csv")).exists()
