"""The sparse-RNN experiments (Darji's thesis): one-shot pruning of RNN matrices per cell × scope,
RNNs on random-graph masks, their statistics, and the gradient clip they train with."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import compose_cfg, run_cli
from sparse_run import execute as execute_mod
from sparse_run.config import ConfigError
from sparse_run.data import DataBundle, DataSpec
from sparse_run.engine import run as run_mod
from sparse_run.engine.train import train
from sparse_run.execute import effective
from sparse_run.report import graph_stats
from sparse_run.sparsity import MaskSet, select
from sparse_run.sparsity.selection import percentile
from sparse_run.studies import graph_rnn

# Seconds on one thread: a sliver of the data, a few steps, one or two cells.
TINY = ["budget=smoke", "threads=1", "budget.min_steps=1", "budget.train_subset=256", "budget.eval_subset=128",
        "budget.evals=1"]


def run_tiny(name: str, tmp_path, *extra: str):
    cfg = effective(compose_cfg(f"experiment={name}", f"paths.results_dir={tmp_path}",
                                f"paths.data_dir={tmp_path / 'no-data'}", *TINY, *extra))
    return execute_mod.execute(cfg, tmp_path / "run")


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
    assert reber.method.selection.scope == seq.method.selection.scope == "percentile"  # the thesis' pooled threshold
    graph = effective(compose_cfg("experiment=rnn_random_graph_reber"))
    assert graph.method.schedule.graphs == 100 and graph.train.batch_size == 128 and graph.train.steps == 15 * 131


def test_rnn_prune_smoke_pools_one_percentile_threshold_over_all_layers(tmp_path):
    run = run_tiny("rnn_prune_reber", tmp_path, "method.schedule.models=[{cell:gru}]",
                   "train.steps=2000", "method.schedule.finetune_steps=1000")
    summary = pd.read_csv(run / "summary.csv")
    assert list(summary.method) == ["gru", "gru/i2h+h2h", "gru/i2h+h2h", "gru/i2h", "gru/i2h", "gru/h2h", "gru/h2h"]
    sparse = summary[summary.variant == "sparse"]
    assert sparse.test_acc_before_finetune.notna().all()
    assert sparse.test_acc_ft_2.notna().all() and "test_acc_ft_3" not in summary  # 4 steps, 2 evaluations
    layers = pd.read_csv(run / "layers.csv")
    by_arm = layers.groupby("method").layer.apply(set)
    assert all("weight_ih" in n for n in by_arm["gru/i2h"]) and all("weight_hh" in n for n in by_arm["gru/h2h"])
    assert len(by_arm["gru/i2h+h2h"]) == 6
    # every mask is |W| >= numpy's p-th percentile of |W| pooled over the scope's matrices of all three layers
    dense = torch.load(run / "checkpoints/gru/round_00.pt", weights_only=True)["model"]
    for scope, kinds in (("i2h+h2h", ("ih", "hh")), ("i2h", ("ih",)), ("h2h", ("hh",))):
        names = [f"rnn.weight_{m}_l{k}" for k in range(3) for m in kinds]
        pooled = np.concatenate([dense[n].abs().numpy().ravel() for n in names])
        for r, p in ((1, 50), (2, 100)):
            masks = torch.load(run / f"masks/gru/{scope}/magnitude/round_{r:02d}.pt", weights_only=True)
            assert set(masks) == set(names)
            t = np.percentile(pooled, p)
            for n in names:
                assert torch.equal(masks[n], dense[n].abs() >= float(t)), (scope, p, n)
            if p == 100:  # the thesis keeps |W| >= max: only the pooled maximum survives
                assert sum(int(m.sum()) for m in masks.values()) == 1
    assert (sparse[sparse.target_density == 0].nonzeros == 1).all()
    # the last arm is h2h at 100 %: W_hh zero but for the pooled maximum, every W_ih untouched (dense)
    final = torch.load(run / "checkpoints/final.pt", weights_only=True)["model"]
    assert sum(int((final[f"rnn.weight_hh_l{k}"] != 0).sum()) for k in range(3)) == 1
    assert all((final[f"rnn.weight_ih_l{k}"] != 0).all() for k in range(3))
    assert (run / "figures/rnn_prune.png").exists()


def test_rnn_prune_per_matrix_threshold_stays_an_option(tmp_path):
    run = run_tiny("rnn_prune_reber", tmp_path, "method.schedule.models=[{cell:gru}]",
                   "method.selection.scope=layerwise", "method.policies=[{label:i2h+h2h,exclude:[]}]",
                   "train.steps=2000", "method.schedule.finetune_steps=1000")
    layers = pd.read_csv(run / "layers.csv")
    sparse = layers[layers.method == "gru/i2h+h2h"]
    assert len(sparse) == 12 and (sparse.density == sparse.target_density).all()  # each matrix at its own percentile
    final = torch.load(run / "checkpoints/final.pt", weights_only=True)["model"]
    assert all((final[f"rnn.weight_{m}_l{k}"] == 0).all() for k in range(3) for m in ("ih", "hh"))  # 100 %: all zero


def test_rnn_prune_seq_mnist_runs_at_smoke_on_the_stand_in(tmp_path):
    run = run_tiny("rnn_prune_seq_mnist", tmp_path, "dataset=synthetic_seq_mnist", "model.hidden=16",
                   "method.schedule.models=[{cell:lstm},{cell:tanh}]", "method.schedule.sparsities=[1.0]",
                   "train.steps=2000", "method.schedule.finetune_steps=500")
    summary = pd.read_csv(run / "summary.csv")
    assert set(summary.dataset) == {"synthetic_seq_mnist"} and summary.status.isin(["ok", "at_chance"]).all()
    assert list(summary.model_arm) == ["lstm"] * 4 + ["tanh"] * 4
    assert list(summary.policy_arm.fillna("")) == ["", "i2h+h2h", "i2h", "h2h"] * 2
    assert (summary[summary.variant == "sparse"].nonzeros == 1).all()  # 100 %: only the pooled maximum survives


def test_pooled_percentile_threshold_matches_numpy_on_a_hand_made_model():
    """The thesis' PruneRNN: one np.percentile (linear) of |W| over all chosen matrices; |W| >= it survives."""
    rnn = nn.RNN(2, 3, num_layers=2)
    with torch.no_grad():  # layer 0 small, layer 1 large weights (ties included): pooling prunes layer 0 first
        rnn.weight_ih_l0.copy_(torch.tensor([[0.1, -0.2], [0.3, 0.1], [-0.05, 0.2]]))
        rnn.weight_hh_l0.copy_(torch.full((3, 3), 0.15) * torch.tensor([1.0, -1.0, 2.0]))
        rnn.weight_ih_l1.copy_(torch.arange(9.0).view(3, 3) - 4.5)
        rnn.weight_hh_l1.copy_(torch.tensor([[2.0, -3.0, 1.0], [0.5, 7.0, -7.0], [1.5, 2.5, 0.5]]))
    names = [f"weight_{m}_l{k}" for k in range(2) for m in ("ih", "hh")]
    scores = {n: getattr(rnn, n).detach().abs() for n in names}
    alive = {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    pooled = np.concatenate([s.numpy().ravel() for s in scores.values()])
    for p in (0, 10, 25, 33.3, 50, 70, 90, 99, 100):
        masks = select(scores, alive, 1 - p / 100, scope="percentile")
        t = np.percentile(pooled, p)
        assert math.isclose(percentile(torch.from_numpy(pooled), p), float(t), rel_tol=0, abs_tol=1e-12)
        for n in names:
            assert torch.equal(masks[n], torch.from_numpy(scores[n].numpy() >= t)), (p, n)
    assert sum(int(m.sum()) for m in select(scores, alive, 0.0, scope="percentile").values()) == 2  # the tied max, 7
    half = select(scores, alive, 0.5, scope="percentile")
    assert not half["weight_ih_l0"].any() and not half["weight_hh_l0"].any()  # small layer pruned whole
    per_matrix = select(scores, alive, 0.5, scope="layerwise")
    assert all(int(per_matrix[n].sum()) in (s.numel() // 2, -(-s.numel() // 2))  # each matrix its own half
               for n, s in scores.items())


def _toy_graph():
    """0→2, 1→2, 0→3, 2→3, 3→4, 1→5 (edges from the earlier node, as networkx lists them): layers [0, 1] ·
    [2, 5] · [3] · [4], one skip 0→3."""
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(range(6))
    g.add_edges_from([(0, 2), (1, 2), (0, 3), (2, 3), (3, 4), (1, 5)])
    return g


def test_graph_becomes_pypaddle_layers_with_masks_between_them_and_skips():
    lay = graph_rnn.layering(graph_rnn.dag(_toy_graph()))
    assert lay.layers == [[0, 1], [2, 5], [3], [4]] and lay.sizes == [2, 2, 1, 1]
    assert lay.skips == [(0, 2)]  # layer 0 → layer 2 (node 0 → 3); nothing reaches layer 3 from layers 0, 1
    assert lay.mask(0, 1).tolist() == [[True, True], [False, True]]  # rows: 2, 5; columns: 0, 1
    assert lay.mask(1, 2).tolist() == [[True, False]] and lay.mask(0, 2).tolist() == [[True, False]]
    lstm = graph_rnn.graph_masks(lay, "lstm", "repeat")
    assert set(lstm) == {"layers.1.weight_ih_l0", "layers.2.weight_ih_l0", "layers.3.weight_ih_l0",
                         "skips.0.weight_ih_l0", "skips.0.weight_hh_l0"}
    assert torch.equal(lstm["skips.0.weight_ih_l0"], lay.mask(0, 2).repeat_interleave(4, 0))  # one target block
    assert lstm["skips.0.weight_hh_l0"].all()  # a single block: its own dense hidden-to-hidden
    # the thesis code's np.repeat(mask, gates, 0): each row 4 times in a row; tile: the mask once per gate block
    assert lstm["layers.1.weight_ih_l0"].tolist() == [[True, True]] * 4 + [[False, True]] * 4
    tile = graph_rnn.graph_masks(lay, "lstm", "tile")["layers.1.weight_ih_l0"]
    assert tile.tolist() == [[True, True], [False, True]] * 4
    assert torch.equal(graph_rnn.graph_masks(lay, "tanh", "repeat")["layers.1.weight_ih_l0"], lay.mask(0, 1))


def test_graph_rnn_has_one_recurrent_layer_per_dag_layer_sized_by_its_nodes():
    from sparse_run.models.graph_rnn import GraphRNNClassifier

    lay = graph_rnn.layering(graph_rnn.dag(_toy_graph()))
    model = GraphRNNClassifier("gru", lay.sizes, lay.skips, vocab_size=8, num_classes=2)
    assert model.embed.embedding_dim == 2  # as wide as the source layer
    assert [(m.input_size, m.hidden_size) for m in model.layers] == [(2, 2), (2, 2), (2, 1), (1, 1)]
    assert [(m.input_size, m.hidden_size) for m in model.skips] == [(2, 1)] and model.out.in_features == 1
    params = dict(model.named_parameters())
    masks = graph_rnn.graph_masks(lay, "gru", "repeat")
    assert all(params[n].shape == m.shape for n, m in masks.items())
    assert not any(n.startswith("layers.") and "weight_hh" in n for n in masks)  # inside a DAG layer: dense
    x = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 1]])
    out = model(x)
    assert out.shape == (2, 2)
    with torch.no_grad():  # padding after the last real token changes nothing; the skip layer feeds layer 2
        assert torch.allclose(model(x[:, :3])[0], out[0], atol=1e-6)
        model.skips[0].weight_ih_l0.mul_(0).add_(5.0)
        assert not torch.allclose(model(x), out)


