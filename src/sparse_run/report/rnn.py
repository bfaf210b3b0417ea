"""Figures of the sparse-RNN experiments (docs/papers/rnn.md), drawn from ``summary.csv``.

- ``figures/rnn_prune.png``: one-shot runs with policy arms — test accuracy vs % of the chosen
  matrices pruned, one panel per scope (rows) × cell (columns): right after pruning, after each
  fine-tuning interval (``test_acc_ft_<k>``), and the dense model of that cell;
- ``figures/graph_rnn.png``: graph RNNs — test accuracy against each graph property, with each
  cell's Pearson r (``correlations.csv``) and, in brackets, the thesis' r for that cell.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .plot import _provenance, save_figure  # noqa: E402
from .graph_stats import PROPERTIES, correlations  # noqa: E402


def _ft_columns(df: pd.DataFrame) -> list[str]:
    cols = [c for c in df.columns if re.fullmatch(r"test_acc_ft_\d+", c) and df[c].notna().any()]
    return sorted(cols, key=lambda c: int(c.rsplit("_", 1)[1]))


def prune_figure(df: pd.DataFrame, out: Path, title: str) -> Path:
    """Accuracy vs p per cell (columns) and scope (rows): before and after each retraining interval."""
    sparse = df[df.variant == "sparse"].assign(p=lambda d: (1 - d.target_density) * 100)
    cells = list(dict.fromkeys(df.model_arm.fillna("").astype(str))) if "model_arm" in df else [""]
    scopes = list(dict.fromkeys(sparse.policy_arm.fillna("").astype(str)))
    fts = _ft_columns(sparse)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(len(scopes), len(cells), figsize=(3.4 * len(cells) + 0.6, 2.8 * len(scopes) + 0.8),
                             squeeze=False, sharex=True, sharey=True)
    lo = min([sparse[c].min() for c in ["test_acc_before_finetune", *fts] if c in sparse] + [df.test_acc.min()])
    for i, scope in enumerate(scopes):
        for j, cell in enumerate(cells):
            ax = axes[i][j]
            sel = sparse.policy_arm.fillna("").astype(str) == scope
            if "model_arm" in sparse:
                sel &= sparse.model_arm.fillna("").astype(str) == cell
            sub = sparse[sel].groupby("p").mean(numeric_only=True).sort_index()
            dense = df[(df.variant == "dense") & ((df.model_arm.fillna("").astype(str) == cell)
                                                  if "model_arm" in df else True)]
            if len(dense):
                ax.axhline(dense.test_acc.mean() * 100, color="gray", ls=":", lw=1.2, label="dense")
            if len(sub):
                ax.plot(sub.index, sub.test_acc_before_finetune * 100, color="tab:red", ls="--", marker="x", ms=4,
                        label="after pruning")
                for k, col in enumerate(fts):
                    ax.plot(sub.index, sub[col] * 100, color=cmap(0.15 + 0.75 * k / max(1, len(fts) - 1)),
                            marker="o", ms=3, lw=1.2, label=f"retrained {k + 1}/{len(fts)}")
            ax.set_title(f"{cell or 'model'} · {scope or 'all'}", fontsize=9)
            ax.grid(True, alpha=0.3)
            if i == len(scopes) - 1:
                ax.set_xlabel("p: pruning percentile of |W| (%)")
            if j == 0:
                ax.set_ylabel("test accuracy (%)")
    axes[0][0].set_ylim(max(0.0, lo * 100 - 5), 101)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    return save_figure(fig, out, {"title": title, **_provenance(df)})


def graph_figure(df: pd.DataFrame, corr: pd.DataFrame, out: Path, title: str) -> Path:
    """Test accuracy vs each graph property; colour = cell, marker = family; r per cell in each title."""
    rows = df[df.graph_family.notna()]
    cells = list(dict.fromkeys(rows.model_arm.fillna("").astype(str)))
    fams = list(dict.fromkeys(rows.graph_family))
    markers = dict(zip(fams, "o^sD"))
    colors = plt.get_cmap("tab10")
    ncol = 5
    nrow = math.ceil(len(PROPERTIES) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.7 * nrow + 0.6), squeeze=False, sharey=True)
    for ax, prop in zip(axes.flat, PROPERTIES):
        rs = []
        for ci, cell in enumerate(cells):
            mine = rows[rows.model_arm.fillna("").astype(str) == cell]
            for fam in fams:
                s = mine[mine.graph_family == fam]
                ax.scatter(s[f"graph_{prop}"], s.test_acc * 100, s=14, alpha=0.75, color=colors(ci % 10),
                           marker=markers[fam], label=f"{cell or 'model'} {fam}")
            c = corr[(corr.model_arm.fillna("").astype(str) == cell) & (corr.graph_family == "all")
                     & (corr.property == prop)]
            r = float(c.r.iloc[0]) if len(c) else math.nan
            t = float(c.thesis_r.iloc[0]) if len(c) and "thesis_r" in c else math.nan
            rs.append((f"{r:+.2f}" if math.isfinite(r) else "n/a") + (f" ({t:+.2f})" if math.isfinite(t) else ""))
        ax.set_title(f"{prop}: r = {', '.join(rs)}", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(PROPERTIES):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", fontsize=8, ncol=2)
    fig.suptitle(f"{title}\nr: Pearson correlation with test accuracy, per cell ({', '.join(c or 'model' for c in cells)}),"
                 " both families pooled; (thesis' r, its raw CSVs)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return save_figure(fig, out, {"title": title, **_provenance(df)})


def run_figures(run_dir: Path, df: pd.DataFrame, title: str) -> list[Path]:
    first = df.iloc[0]
    title = (f"{first.experiment}: {first.model} on {first.dataset}, budget {first.budget}, "
             f"seeds {sorted(df.seed.unique().tolist())}")
    made = []
    if "policy_arm" in df and df.policy_arm.notna().any():
        made.append(prune_figure(df, run_dir / "figures" / "rnn_prune.png", title))
    if "graph_family" in df and df.graph_family.notna().any() and (run_dir / "correlations.csv").exists():
        corr = pd.read_csv(run_dir / "correlations.csv")
        made.append(graph_figure(df, corr, run_dir / "figures" / "graph_rnn.png", title))
    return made


def aggregate_figures(df: pd.DataFrame, stem: Path, title: str) -> list[Path]:
    """The same figures over the runs of a sweep or results root (means over seeds; r over all rows)."""
    made = []
    if "policy_arm" in df and df.policy_arm.notna().any():
        made.append(prune_figure(df, Path(f"{stem}_rnn_prune.png"), title))
    if "graph_family" in df and df.graph_family.notna().any():
        corr = pd.DataFrame(correlations(df.to_dict("records")))
        made.append(graph_figure(df, corr, Path(f"{stem}_graph_rnn.png"), title))
    return made
