"""The figure of the Top-K gating MoE simulation (``schedule.kind=topk_moe_theory``): Voronoi loss and Hellinger
distance against the sample size on log-log axes, one line per fit (mean over replications, the spread of the
replications as a band), its fitted slope with the bootstrap interval in the legend, and the parametric rate
n^(−1/2) as a dotted guide through the exact fit's first point.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .plot import save_titled  # noqa: E402

LABELS = {"voronoi": "Voronoi loss D(Ĝ, G*)", "hellinger": "Hellinger distance h(p̂, p*)"}


def _fit_label(fit: str) -> str:
    k, top = fit[1:].split("_K")
    return f"k={k}, K={top}" + (" (exact)" if (k, top) == ("2", "1") else " (over-specified)")


def rates_figure(fits: pd.DataFrame, slopes: pd.DataFrame, out: Path, title: str) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = dict(zip(dict.fromkeys(fits.fit), plt.cm.tab10.colors))
    for ax, loss in zip(axes, ("voronoi", "hellinger")):
        for fit, sub in fits.groupby("fit", sort=False):
            g = sub.groupby("n")[loss]
            mean, lo, hi = g.mean(), g.quantile(0.1), g.quantile(0.9)
            row = slopes[(slopes.fit == fit) & (slopes.loss == loss)]
            lab = _fit_label(str(fit))
            if len(row):
                r = row.iloc[0]
                lab += f": slope {r.slope:+.2f} [{r.slope_lo:+.2f}, {r.slope_hi:+.2f}]"
            ax.fill_between(mean.index, lo, hi, color=colors[fit], alpha=0.15)
            ax.plot(mean.index, mean.values, "o-", color=colors[fit], label=lab)
        exact = fits[fits.fit == "k2_K1"].groupby("n")[loss].mean()
        if len(exact):
            n = np.array(sorted(fits.n.unique()), dtype=float)
            ax.plot(n, exact.iloc[0] * (n / n[0]) ** -0.5, ":", color="black", label="n^(−1/2) (parametric)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sample size n")
        ax.set_ylabel(LABELS[loss])
        ax.set_title("mean over replications; band: their 10–90 % range", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return save_titled(fig, out, title, slopes)
