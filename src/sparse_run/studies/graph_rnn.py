"""Sparse RNNs whose structure is a random graph (Darji's thesis, algorithm B; ``ArbitraryStructureRNN``).

``schedule.kind=graph_rnn``: per model arm (cell) and graph family, ``graphs`` graphs with n nodes
drawn uniformly from ``nodes`` — Barabási–Albert ``ba(n, max(1, n // ba_m_div))`` (networkx's
pre-2.6 generator, as the thesis) and connected Watts–Strogatz ``cws(n, max(2, n // ws_k_div),
ws_p, tries)`` (networkx). As in the thesis code, each undirected edge becomes u → v in networkx's
edge order (u earlier in node order), the DAG is layered by longest path from the sources
(pypaddle's ``LayeredGraph``) and every layer becomes a recurrent layer of as many units as it has
nodes (``models/graph_rnn.py``): edges between consecutive layers are the input-to-hidden mask of the
later one, edges that skip layers give extra masked recurrent layers whose outputs are added,
hidden-to-hidden weights stay dense, the embedding is as wide as the source layer and the
classifier reads the last layer.
``gate_masks``: ``repeat`` copies each mask row once per gate in a row (``np.repeat(mask, gates,
0)``, what the thesis code does, so in a GRU / LSTM gate block g row j carries the edges of unit
(g·n + j) // gates); ``tile`` gives every gate block the graph's own rows.
Each arm trains from θ0 under its masks; its row carries the graph's properties (``graph_*``,
computed as the thesis does), and ``correlations.csv`` holds their Pearson correlation with final
test accuracy (two-sided p-value from Student's t with n − 2 degrees of freedom) beside the
thesis' r (``thesis_r``, from its raw result CSVs, both families pooled).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from sparse_run import models
from sparse_run.config import ConfigError, choice, number
from sparse_run.engine import arms
from sparse_run.engine.run import Run, derive_seed, record_event
from sparse_run.models.graph_rnn import GATES, GraphRNNClassifier, block_rows, skip_groups
from sparse_run.sparsity import MaskSet
from sparse_run.store.files import atomic_write_text
from sparse_run.store.schema import rows_to_csv

if TYPE_CHECKING:
    import networkx as nx

FAMILIES = ("ba", "ws")
GATE_MASKS = ("repeat", "tile")
# -- graphs -------------------------------------------------------------------------------------

def make_graph(family: str, n: int, seed: int, sched: Any) -> "nx.Graph":
    """One graph of ``family`` on ``n`` nodes; a WS draw still disconnected after ``tries`` is redrawn."""
    import networkx as nx

    if family == "ba":
        return barabasi_albert(n, max(1, n // int(sched.ba_m_div)), seed)
    k = max(2, n // int(sched.ws_k_div))
    for attempt in range(100):
        try:
            return nx.connected_watts_strogatz_graph(n, k, float(sched.ws_p), tries=int(sched.ws_tries),
                                                     seed=seed + attempt)
        except nx.NetworkXError:
            continue
    raise RuntimeError(f"no connected Watts-Strogatz graph ({n}, {k}) in 100 redraws")


def barabasi_albert(n: int, m: int, seed: int) -> "nx.Graph":
    """Barabási–Albert as networkx drew it before 2.6 (the thesis' version): m isolated start nodes, then each
    new node links to m distinct earlier nodes drawn ∝ degree (the start nodes once each at first).

    networkx ≥ 2.6 starts from a star instead, which leaves one source in every DAG; the thesis' BA graphs
    have m sources (its CSVs: edges = m(n − m), sources = m)."""
    import random

    import networkx as nx

    rng = random.Random(seed)
    g = nx.empty_graph(m)
    targets, pool = list(range(m)), []
    for new in range(m, n):
        g.add_edges_from((new, t) for t in targets)
        pool += targets + [new] * m
        chosen: set[int] = set()
        while len(chosen) < m:
            chosen.add(rng.choice(pool))
        targets = list(chosen)
    return g


def dag(g: "nx.Graph") -> "nx.DiGraph":
    """The thesis' DAG: every edge as networkx lists it, (u, v) → u → v (u comes first in node order)."""
    import networkx as nx

    d = nx.DiGraph()
    d.add_edges_from(g.edges)
    d.add_nodes_from(g.nodes)
    return d


@dataclass
class Layered:
    """A DAG cut into layers: ``layers[l]`` lists layer l's nodes (unit order), ``skips`` the (s, t), t ≥ s + 2,
    with at least one edge from layer s to layer t (in the thesis' order: by t, then s)."""

    graph: "nx.DiGraph"
    layers: list[list[Any]]
    skips: list[tuple[int, int]]

    @property
    def sizes(self) -> list[int]:
        return [len(v) for v in self.layers]

    def mask(self, s: int, t: int) -> torch.Tensor:
        """``[|layer t|, |layer s|]``: entry (i, j) iff node j of layer s feeds node i of layer t."""
        return torch.tensor([[self.graph.has_edge(u, v) for u in self.layers[s]] for v in self.layers[t]],
                            dtype=torch.bool)


def layering(d: "nx.DiGraph") -> Layered:
    """pypaddle's layer index: layer(v) = 1 + max layer of v's ancestors (0 for a source), i.e. v's longest
    path from a source; within a layer nodes keep the order in which that recursion settles them."""
    import networkx as nx

    layer: dict[Any, int] = {}

    def settle(v: Any) -> int:
        if v not in layer:
            layer[v] = 1 + max([settle(a) for a in nx.ancestors(d, v)], default=-1)
        return layer[v]

    for v in d.nodes:
        settle(v)
    layers: list[list[Any]] = [[] for _ in range(max(layer.values()) + 1)]
    for v, i in layer.items():
        layers[i].append(v)
    skips = [(s, t) for t in range(2, len(layers)) for s in range(t - 1)
             if any(d.has_edge(u, v) for u in layers[s] for v in layers[t])]
    return Layered(d, layers, skips)


def gate_rows(mask: torch.Tensor, gates: int, how: str) -> torch.Tensor:
    """A ``[units, inputs]`` mask as the ``[gates·units, inputs]`` mask of a gated weight (see the module doc)."""
    return mask.repeat_interleave(gates, 0) if how == "repeat" else mask.repeat(gates, 1)


def graph_masks(lay: Layered, cell: str, how: str) -> dict[str, torch.Tensor]:
    """The masks the graph fixes: input-to-hidden of every layer after the first; for each skip module (one per
    source layer, ``models/graph_rnn.py``) input-to-hidden rows per target block and a block-diagonal
    hidden-to-hidden mask, so each block is the thesis' own skip layer from that source to that target."""
    g = GATES[cell]
    out = {f"layers.{t}.weight_ih_l0": gate_rows(lay.mask(t - 1, t), g, how) for t in range(1, len(lay.layers))}
    for k, (s, ts) in enumerate(skip_groups(lay.skips)):
        sizes = [lay.sizes[t] for t in ts]
        total = sum(sizes)
        ih = torch.zeros(g * total, lay.sizes[s], dtype=torch.bool)
        hh = torch.zeros(g * total, total, dtype=torch.bool)
        off = 0
        for t, n, rows in zip(ts, sizes, block_rows(g, sizes)):
            own = gate_rows(lay.mask(s, t), g, how)  # [g·n, |s|] as the thesis' separate layer lays it out
            for gate, r in enumerate(rows):
                ih[r] = own[gate * n:(gate + 1) * n]
                hh[r, off:off + n] = True
            off += n
        out[f"skips.{k}.weight_ih_l0"], out[f"skips.{k}.weight_hh_l0"] = ih, hh
    return out


def _stats(name: str, values: list[float]) -> dict[str, float]:
    """Mean, sample variance and sample standard deviation (Python's ``statistics``, as the thesis)."""
    return {f"{name}_mean": statistics.mean(values), f"{name}_var": statistics.variance(values),
            f"{name}_std": statistics.stdev(values)}


def properties(g: "nx.Graph", lay: Layered) -> dict[str, float]:
    """The thesis' graph properties (``get_graph_properties``): on the undirected graph, density E / n(n − 1),
    networkx's normalised centralities, sample variances; ``sources`` / ``sinks`` are the sizes of the
    first / last DAG layer (the embedding width / the units the classifier reads), ``layers`` its depth."""
    import networkx as nx

    n, e = g.number_of_nodes(), g.number_of_edges()
    ecc = nx.eccentricity(g)
    return {"layers": len(lay.layers), "nodes": n, "edges": e, "sources": lay.sizes[0], "sinks": lay.sizes[-1],
            "diameter": nx.diameter(g, e=ecc), "density": e / (n * (n - 1)),
            "avg_path_length": nx.average_shortest_path_length(g),
            **_stats("eccentricity", list(ecc.values())),
            **_stats("degree", list(nx.degree_centrality(g).values())),
            **_stats("closeness", list(nx.closeness_centrality(g).values())),
            **_stats("betweenness", list(nx.betweenness_centrality(g).values())),
            **_stats("edge_betweenness", list(nx.edge_betweenness_centrality(g).values()))}


# -- config and runner --------------------------------------------------------------------------

def validate(cfg: Any) -> None:
    """``schedule.kind=graph_rnn`` fields (docs/papers/rnn.md)."""
    s = cfg.method.schedule
    if not list(s.families):
        raise ConfigError("method.schedule.families", "got an empty list; allowed: ba, ws")
    for i, fam in enumerate(s.families):
        choice(fam, f"method.schedule.families[{i}]", FAMILIES)
    number(s.graphs, "method.schedule.graphs", lo=1, integer=True)
    if len(list(s.nodes)) != 2:
        raise ConfigError("method.schedule.nodes", f"got {s.nodes!r}; allowed: [min, max] node counts")
    lo = number(s.nodes[0], "method.schedule.nodes[0]", lo=3, integer=True)
    number(s.nodes[1], "method.schedule.nodes[1]", lo=lo, integer=True)
    number(s.ba_m_div, "method.schedule.ba_m_div", lo=2, integer=True)  # m = n // div < n: a connected graph
    number(s.ws_k_div, "method.schedule.ws_k_div", lo=2, integer=True)  # k = n // div < n
    number(s.ws_p, "method.schedule.ws_p", lo=0, hi=1)
    number(s.ws_tries, "method.schedule.ws_tries", lo=1, integer=True)
    choice(s.gate_masks, "method.schedule.gate_masks", GATE_MASKS)
    if cfg.model.arch != "rnn" or float(cfg.model.width) != 1.0:
        raise ConfigError("model", f"got arch={cfg.model.arch}, width={cfg.model.width}; "
                                   "graph_rnn needs arch rnn with width 1.0 (its cell; the graph sets the sizes)")
    if cfg.dataset.layout != "tokens":
        raise ConfigError("dataset", f"got {cfg.dataset.name} (layout {cfg.dataset.layout}); graph_rnn "
                                     "needs token inputs (dataset=reber): its embedding is as wide as the source layer")


def graph_spec(run: Run, family: str, index: int) -> tuple["nx.Graph", Layered, int]:
    """The ``index``-th graph of ``family`` for this seed: (graph, its layered DAG, its seed)."""
    s = run.cfg.method.schedule
    gseed = derive_seed(run.seed, "graph", family, index)
    lo, hi = int(s.nodes[0]), int(s.nodes[1])
    n = lo + int(torch.randint(hi - lo + 1, (1,), generator=torch.Generator().manual_seed(gseed)))
    g = make_graph(family, n, gseed, s)
    return g, layering(dag(g)), gseed


def build_model(run: Run, lay: Layered, seed: int) -> GraphRNNClassifier:
    """The graph's RNN for the run's cell, weights drawn under ``seed`` (``model.init``; global RNG untouched)."""
    cfg, spec = run.cfg.model, run.data.spec
    choice(cfg.cell, "model.cell", GATES)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GraphRNNClassifier(cfg.cell, lay.sizes, lay.skips, spec.vocab_size, spec.num_classes)
        models.init_weights(model, cfg.init)
    return model.to(run.device)


def run_graph_rnn(run: Run) -> None:
    """One arm per model arm × family × graph, trained from θ0 under the graph's masks."""
    s = run.cfg.method.schedule
    if run.cfg.budget_note:
        print(f"sparse-run: {run.cfg.name} at budget {run.cfg.budget.name}: {run.cfg.budget_note}")
    for mlabel, mover in arms.model_arms(run.cfg):
        grun = arms.derive(run, model=mover)
        cell = str(grun.cfg.model.cell)
        for family in s.families:
            for i in range(int(s.graphs)):
                key = f"{mlabel}/{family}/g{i + 1}"
                if key in run.done:
                    continue
                g, lay, gseed = graph_spec(run, family, i)
                model = build_model(grun, lay, run.seed)
                fixed = graph_masks(lay, cell, str(s.gate_masks))
                params = dict(model.named_parameters())
                masks = MaskSet({n: params[n] for n in fixed})
                masks.set(fixed)
                name = "/".join(x for x in (mlabel, family) if x)
                record_event(run, i + 1, masks, None, masks.density(), method=name, variant="sparse")
                run.writer.save(f"masks/{mlabel or 'model'}/{family}/graph_{i + 1:03d}.pt", masks.state_dict())
                props = {f"graph_{k}": v for k, v in properties(g, lay).items()}
                grun.train_arm(key, model, masks, i + 1, "sparse", target_density=masks.density(), method=name,
                               context={"model_arm": mlabel, "graph_family": family},
                               extra={"graph_seed": gseed, "graph_cell": cell, **props})
                run.writer.save("checkpoints/final.pt", {"model": model.state_dict(), "masks": masks.state_dict()})
    from sparse_run.report.graph_stats import CORRELATION_COLUMNS, correlations  # here: report/ imports matplotlib (start-up)
    atomic_write_text(run.dir / "correlations.csv", rows_to_csv(correlations(run.writer.rows), CORRELATION_COLUMNS))