def _thesis_forward(model, lay, x):
    """The thesis' forward with one separate recurrent layer per skip pair, weights cut out of the fused blocks."""
    from sparse_run.models.graph_rnn import block_rows, cell_layer, skip_groups

    gates = graph_rnn.GATES[model.cell]
    separate = {}
    for (s, ts), mod in zip(skip_groups(lay.skips), model.skips):
        sizes = [lay.sizes[t] for t in ts]
        off = 0
        for t, n, rows in zip(ts, sizes, block_rows(gates, sizes)):
            own = cell_layer(model.cell, lay.sizes[s], n)
            idx = torch.cat(rows)
            with torch.no_grad():
                own.weight_ih_l0.copy_(mod.weight_ih_l0[idx])
                own.weight_hh_l0.copy_(mod.weight_hh_l0[idx][:, off:off + n])
                own.bias_ih_l0.copy_(mod.bias_ih_l0[idx])
                own.bias_hh_l0.copy_(mod.bias_hh_l0[idx])
            separate[(s, t)] = own
            off += n
    h, results = model.embed(x), {}
    for i, layer in enumerate(model.layers):
        h = layer(h)[0]
        for (s, t), own in separate.items():
            if t == i:
                h = h + own(results[s])[0]
        results[i] = h
    last = (x != 0).sum(1) - 1
    return model.out(h[torch.arange(h.shape[0]), last])


