"""Reporting: results files → pandas tables → figures.

Reads only the documented schema (``summary.csv``), so it works on a run, a sweep or a whole
results root, and on runs made by older versions.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from .results import read_summary  # noqa: E402

STYLE = {"ticket": ("tab:blue", "o", "winning ticket (rewind)"),
         "reinit": ("tab:orange", "s", "random reinit (same mask)"),
         "sparse": ("tab:green", "^", "sparse"),
         "small_dense": ("tab:purple", "D", "small dense")}


def _pct_axis(ax: plt.Axes, pcts: list[float]) -> None:
    """Log axis of % weights remaining, decreasing left to right (like the papers), ticked at the data."""
    ax.set_xscale("log")
    ticks = sorted({round(p, 1) for p in pcts}, reverse=True)
    if len(ticks) > 9:  # keep labels readable: thin out, always keeping both ends
        step = -(-len(ticks) // 9)
        ticks = sorted(set(ticks[::step]) | {ticks[0], ticks[-1]}, reverse=True)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.set_xlim(max(pcts) * 1.15, min(pcts) / 1.15)
    ax.set_xlabel("weights remaining (%)")
    ax.grid(True, which="both", alpha=0.3)


def accuracy_vs_density(df: pd.DataFrame, out: Path, title: str) -> Path:
    """Two panels: test accuracy at early stop, and the early-stop iteration, vs % weights remaining.

    Lines are means over seeds with a ±1 std band; the dense baseline is a horizontal band.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    dense = df[df.variant == "dense"]
    for ax, col, label in ((axes[0], "test_acc_at_early_stop", "test accuracy at early stop (%)"),
                           (axes[1], "early_stop_step", "early-stop iteration (min val. loss)")):
        scale = 100.0 if col.startswith("test_acc") else 1.0
        if len(dense):
            mu, sd = dense[col].mean() * scale, (dense[col].std(ddof=0) if len(dense) > 1 else 0.0) * scale
            ax.axhline(mu, color="black", lw=1.2, ls="--", label=f"dense (n={len(dense)})")
            if sd > 0:
                ax.axhspan(mu - sd, mu + sd, color="black", alpha=0.08)
        for variant, (color, marker, name) in STYLE.items():
            sub = df[df.variant == variant]
            if sub.empty:
                continue
            g = sub.assign(pct=sub.density * 100).groupby("round").agg(
                pct=("pct", "mean"), mu=(col, "mean"), sd=(col, lambda s: s.std(ddof=0)), n=(col, "size"))
            g = g.sort_values("pct", ascending=False)
            ax.plot(g.pct, g.mu * scale, color=color, marker=marker, ms=4, label=f"{name} (n={int(g.n.max())})")
            ax.fill_between(g.pct, (g.mu - g.sd.fillna(0)) * scale, (g.mu + g.sd.fillna(0)) * scale,
                            color=color, alpha=0.15)
        _pct_axis(ax, (df.density * 100).tolist())
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _series(row: pd.Series) -> str:
    """Line label of a row in a method comparison: the method, plus the variant for controls."""
    if row.variant == "small_dense":
        return "small dense (matched NNZ)"
    return row.method if row.variant in ("sparse", "ticket") else f"{row.method} {row.variant}"


def compares_methods(df: pd.DataFrame) -> bool:
    """True for runs holding several methods or non-IMP arms (one-shot, at-init, gradual, small-dense)."""
    return df[df.variant != "dense"].method.nunique() > 1 or bool(set(df.variant) & {"sparse", "small_dense"})


def method_comparison(df: pd.DataFrame, out: Path, title: str) -> Path:
    """Final test accuracy and test accuracy at early stop vs % weights remaining, one line per method.

    x is the achieved density of the prunable weights (for small-dense rows, the matched level's
    density); means over seeds with a ±1 std band; dense baseline as a horizontal line and band.
    """
    df = df.assign(x=df.density.where(df.variant != "small_dense", df.target_density) * 100,
                   series=df.apply(_series, axis=1))
    arms, dense = df[df.variant != "dense"], df[df.variant == "dense"]
    names = list(dict.fromkeys(arms.series))
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, col, label in ((axes[0], "test_acc", "final test accuracy (%)"),
                           (axes[1], "test_acc_at_early_stop", "test accuracy at early stop (%)")):
        if len(dense):
            mu, sd = dense[col].mean() * 100, (dense[col].std(ddof=0) if len(dense) > 1 else 0.0) * 100
            ax.axhline(mu, color="black", lw=1.2, ls="--", label=f"dense (n={len(dense)})")
            ax.axhspan(mu - max(sd, 0.05), mu + max(sd, 0.05), color="black", alpha=0.08)
        for i, name in enumerate(names):
            sub = arms[arms.series == name]
            g = sub.groupby("round").agg(x=("x", "mean"), mu=(col, "mean"), sd=(col, lambda v: v.std(ddof=0)),
                                         n=(col, "size")).sort_values("x", ascending=False)
            marker = "D" if name.startswith("small dense") else "o"
            ax.plot(g.x, g.mu * 100, color=colors(i % 10), marker=marker, ms=4, label=f"{name} (n={int(g.n.max())})")
            ax.fill_between(g.x, (g.mu - g.sd.fillna(0)) * 100, (g.mu + g.sd.fillna(0)) * 100,
                            color=colors(i % 10), alpha=0.15)
        _pct_axis(ax, df.x.tolist())
        ax.set_ylabel(label)
        ax.tick_params(labelleft=True)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def run_figures(run_dir: Path) -> list[Path]:
    """The figures of one run, written to ``<run_dir>/figures/``."""
    df = read_summary(Path(run_dir) / "summary.csv")
    if df.empty:
        return []
    first = df.iloc[0]
    title = (f"{first.experiment}: {first.model} on {first.dataset}, method {first.method}, "
             f"budget {first.budget}, seeds {sorted(df.seed.unique().tolist())}")
    out = Path(run_dir) / "figures" / "accuracy_vs_density.png"
    if compares_methods(df):
        return [method_comparison(df, out, title.replace(f"method {first.method}",
                                                         f"methods {', '.join(dict.fromkeys(df[df.variant != 'dense'].method))}"))]
    return [accuracy_vs_density(df, out, title)]


def main() -> None:
    """``sparse-run-report DIR``: aggregate every summary.csv under DIR (completed in the sweeps issue)."""
    import sys

    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    df = read_summary(root)
    if df.empty:
        sys.exit(f"error: no summary.csv under {root}")
    cols = ["experiment", "method", "seed", "round", "variant", "density", "test_acc_at_early_stop",
            "early_stop_step", "test_acc"]
    print(df[[c for c in cols if c in df]].to_string(index=False))
