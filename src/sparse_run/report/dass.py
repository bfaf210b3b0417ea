"""Figure of the DASS study (``schedule.kind=dass``): each arm's test accuracy after pruning by learned scores and
fine-tuning at every sparsity, beside its own dense accuracy (dashed, same colour) — means with 95 % t-intervals over
seeds. When every arm stays within ``SATURATED_PP`` of its dense accuracy the title says the comparison is saturated.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .plot import mean_interval, save_titled  # noqa: E402

ARMS = {"dass": "DASS-derived (α on the sparsified supernet)", "darts": "DARTS-derived (searched dense)",
        "hand": "hand-designed CNN (same size)"}
SATURATED_PP = 0.5


def is_dass(df: pd.DataFrame) -> bool:
    return "method" in df and set(df.method.dropna()) <= set(ARMS) and "params" in df and df.params.notna().any()


def saturated(df: pd.DataFrame) -> bool:
    """Every arm's mean sparse accuracy within ``SATURATED_PP`` of its mean dense accuracy at every level."""
    gaps = []
    for arm, sub in df.groupby("method"):
        dense = sub[sub.variant == "dense"].test_acc.mean()
        gaps += [abs(dense - g.test_acc.mean()) * 100 for _, g in sub[sub.variant == "sparse"].groupby("target_density")]
    return bool(gaps) and max(gaps) < SATURATED_PP


def figures(df: pd.DataFrame, stem: str, title: str) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    colors = {"dass": "tab:blue", "darts": "tab:orange", "hand": "tab:gray"}
    for arm, label in ARMS.items():
        sub = df[df.method == arm]
        if sub.empty:
            continue
        dense = sub[sub.variant == "dense"]
        if len(dense):
            mean, _, _ = mean_interval((dense.test_acc * 100).tolist())
            ax.axhline(mean, color=colors[arm], ls="--", lw=1)
        pts = []
        for d, g in sub[sub.variant == "sparse"].groupby("target_density"):
            mean, lo, hi = mean_interval((g.test_acc * 100).tolist())
            pts.append(((1 - d) * 100, mean, mean - lo, hi - mean, len(g)))
        if pts:
            x, y, el, eh, n = zip(*sorted(pts))
            ax.errorbar(x, y, yerr=[el, eh], marker="o", ms=5, capsize=3, color=colors[arm],
                        label=f"{label}, {int(sub.params.iloc[0]):,} params (n={min(n)})")
    ax.set_xlabel("sparsity of the conv / linear weights (%), pruned by learned scores, fine-tuned")
    ax.set_ylabel("test accuracy (%); dashed: the arm's dense accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    note = " — SATURATED: every arm at its dense accuracy, uninformative" if saturated(df) else ""
    return [save_titled(fig, Path(f"{stem}accuracy.png"), title + note, df)]
