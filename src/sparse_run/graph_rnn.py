"""Sparse RNNs whose recurrent structure is a random graph (Darji's thesis, algorithm B).

``schedule.kind=graph_rnn``: per model arm (cell) and graph family, ``graphs`` graphs with n nodes
drawn uniformly from ``nodes`` — Barabási–Albert ``ba(n, max(1, n // ba_m_div))`` and connected
Watts–Strogatz ``cws(n, max(2, n // ws_k_div), ws_p, tries)`` (networkx) — each fixing the
hidden-to-hidden connectivity of an RNN with n hidden units per layer. The graph is made acyclic
as in the thesis' layered DAG: nodes get hidden units in a random order (drawn from the graph's
seed) and every edge points from the lower unit to the higher, so unit i feeds unit j at the next
step iff i → j; W_hh[g·n + j, i] is kept for every gate block g. Input-to-hidden weights stay dense.
Each arm trains from θ0 under that mask; its row carries the graph's properties (``graph_*``), and
``correlations.csv`` holds their Pearson correlation with final test accuracy (two-sided p-value
from Student's t with n − 2 degrees of freedom).
"""
from __future__ import annotations

import fnmatch
import math
from typing import TYPE_CHECKING, Any

import torch

from . import arms
from .results import atomic_write_text, rows_to_csv
from .validate import ConfigError, choice, number

if TYPE_CHECKING:
    import networkx as nx

    from .pipeline import Run

FAMILIES = ("ba", "ws")
PROPERTIES = ("nodes", "edges", "density", "sources", "sinks", "diameter", "avg_path_length", "degree_mean",
              "degree_std", "degree_min", "degree_max", "closeness_var", "betweenness_var")
CORRELATION_COLUMNS = ["model_arm", "graph_family", "property", "n", "r", "p_value"]


# -- graphs -------------------------------------------------------------------------------------

