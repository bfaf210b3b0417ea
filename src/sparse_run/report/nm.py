"""Figures of N:M runs (``summary.csv`` rows with a ``pattern`` column, ``metrics.jsonl`` with SAD).

- ``figures/nm_accuracy.png``: final test accuracy per pattern and method, the dense seeds as a
  band (mean ± std), and each arm's paired difference to the dense arm of its seed.
- ``figures/nm_sad.png``: SAD per evaluation interval, cumulative SAD, and the paired ratio
  SR-STE / STE per evaluation, per pattern.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .plot import save_png  # noqa: E402

METHODS = {"oneshot": ("tab:orange", "s", "one-shot + fine-tune"), "ste": ("tab:blue", "o", "STE"),
           "srste": ("tab:green", "^", "SR-STE"), "bdwp": ("tab:red", "D", "BDWP")}


def _order(p: str) -> tuple[float, str]:
    """Sort key: denser patterns first; mixed per-layer labels ("1:8/2:4") last."""
    try:
        n, m = p.split(":")
        return -int(n) / int(m), p
    except ValueError:
        return 1.0, p


def accuracy_figure(df: pd.DataFrame, out: Path, title: str) -> Path | None:
    sparse = df[df.variant.isin(METHODS) & (df.pattern != "dense")]
    dense = df[df.variant == "dense"]
    if sparse.empty:
        return None
    patterns = sorted(sparse.pattern.unique(), key=_order)
    x = {p: i for i, p in enumerate(patterns)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    dense_acc = dense.set_index("seed").test_acc * 100
    for ax, paired in ((axes[0], False), (axes[1], True)):
        if len(dense_acc):
            mu = 0.0 if paired else dense_acc.mean()
            sd = dense_acc.std(ddof=1) if len(dense_acc) > 1 else 0.0
            ax.axhline(mu, color="black", ls="--", lw=1.1, label=f"dense mean, ±1/±2 std (n={len(dense_acc)} seeds)")
            if sd > 0:
                ax.axhspan(mu - sd, mu + sd, color="black", alpha=0.1)
                ax.axhspan(mu - 2 * sd, mu + 2 * sd, color="black", alpha=0.05)
        methods = [v for v in METHODS if v in set(sparse.variant)]
        width = 0.8 / max(1, len(methods))
        for k, v in enumerate(methods):
            color, marker, label = METHODS[v]
            sub = sparse[sparse.variant == v].copy()
            sub["acc"] = sub.test_acc * 100
            if paired:
                sub = sub[sub.seed.isin(dense_acc.index)]
                sub["acc"] = sub.acc - dense_acc.loc[sub.seed].to_numpy()
            if sub.empty:  # no dense arm of this seed to pair with
                continue
            g = sub.groupby("pattern").acc.agg(["mean", "std", "size"])
            xs = [x[p] - 0.4 + width * (k + 0.5) for p in g.index]
            ax.errorbar(xs, g["mean"], yerr=g["std"].fillna(0), fmt=marker, color=color, ms=6, capsize=3,
                        label=f"{label} (n={int(g['size'].max())})")
        ax.set_xticks(range(len(patterns)), patterns)
        ax.set_xlabel("N:M pattern (sparser to the right)")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("final test accuracy (%)")
    axes[1].set_ylabel("paired Δ accuracy vs dense of the same seed (pp)")
    accs = [*(sparse.test_acc * 100).tolist(), *dense_acc.tolist()]
    pad = max(0.2, 0.1 * (max(accs) - min(accs)))
    axes[0].set_ylim(max(min(accs) - pad, 0), min(max(accs) + pad, 100))
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, out)


def sad_figure(metrics: pd.DataFrame, out: Path, title: str) -> Path | None:
    if "sad" not in metrics or metrics.sad.isna().all():
        return None
    m = metrics[metrics.variant.isin(["ste", "srste"]) & metrics.sad.notna()]
    if m.empty:
        return None
    patterns = sorted(m.pattern.unique(), key=_order)
    colors = dict(zip(patterns, plt.cm.viridis([i / max(1, len(patterns) - 1) * 0.85 for i in range(len(patterns))])))
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    for (variant, pattern, seed), g in m.groupby(["variant", "pattern", "seed"]):
        g = g.sort_values("step")
        ls = "--" if variant == "ste" else "-"
        label = f"{'STE' if variant == 'ste' else 'SR-STE'} {pattern}" + (f" s{seed}" if m.seed.nunique() > 1 else "")
        axes[0].plot(g.step, g.sad, ls=ls, color=colors[pattern], marker="." if variant == "srste" else None,
                     ms=3, label=label)
        axes[1].plot(g.step, g.sad_cum, ls=ls, color=colors[pattern], label=label)
    axes[0].set_yscale("symlog", linthresh=10)
    axes[0].set_ylabel("SAD: mask flips since previous evaluation")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("cumulative SAD")
    # paired ratio SR-STE / STE (same pattern and seed, same evaluation step)
    pivot = m.pivot_table(index=["pattern", "seed", "step"], columns="variant", values="sad")
    if {"ste", "srste"} <= set(pivot.columns):
        ratio = (pivot.srste / pivot.ste.where(pivot.ste > 0)).dropna().reset_index()
        for (pattern, seed), g in ratio.groupby(["pattern", "seed"]):
            label = f"{pattern}" + (f" s{seed}" if m.seed.nunique() > 1 else "")
            axes[2].plot(g.step, g[0], color=colors[pattern], marker=".", ms=3, label=label)
        last = m.step.max()
        axes[2].axvspan(0.75 * last, last, color="grey", alpha=0.12, label="last quarter")
        axes[2].axhline(1.0, color="black", lw=1, ls="--")
        axes[2].set_ylim(0, 1.5)
    axes[2].set_ylabel("SAD ratio SR-STE / STE (paired)")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2, loc="lower right")
    axes[2].legend(fontsize=7, loc="lower left")
    fig.suptitle(title + "  (dashed: STE, solid: SR-STE)", fontsize=10)
    fig.tight_layout()
    return save_png(fig, out)


def run_figures(run_dir: Path, df: pd.DataFrame, title: str) -> list[Path]:
    """The N:M figures of one run directory."""
    run_dir = Path(run_dir)
    out = [accuracy_figure(df, run_dir / "figures" / "nm_accuracy.png", title)]
    path = run_dir / "metrics.jsonl"
    if path.exists():
        metrics = pd.DataFrame([json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()])
        if "pattern" in metrics:
            out.append(sad_figure(metrics, run_dir / "figures" / "nm_sad.png", title))
    return [p for p in out if p is not None]
