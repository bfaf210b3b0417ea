"""Hardware results: reading ``hardware.csv`` files and their figures — per-run speedups
(``figures/hardware.png``), the kernel study's speedup vs sparsity with break-even points, and the measured
whole-model speedup over a sweep or results root."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from matplotlib.ticker import FuncFormatter  # noqa: E402

from .plot import _note_not_drawn, _pct_axis, _provenance, save_figure, save_png  # noqa: E402


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


def speedup_vs_sparsity(hw: pd.DataFrame, out: Path, title: str) -> Path | None:
    """Measured whole-model speedup over dense vs % weights remaining, per target × batch size, with
    95 % intervals, the ideal (MAC-ratio) speedup dashed, and the break-even line at 1×."""
    rows = hw[(hw.scope == "model") & hw.speedup.notna()] if "scope" in hw else hw.iloc[0:0]
    zero = rows[~(rows.density > 0)]
    not_drawn = {f"{t}, batch {b} at 0 %": None for t, b in zip(zero.hardware, zero.batch)}
    rows = rows[rows.density > 0]
    if rows.empty:
        if not_drawn:
            print(f"report: {Path(out).name} not drawn: every model is at 0 % weights remaining")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.6))
    colors = plt.get_cmap("tab10")
    for i, ((target, batch), sub) in enumerate(rows.groupby(["hardware", "batch"])):
        g = sub.assign(pct=sub.density * 100).groupby("pct").agg(
            s=("speedup", "median"), lo=("speedup_lo", "median"), hi=("speedup_hi", "median"),
            ideal=("speedup_ideal", "median")).sort_index(ascending=False)
        c = colors(i % 10)
        ax.errorbar(g.index, g.s, yerr=[g.s - g.lo, g.hi - g.s], color=c, marker="o", ms=4, capsize=3,
                    label=f"{target}, batch {batch}")
        ax.plot(g.index, g.ideal, color=c, ls=":", lw=1)
        below, above = g[g.s < 1], g[g.s >= 1]
        if len(below) and len(above):  # mark the first crossing of 1× (interpolated on log density)
            import numpy as np

            x0, x1 = below.index.min(), above.index.max()
            if x1 < x0:
                y0, y1 = np.log(g.s[x0]), np.log(g.s[x1])
                t = -y0 / (y1 - y0)
                xb = float(np.exp(np.log(x0) + t * (np.log(x1) - np.log(x0))))
                ax.axvline(xb, color=c, lw=0.8, ls="--")
                ax.annotate(f"break-even ≈{xb:.3g}%", (xb, 1.0), fontsize=7, color=c, rotation=90,
                            va="bottom", ha="right")
    ax.axhline(1.0, color="black", lw=1)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))
    _pct_axis(ax, (rows.density * 100).tolist())
    ax.set_ylabel("speedup over dense (×, log); dotted: ideal")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.tight_layout(rect=(0, 0.04 if not_drawn else 0, 1, 1))
    notes = _note_not_drawn(fig, out, not_drawn)
    return save_figure(fig, out, {"title": title, **_provenance(rows), "not_drawn": notes})


def read_hardware(path: Path) -> Any:
    """``hardware.csv`` (or every one under a folder) as one DataFrame, for reports and sweeps."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.rglob("hardware.csv"))
    frames = [pd.read_csv(f).assign(run_dir=str(f.parent)) for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