@pytest.mark.parametrize("cell", ["gru", "lstm", "tanh"])
def test_fused_skip_modules_equal_the_thesis_separate_skip_layers(cell):
    g = graph_rnn.barabasi_albert(24, 2, seed=5)
    lay = graph_rnn.layering(graph_rnn.dag(g))
    groups = [ts for _, ts in graph_rnn.skip_groups(lay.skips)]
    assert any(len(ts) > 1 for ts in groups)  # some source feeds several skip targets: blocks share a module
    torch.manual_seed(0)
    model = graph_rnn.GraphRNNClassifier(cell, lay.sizes, lay.skips, vocab_size=8, num_classes=2)
    params = dict(model.named_parameters())
    masks = MaskSet({n: params[n] for n in graph_rnn.graph_masks(lay, cell, "repeat")})
    masks.set(graph_rnn.graph_masks(lay, cell, "repeat"))
    for (_, ts), mod in zip(graph_rnn.skip_groups(lay.skips), model.skips):  # each block drawn as its own layer
        for t, rows in zip(ts, graph_rnn.block_rows(graph_rnn.GATES[cell], [lay.sizes[t] for t in ts])):
            assert mod.bias_ih_l0[torch.cat(rows)].abs().max() <= 1 / math.sqrt(lay.sizes[t])
    x = torch.randint(1, 8, (5, 11))
    x[0, 7:] = 0
    with torch.no_grad():
        assert torch.allclose(model(x), _thesis_forward(model, lay, x), atol=1e-5)


