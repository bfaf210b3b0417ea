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


def run_figures(run_dir: Path) -> list[Path]:
    """The figures of one run, written to ``<run_dir>/figures/``."""
    df = read_summary(Path(run_dir) / "summary.csv")
    if df.empty:
        return []
    first = df.iloc[0]
    title = (f"{first.experiment}: {first.model} on {first.dataset}, method {first.method}, "
             f"budget {first.budget}, seeds {sorted(df.seed.unique().tolist())}")
    if "pattern" in df and df.pattern.notna().any():  # N:M runs have their own figures
        from .nm_report import run_figures as nm_figures

        return nm_figures(Path(run_dir), df, title)
    return [accuracy_vs_density(df, Path(run_dir) / "figures" / "accuracy_vs_density.png", title)]


def console_table(df: pd.DataFrame) -> str:
    """A compact table of a summary for the terminal (one line per round × variant)."""
    cols = {"round": "round", "variant": "variant", "pattern": "pattern", "density": "density %",
            "test_acc_at_early_stop": "acc@ES %", "early_stop_step": "ES step", "test_acc": "final acc %", "wall_s": "s"}
    t = df[[c for c in cols if c in df]].copy()
    for c in ("density", "test_acc_at_early_stop", "test_acc"):
        if c in t:
            t[c] = (t[c] * 100).round(2)
    return t.rename(columns=cols).to_string(index=False)


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
