"""Figures of the selection-pattern comparison (``schedule.kind=pattern_compare``; SparseByteNN, papers.md §11):
accuracy after fine-tuning per arm and sparsity beside the dense band, the Σ|W| each selection kept (group with vs
without permutation), and each arm's measured speedup over the faster dense kernel per batch size — means with 95 %
t-intervals over seeds (every arm of a seed prunes the same trained weights, so arms pair).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .plot import mean_interval, save_titled  # noqa: E402


def is_pattern_compare(df: pd.DataFrame) -> bool:
    return "retained_l1" in df and df.retained_l1.notna().any()


def _arms(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df[df.variant == "sparse"].method))


def _lines(ax: plt.Axes, df: pd.DataFrame, col: str, scale: float = 1.0) -> None:
    """One line per arm: mean ± interval of ``col`` over seeds at each sparsity (%), arms nudged apart along x
    (±1 pp) so overlapping intervals stay readable."""
    colors = plt.get_cmap("tab10")
    sparse = df[df.variant == "sparse"]
    arms = _arms(df)
    for i, arm in enumerate(arms):
        nudge = (i - (len(arms) - 1) / 2) * (2.0 / max(1, len(arms) - 1))
        sub = sparse[(sparse.method == arm) & sparse[col].notna()]
        pts = []
        for s, g in sub.groupby((1 - sub.target_density).round(6)):
            mean, lo, hi = mean_interval((g[col] * scale).tolist())
            pts.append((s * 100 + nudge, mean, mean - lo, hi - mean, len(g)))
        if pts:
            x, y, el, eh, n = zip(*pts)
            ax.errorbar(x, y, yerr=[el, eh], marker="o", ms=4, capsize=3, color=colors(i % 10),
                        label=f"{arm} (n={min(n)}–{max(n)})" if min(n) != max(n) else f"{arm} (n={n[0]})")
    ax.set_xlabel("sparsity of the prunable layers (%)")
    ax.grid(alpha=0.3)


def accuracy_figure(df: pd.DataFrame, out: Path, title: str) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))  # own y-scales: after fine-tuning the arms sit close
    dense = df[df.variant == "dense"]
    for ax, col, label in ((axes[0], "test_acc", "test accuracy after fine-tuning (%)"),
                           (axes[1], "test_acc_before_finetune", "test accuracy right after pruning (%)")):
        if len(dense):
            mean, lo, hi = mean_interval((dense.test_acc * 100).tolist())
            ax.axhspan(lo, hi, color="black", alpha=0.12)
            ax.axhline(mean, color="black", lw=1, label=f"dense (n={len(dense)})")
        _lines(ax, df, col, 100.0)
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7, loc="lower left")
    return save_titled(fig, out, title, df)


def retained_figure(df: pd.DataFrame, out: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    _lines(ax, df, "retained_l1", 100.0)
    ax.set_ylabel("Σ|W| kept by the selection (% of the trained layers')")
    ax.legend(fontsize=7)
    return save_titled(fig, out, title, df)


def speedup_figure(df: pd.DataFrame, out: Path, title: str) -> Path | None:
    cols = sorted((c for c in df.columns if c.startswith("speedup_b") and c[9:].isdigit() and df[c].notna().any()),
                  key=lambda c: int(c[9:]))
    if not cols:
        return None
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 4.0), sharey=True, squeeze=False)
    for ax, col in zip(axes[0], cols):
        _lines(ax, df, col)
        ax.axhline(1.0, color="black", lw=1, ls="--")
        ax.set_yscale("log")
        ax.set_title(f"batch {col[9:]}", fontsize=9)
        ax.set_ylabel("speedup over the faster dense kernel (×)")
        ax.tick_params(labelleft=True)
    axes[0][0].legend(fontsize=7)
    return save_titled(fig, out, title, df)


def figures(df: pd.DataFrame, stem: str, title: str) -> list[Path]:
    """``<stem>accuracy.png``, ``<stem>retained.png`` and, when arms were timed, ``<stem>speedup.png``."""
    made = [accuracy_figure(df, Path(f"{stem}accuracy.png"), title),
            retained_figure(df, Path(f"{stem}retained.png"), title)]
    sp = speedup_figure(df, Path(f"{stem}speedup.png"), title)
    return made + ([sp] if sp else [])
