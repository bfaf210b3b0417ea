"""Figures of retraining-free MoE expert pruning (``schedule.kind=expert_prune``): test accuracy of every reduction
per number of experts kept, the unpruned model as a line, and the paired differences that test DERN's argument —
DERN − frequency dropping, neuron-matched − naive averaging, DERN − random — with 95 % t-intervals over seeds
(every reduction of a seed starts from the same trained model, so they pair).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .plot import mean_interval, save_titled  # noqa: E402

ORDER = ("random", "drop", "average", "matched_average", "dern")
LABELS = {"random": "random keep + drop", "drop": "frequency drop", "average": "whole-expert average",
          "matched_average": "neuron-matched average", "dern": "DERN"}
COLORS = {"random": "tab:gray", "drop": "tab:orange", "average": "tab:olive", "matched_average": "tab:green",
          "dern": "tab:blue"}
PAIRS = (("dern", "drop"), ("matched_average", "average"), ("dern", "random"))


def is_expert_prune(df: pd.DataFrame) -> bool:
    return "experts_kept" in df and df.experts_kept.notna().any()


def paired(df: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per experts kept: ``a`` − ``b`` in pp, paired by run and seed."""
    keys = [k for k in ("run_dir", "seed") if k in df] + ["experts_kept"]
    both = df[df.variant == a][keys + ["test_acc"]].merge(df[df.variant == b][keys + ["test_acc"]], on=keys,
                                                            suffixes=("_a", "_b"))
    rows = []
    for n, sub in both.groupby("experts_kept"):
        mean, lo, hi = mean_interval(((sub.test_acc_a - sub.test_acc_b) * 100).tolist())
        rows.append({"experts_kept": n, "mean": mean, "lo": lo, "hi": hi, "n": len(sub)})
    return pd.DataFrame(rows)


def accuracy_figure(df: pd.DataFrame, out: Path, title: str) -> Path:
    levels = sorted(df.experts_kept.dropna().unique(), reverse=True)
    experts = int(df.experts.dropna().iloc[0]) if "experts" in df and df.experts.notna().any() else None
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6))
    dense = df[df.variant == "dense"].test_acc * 100
    if len(dense):
        ax.axhline(dense.mean(), color="black", ls="--", lw=1.2, label=f"unpruned ({experts} experts, n={len(dense)})")
    arms = [a for a in ORDER if a in set(df.variant)]
    for i, a in enumerate(arms):
        g = df[df.variant == a].groupby("experts_kept").test_acc.apply(lambda s: [v * 100 for v in s])
        stats = [mean_interval(v) for v in g]
        xs = [levels.index(n) + (i - (len(arms) - 1) / 2) * 0.13 for n in g.index]
        ax.errorbar(xs, [s[0] for s in stats], yerr=[[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]],
                    fmt="o", capsize=3, color=COLORS[a], label=f"{LABELS[a]} (n={max(map(len, g))})")
    for axis in (ax, bx):
        axis.set_xticks(range(len(levels)))
        axis.set_xticklabels([f"{int(n)}" + (f" of {experts}" if experts else "") for n in levels])
        axis.set_xlabel("experts kept (no retraining)")
        axis.grid(True, alpha=0.3)
    ax.set_ylabel("test accuracy (%), 95 % t-interval")
    ax.legend(fontsize=7, loc="lower left")
    for j, (a, b) in enumerate(pr for pr in PAIRS if {*pr} <= set(df.variant)):
        p = paired(df, a, b)
        xs = [levels.index(n) + (j - 1) * 0.15 for n in p.experts_kept]
        bx.errorbar(xs, p["mean"], yerr=[p["mean"] - p.lo, p.hi - p["mean"]], fmt="o", capsize=3, color=COLORS[a],
                    mfc=COLORS[b], label=f"{LABELS[a]} − {LABELS[b]} (n={int(p.n.max()) if len(p) else 0})")
    bx.axhline(0, color="black", lw=0.8)
    bx.set_ylabel("paired difference (pp), 95 % t-interval")
    bx.legend(fontsize=7, loc="best")
    return save_titled(fig, out, title, df)


def figures(df: pd.DataFrame, stem: str, title: str) -> list[Path]:
    """``<stem>moe_accuracy.png``."""
    return [accuracy_figure(df, Path(f"{stem}moe_accuracy.png"), title)]
