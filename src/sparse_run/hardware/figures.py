"""Figures of the hardware measurements: per-run speedups (``figures/hardware.png``) and the
kernel study's speedup vs sparsity with break-even points (``figures/speedup_vs_sparsity.png``)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..report import save_png  # noqa: E402


def hardware_figure(csv: Path, out: Path) -> Path:
    """One panel per batch size: measured speedup (median, CI bar), ideal and channel-pruned speedups."""
    df = pd.read_csv(csv)
    batches = sorted(df.batch.unique())
    fig, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches), 4.0), squeeze=False, sharey=True)
    first = df.iloc[0]
    for ax, b in zip(axes[0], batches):
        sub = df[df.batch == b].reset_index(drop=True)
        xs = np.arange(len(sub))
        ok = sub.speedup.notna()
        if ok.any():
            err = np.vstack([sub.speedup[ok] - sub.speedup_lo[ok], sub.speedup_hi[ok] - sub.speedup[ok]])
            ax.errorbar(xs[ok], sub.speedup[ok], yerr=err, fmt="o", color="tab:blue", capsize=3,
                        label=f"measured ({first.execution}), {int(first.rounds)} rounds, 95% CI")
        ax.scatter(xs, sub.speedup_ideal, marker="_", s=200, color="tab:green", label="ideal (MAC ratio)")
        if sub.speedup_channel_equiv.notna().any():
            ax.scatter(xs, sub.speedup_channel_equiv, marker="x", color="tab:purple",
                       label="channel-pruned dense, same weight count")
        for x, (_, r) in zip(xs, sub.iterrows()):
            ax.text(x, 0.02, str(r.verdict), transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=7, color="dimgray")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(xs, [f"{r.layer}\n{r.density:.1%}" for _, r in sub.iterrows()], fontsize=7)
        ax.set_title(f"batch {b}", fontsize=9)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0][0].set_ylabel("speedup over dense (×, log)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, frameon=False)
    fig.suptitle(f"{first.experiment}: {first.model}, method {first.method}, hardware {first.hardware} "
                 f"({first['device']}, {int(first['threads'])} thread(s), {first['dtype']}); verdict by the CI",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save_png(fig, out, dpi=110)


def kernel_figure(df: pd.DataFrame, breakeven: pd.DataFrame, out: Path, title: str) -> Path:
    """Speedup vs sparsity: one panel per (pattern, backend), one curve per shape, break-even marked."""
    combos = df[["pattern", "backend"]].drop_duplicates().values.tolist()
    ncols = min(2, len(combos))
    nrows = -(-len(combos) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 4.4 * nrows), squeeze=False, sharey=True)
    shapes = list(dict.fromkeys(df.shape_label))
    colors = [("black" if s.startswith("network") else c)
              for s, c in zip(shapes, plt.cm.viridis(np.linspace(0, 0.95, max(len(shapes), 1))))]
    for ax in axes.flat[len(combos):]:
        ax.set_visible(False)
    for ax, (pattern, backend) in zip(axes.flat, combos):
        sub = df[(df.pattern == pattern) & (df.backend == backend)]
        for color, shape in zip(colors, shapes):
            s = sub[sub.shape_label == shape].sort_values("sparsity")
            if s.empty:
                continue
            net = shape.startswith("network")
            ax.errorbar(s.sparsity * 100, s.speedup, yerr=[s.speedup - s.speedup_lo, s.speedup_hi - s.speedup],
                        color=color, marker="o", ms=3, lw=2.2 if net else 1, ls="--" if net else "-", capsize=2,
                        label=shape)
            be = breakeven[(breakeven.pattern == pattern) & (breakeven.backend == backend)
                           & (breakeven.shape_label == shape)]
            if len(be) and pd.notna(be.breakeven_sparsity.iloc[0]):
                ax.plot(be.breakeven_sparsity.iloc[0] * 100, 1.0, marker="|", ms=14, mew=2, color=color)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("sparsity (%)")
        ax.set_title(f"{pattern}, {backend}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    for row in axes:
        row[0].set_ylabel("speedup over dense GEMM (×, log; | = break-even)")
    axes[0][0].legend(fontsize=6, loc="upper left", title="C_in→C_out @HW", title_fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, out, dpi=110)