def test_barabasi_albert_graphs_start_from_m_isolated_nodes_as_the_thesis():
    for n, m, seed in ((27, 2, 0), (41, 4, 1), (12, 1, 2)):
        g = graph_rnn.barabasi_albert(n, m, seed)
        lay = graph_rnn.layering(graph_rnn.dag(g))
        assert g.number_of_nodes() == n and g.number_of_edges() == m * (n - m)  # the thesis' CSVs: e.g. 27, 2 → 50
        assert lay.sizes[0] == m  # m sources (networkx >= 2.6 starts from a star: always one)


def test_graph_properties_follow_the_thesis_definitions():
    g = _toy_graph()
    lay = graph_rnn.layering(graph_rnn.dag(g))
    props = graph_rnn.properties(g, lay)
    deg = [d / 5 for _, d in sorted(g.degree())]  # normalised degree centrality, n − 1 = 5
    assert (props["layers"], props["nodes"], props["edges"], props["sources"], props["sinks"]) == (4, 6, 6, 2, 1)
    assert math.isclose(props["density"], 6 / 30)  # directed density E / n(n − 1)
    assert math.isclose(props["degree_mean"], statistics.mean(deg))
    assert math.isclose(props["degree_var"], statistics.variance(deg))  # sample variance (n − 1)
    assert math.isclose(props["degree_std"], statistics.stdev(deg)) and props["diameter"] == 4
    assert set(props) == set(graph_stats.PROPERTIES)