def make_graph(family: str, n: int, seed: int, sched: Any) -> "nx.Graph":
    """One graph of ``family`` on ``n`` nodes; a WS draw still disconnected after ``tries`` is redrawn."""
    import networkx as nx

    if family == "ba":
        return nx.barabasi_albert_graph(n, max(1, n // int(sched.ba_m_div)), seed=seed)
    k = max(2, n // int(sched.ws_k_div))
    for attempt in range(100):
        try:
            return nx.connected_watts_strogatz_graph(n, k, float(sched.ws_p), tries=int(sched.ws_tries),
                                                     seed=seed + attempt)
        except nx.NetworkXError:
            continue
    raise RuntimeError(f"no connected Watts-Strogatz graph ({n}, {k}) in 100 redraws")


def unit_order(g: "nx.Graph", seed: int) -> dict[Any, int]:
    """Node → hidden unit, a random permutation fixed by ``seed`` (the DAG's topological order)."""
    perm = torch.randperm(g.number_of_nodes(), generator=torch.Generator().manual_seed(seed)).tolist()
    return {node: perm[i] for i, node in enumerate(sorted(g.nodes()))}


def adjacency(g: "nx.Graph", seed: int) -> torch.Tensor:
    """Directed acyclic adjacency ``A[i, j]`` = unit i feeds unit j (each undirected edge once, low → high)."""
    unit = unit_order(g, seed)
    a = torch.zeros(len(unit), len(unit), dtype=torch.bool)
    for u, v in g.edges():
        i, j = sorted((unit[u], unit[v]))
        a[i, j] = True
    return a


def hh_mask(adj: torch.Tensor, gates: int) -> torch.Tensor:
    """Mask of a ``[gates·n, n]`` hidden-to-hidden weight (rows: receiving unit per gate, columns: sender)."""
    return adj.t().repeat(gates, 1).contiguous()


def properties(g: "nx.Graph", adj: torch.Tensor) -> dict[str, float]:
    """The thesis' graph properties: size, density, DAG sources / sinks, distances, degrees, centralities."""
    import networkx as nx

    deg = torch.tensor([d for _, d in g.degree()], dtype=torch.float64)
    close = torch.tensor(list(nx.closeness_centrality(g).values()), dtype=torch.float64)
    betw = torch.tensor(list(nx.betweenness_centrality(g).values()), dtype=torch.float64)
    connected = nx.is_connected(g)
    return {"nodes": g.number_of_nodes(), "edges": g.number_of_edges(), "density": nx.density(g),
            "sources": int((adj.sum(0) == 0).sum()), "sinks": int((adj.sum(1) == 0).sum()),
            "diameter": nx.diameter(g) if connected else math.nan,
            "avg_path_length": nx.average_shortest_path_length(g) if connected else math.nan,
            "degree_mean": float(deg.mean()), "degree_std": float(deg.std(unbiased=False)),
            "degree_min": float(deg.min()), "degree_max": float(deg.max()),
            "closeness_var": float(close.var(unbiased=False)), "betweenness_var": float(betw.var(unbiased=False))}


# -- statistics ---------------------------------------------------------------------------------

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for aa in (m * (b - m) * x / ((a - 1 + 2 * m) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1 + 2 * m))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def pearson(x: list[float], y: list[float]) -> tuple[float, float]:
    """Pearson r and its two-sided p-value (t = r √(df / (1 − r²)), df = n − 2); NaN if undefined."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if math.isfinite(float(a)) and math.isfinite(float(b))]
    n = len(pairs)
    if n < 3:
        return math.nan, math.nan
    mx, my = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
    sxy = sum((a - mx) * (b - my) for a, b in pairs)
    sxx, syy = sum((a - mx) ** 2 for a, _ in pairs), sum((b - my) ** 2 for _, b in pairs)
    if sxx <= 0 or syy <= 0:
        return math.nan, math.nan  # a constant property (or accuracy) correlates with nothing
    r = max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))
    df = n - 2
    if abs(r) == 1.0:
        return r, 0.0
    t2 = r * r * df / (1.0 - r * r)
    return r, betainc(df / 2.0, 0.5, df / (df + t2))


def correlations(rows: list[dict[str, Any]], target: str = "test_acc") -> list[dict[str, Any]]:
    """Per model arm, over all families and per family: r and p of every graph property with ``target``."""
    def text(v: Any) -> str:  # CSV round trips turn empty labels into NaN
        return v if isinstance(v, str) else ""

    out = []
    graph_rows = [r for r in rows if text(r.get("graph_family"))]
    for arm in dict.fromkeys(text(r.get("model_arm")) for r in graph_rows):
        mine = [r for r in graph_rows if text(r.get("model_arm")) == arm]
        for fam in ("all", *dict.fromkeys(r["graph_family"] for r in mine)):
            sub = [r for r in mine if fam == "all" or r["graph_family"] == fam]
            for prop in PROPERTIES:
                r, p = pearson([s[f"graph_{prop}"] for s in sub], [s[target] for s in sub])
                out.append({"model_arm": arm, "graph_family": fam, "property": prop, "n": len(sub), "r": r,
                            "p_value": p})
    return out


# -- config and runner --------------------------------------------------------------------------

def validate(cfg: Any) -> None:
    """``schedule.kind=graph_rnn`` fields (README "Sparse RNNs")."""
    s, pol = cfg.method.schedule, cfg.method.policy
    if not list(s.families):
        raise ConfigError("method.schedule.families", "got an empty list; allowed: ba, ws")
    for i, fam in enumerate(s.families):
        choice(fam, f"method.schedule.families[{i}]", FAMILIES)
    number(s.graphs, "method.schedule.graphs", lo=1, integer=True)
    if len(list(s.nodes)) != 2:
        raise ConfigError("method.schedule.nodes", f"got {s.nodes!r}; allowed: [min, max] node counts")
    lo = number(s.nodes[0], "method.schedule.nodes[0]", lo=3, integer=True)
    number(s.nodes[1], "method.schedule.nodes[1]", lo=lo, integer=True)
    number(s.ba_m_div, "method.schedule.ba_m_div", lo=1, integer=True)
    number(s.ws_k_div, "method.schedule.ws_k_div", lo=1, integer=True)
    number(s.ws_p, "method.schedule.ws_p", lo=0, hi=1)
    number(s.ws_tries, "method.schedule.ws_tries", lo=1, integer=True)
    if cfg.model.get("arch") != "rnn" or float(cfg.model.get("width", 1.0)) != 1.0:
        raise ConfigError("model", f"got arch={cfg.model.get('arch')}, width={cfg.model.get('width')}; "
                                   "graph_rnn needs arch rnn with width 1.0 (hidden = the graph's nodes)")
    if list(pol.layers) != ["rnn"] or not any(fnmatch.fnmatch("rnn.weight_ih_l0", g) for g in pol.exclude):
        raise ConfigError("method.policy", f"got layers={list(pol.layers)}, exclude={list(pol.exclude)}; graph "
                                           "masks are on hidden-to-hidden weights: layers [rnn], exclude "
                                           "[rnn.weight_ih_l*]")


def graph_spec(run: "Run", family: str, index: int) -> tuple["nx.Graph", torch.Tensor, int]:
    """The ``index``-th graph of ``family`` for this seed: (graph, DAG adjacency, its seed)."""
    from .pipeline import derive_seed

    s = run.cfg.method.schedule
    gseed = derive_seed(run.seed, "graph", family, index)
    lo, hi = int(s.nodes[0]), int(s.nodes[1])
    n = lo + int(torch.randint(hi - lo + 1, (1,), generator=torch.Generator().manual_seed(gseed)))
    g = make_graph(family, n, gseed, s)
    return g, adjacency(g, gseed), gseed


def run_graph_rnn(run: "Run") -> None:
    """One arm per model arm × family × graph, trained from θ0 under the graph's h2h mask."""
    from .pipeline import record_event

    s = run.cfg.method.schedule
    if run.cfg.get("budget_note"):
        print(f"sparse-run: {run.cfg.name} at budget {run.cfg.budget.name}: {run.cfg.budget_note}")
    for mlabel, mover in arms.model_arms(run.cfg):
        for family in s.families:
            for i in range(int(s.graphs)):
                key = f"{mlabel}/{family}/g{i + 1}"
                if key in run.done:
                    continue
                g, adj, gseed = graph_spec(run, family, i)
                n = adj.shape[0]
                grun = arms.derive(run, model={**mover, "hidden": n})
                model = grun.new_model(run.seed)
                masks = grun.new_masks(model)
                masks.set({name: hh_mask(adj, masks.params[name].shape[0] // n) for name in masks.names()})
                name = "/".join(x for x in (mlabel, family) if x)
                record_event(run, i + 1, masks, None, masks.density(), method=name, variant="sparse")
                run.writer.save(f"masks/{mlabel or 'model'}/{family}/graph_{i + 1:03d}.pt", masks.state_dict())
                props = {f"graph_{k}": v for k, v in properties(g, adj).items()}
                grun.train_arm(key, model, masks, i + 1, "sparse", target_density=masks.density(), method=name,
                               context={"model_arm": mlabel, "graph_family": family},
                               extra={"graph_seed": gseed, **props})
                run.writer.save("checkpoints/final.pt", {"model": model.state_dict(), "masks": masks.state_dict()})
    atomic_write_text(run.dir / "correlations.csv", rows_to_csv(correlations(run.writer.rows), CORRELATION_COLUMNS))
