"""Correlation of graph properties with accuracy (the sparse-RNN structure study): Pearson r and its two-sided
p-value, per model arm and graph family, beside the thesis' r. Pure maths on result rows: the study writes
``correlations.csv`` with it and the report pools sweeps with it.

The p-value is scipy's (``scipy.stats.pearsonr``: the exact t-distribution test).
"""
from __future__ import annotations

import math
from typing import Any


PROPERTIES = ("layers", "nodes", "edges", "sources", "sinks", "diameter", "density", "avg_path_length",
              "eccentricity_mean", "eccentricity_var", "eccentricity_std", "degree_mean", "degree_var", "degree_std",
              "closeness_mean", "closeness_var", "closeness_std", "betweenness_mean", "betweenness_var",
              "betweenness_std", "edge_betweenness_mean", "edge_betweenness_var", "edge_betweenness_std")
CORRELATION_COLUMNS = ["model_arm", "graph_family", "property", "n", "r", "p_value", "thesis_r"]
# Pearson r of each property with test accuracy in the thesis' raw results
# (harshildarji/thesis, Implementations/experiments/results/structure/<cell>.csv: 100 BA + 100 WS
# graphs per cell, pooled), in PROPERTIES order; a reference to compare with, never a result here.
THESIS_R = {
    "tanh": (0.246, 0.396, 0.375, 0.353, 0.143, -0.233, 0.287, -0.271, -0.224, -0.224, -0.301, 0.287, -0.280, -0.278,
             0.302, -0.463, -0.433, -0.343, -0.486, -0.502, -0.387, -0.343, -0.408),
    "relu": (0.297, 0.444, 0.427, 0.474, 0.215, -0.266, 0.154, -0.251, -0.238, -0.241, -0.331, 0.154, -0.258, -0.289,
             0.297, -0.392, -0.406, -0.366, -0.407, -0.439, -0.392, -0.304, -0.369),
    "gru": (0.342, 0.495, 0.490, 0.738, -0.185, -0.203, 0.342, -0.226, -0.146, -0.215, -0.363, 0.342, -0.576, -0.613,
            0.260, -0.675, -0.668, -0.323, -0.519, -0.567, -0.393, -0.265, -0.369),
    "lstm": (0.276, 0.435, 0.420, 0.572, 0.059, -0.323, 0.295, -0.362, -0.324, -0.299, -0.404, 0.295, -0.386, -0.420,
             0.392, -0.508, -0.519, -0.435, -0.556, -0.566, -0.486, -0.435, -0.493),
}


def pearson(x: list[float], y: list[float]) -> tuple[float, float]:
    """Pearson r and its two-sided p-value (scipy.stats.pearsonr); NaN with fewer than 3 finite pairs or a
    constant variable."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if math.isfinite(float(a)) and math.isfinite(float(b))]
    n = len(pairs)
    if n < 3:
        return math.nan, math.nan
    mx, my = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
    sxx, syy = sum((a - mx) ** 2 for a, _ in pairs), sum((b - my) ** 2 for _, b in pairs)
    if sxx <= 0 or syy <= 0:
        return math.nan, math.nan  # a constant property (or accuracy) correlates with nothing
    from scipy import stats  # here: scipy.stats costs ~1.3 s at import, and every run imports this module

    res = stats.pearsonr([a for a, _ in pairs], [b for _, b in pairs])
    return float(res.statistic), float(res.pvalue)


def correlations(rows: list[dict[str, Any]], target: str = "test_acc") -> list[dict[str, Any]]:
    """Per model arm, over all families and per family: r and p of every graph property with ``target``,
    and beside the pooled ones the thesis' r for the arm's cell (``graph_cell``; NaN where it has none)."""
    def text(v: Any) -> str:  # CSV round trips turn empty labels into NaN
        return v if isinstance(v, str) else ""

    out = []
    graph_rows = [r for r in rows if text(r.get("graph_family"))]
    for arm in dict.fromkeys(text(r.get("model_arm")) for r in graph_rows):
        mine = [r for r in graph_rows if text(r.get("model_arm")) == arm]
        thesis = THESIS_R.get(text(mine[0].get("graph_cell")))
        for fam in ("all", *dict.fromkeys(r["graph_family"] for r in mine)):
            sub = [r for r in mine if fam == "all" or r["graph_family"] == fam]
            for i, prop in enumerate(PROPERTIES):
                r, p = pearson([s.get(f"graph_{prop}", math.nan) for s in sub], [s[target] for s in sub])
                out.append({"model_arm": arm, "graph_family": fam, "property": prop, "n": len(sub), "r": r,
                            "p_value": p, "thesis_r": thesis[i] if thesis and fam == "all" else math.nan})
    return out