def test_graph_rnn_smoke_trains_the_layered_rnn_of_each_graph(tmp_path):
    run = run_tiny("rnn_random_graph_reber", tmp_path, "method.schedule.graphs=3", "method.schedule.nodes=[10,14]",
                   "train.steps=1000")
    summary = pd.read_csv(run / "summary.csv")
    assert len(summary) == 6 and set(summary.graph_family) == {"ba", "ws"}
    cfg = OmegaConf.load(run / "config.yaml")
    fake = run_mod.Run(cfg=cfg, dir=run, data=None, writer=None, log=None, device=torch.device("cpu"))
    depths = set()
    for row in summary.itertuples():
        g, lay, seed = graph_rnn.graph_spec(fake, row.graph_family, int(row.round) - 1)
        assert seed == row.graph_seed and g.number_of_nodes() == row.graph_nodes
        assert (row.graph_layers, row.graph_sources) == (len(lay.layers), lay.sizes[0])
        masks = torch.load(run / f"masks/gru/{row.graph_family}/graph_{int(row.round):03d}.pt", weights_only=True)
        expect = graph_rnn.graph_masks(lay, "gru", "repeat")
        assert set(masks) == set(expect) and all(torch.equal(masks[n], expect[n]) for n in expect)
        assert row.nonzeros == sum(int(m.sum()) for m in expect.values())
        depths.add(len(lay.layers))
    assert len(depths) > 1  # depth varies with the graph
    corr = pd.read_csv(run / "correlations.csv")
    assert set(corr.property) == set(graph_stats.PROPERTIES) and set(corr.graph_family) == {"all", "ba", "ws"}
    pooled = corr[corr.graph_family == "all"].set_index("property")
    assert pooled.loc["sources", "thesis_r"] == 0.738 and corr[corr.graph_family == "ba"].thesis_r.isna().all()
    r, _ = graph_stats.pearson(summary.graph_nodes.tolist(), summary.test_acc.tolist())
    nodes = pooled.loc["nodes"]
    assert nodes.n == 6 and (math.isclose(nodes.r, r, rel_tol=1e-5) or (math.isnan(r) and math.isnan(nodes.r)))
    assert (run / "figures/graph_rnn.png").exists()


def test_pearson_and_its_p_value_on_known_examples():
    r, p = graph_stats.pearson([1, 2, 3, 4, 5], [2, 4, 5, 4, 5])
    assert math.isclose(r, 0.7745966692414834, rel_tol=1e-12) and math.isclose(p, 0.12402706265755825, rel_tol=1e-9)
    assert math.isclose(graph_stats.pearson([0, 1, 2], [0, 2, 4])[1], 0.0, abs_tol=1e-6)  # r = 1
    assert all(math.isnan(v) for v in graph_stats.pearson([1, 1, 1], [1, 2, 3]))
    rows = [{"model_arm": "gru", "graph_family": f, "graph_nodes": n, "test_acc": a,
             **{f"graph_{p}": 1.0 for p in graph_stats.PROPERTIES if p != "nodes"}}
            for f, n, a in [("ba", 10, 0.5), ("ba", 20, 0.6), ("ws", 30, 0.8), ("ws", 40, 0.7)]]
    out = {(c["graph_family"], c["property"]): c for c in graph_stats.correlations(rows)}
    assert math.isclose(out[("all", "nodes")]["r"], graph_stats.pearson([10, 20, 30, 40], [0.5, 0.6, 0.8, 0.7])[0])
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
    (["method.schedule.gate_masks=interleave"], "method.schedule.gate_masks"),
    (["method.schedule.ba_m_div=1"], "method.schedule.ba_m_div"),
    (["dataset=seq_mnist"], "dataset"),
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
        assert (summary[summary.target_density == 0].nonzeros == 1).all()  # the pooled maximum survives
    else:
        assert len(summary) == 2 * 2 and next(tmp_path.rglob("correlations.csv")).exists()
