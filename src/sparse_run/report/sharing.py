"""Figures of parameter sharing against pruning (``schedule.kind=sharing``): accuracy vs compression for every arm
with the paired STABLE-RPS − best pruning and STABLE-RPS − LTR differences, and accuracy vs z's init std with and
without gradient scaling when the runs vary it.

"Best pruning" at a level and seed is the pruning-at-init criterion with the highest *validation* accuracy there
(never chosen on the test set); its test accuracy is what the difference uses. Differences are paired by run and
seed (every arm of a run shares θ0's seed and the data order), with 95 % Student-t intervals over seeds.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .claims import t_interval  # noqa: E402
from .plot import save_titled  # noqa: E402

RPS = ("stable_rps", "stable_rps_nogs", "roast", "roast_gs", "hashed_net", "hashed_net_gs")
LABELS = {"stable_rps": "STABLE-RPS", "stable_rps_nogs": "RandomFold, no grad scaling", "roast": "ROAST",
          "roast_gs": "ROAST + grad scaling", "hashed_net": "HashedNet", "hashed_net_gs": "HashedNet + grad scaling",
          "ltr": "LTR (rewind)", "small_dense": "small dense", "random": "random", "magnitude": "magnitude",
          "snip": "SNIP", "grasp": "GraSP", "synflow": "SynFlow"}
COLORS = {"stable_rps": "tab:blue", "stable_rps_nogs": "tab:cyan", "roast": "tab:orange", "roast_gs": "tab:red",
          "hashed_net": "tab:green", "hashed_net_gs": "olive", "ltr": "black", "small_dense": "tab:brown",
          "random": "tab:gray", "magnitude": "tab:pink", "snip": "tab:purple", "grasp": "gold", "synflow": "teal"}
METRIC = "test_acc"


def is_sharing(df: pd.DataFrame) -> bool:
    return "mapper" in df and df.mapper.notna().any()


def arms(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with ``arm`` (what a line is: an RPS arm, a criterion, ltr, small_dense, dense) and ``compression_x``
    (the level: n / trained shareable parameters planned)."""
    def arm(r: pd.Series) -> str:
        if r.variant in RPS or r.variant in ("dense", "small_dense"):
            return str(r.variant)
        return "ltr" if r.variant == "ticket" else str(r.method)
    out = df.assign(arm=df.apply(arm, axis=1), compression_x=(1 / df.target_density).round(3))
    return out


def _main_std(df: pd.DataFrame) -> pd.DataFrame:
    """RPS rows at the most common init std (the std study's other stds have their own figure)."""
    rps = df[df.arm.isin(RPS)]
    if rps.empty or "init_std" not in df:
        return df
    std = rps.init_std.mode().iloc[0]
    return df[~df.arm.isin(RPS) | (df.init_std == std)]


def _interval(vals: list[float]) -> tuple[float, float, float]:
    mean = sum(vals) / len(vals)
    lo, hi = t_interval(vals) if len(vals) > 1 else (mean, mean)
    return mean, lo, hi


def best_pruning(df: pd.DataFrame) -> pd.DataFrame:
    """Per run, seed and level: the pruning-at-init criterion with the highest validation accuracy, and its test
    accuracy."""
    crit = df[df.variant == "sparse"]
    if crit.empty:
        return crit
    idx = crit.groupby(["run_dir", "seed", "compression_x"]).val_acc.idxmax()
    return crit.loc[idx.values]


def paired(df: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per level: arm ``a`` − arm ``b`` (``best`` = best pruning at init by val accuracy) in pp, paired by run
    and seed."""
    left = df[df.arm == a]
    right = best_pruning(df).assign(arm="best") if b == "best" else df[df.arm == b]
    keys = ["run_dir", "seed", "compression_x"]
    both = left[keys + [METRIC]].merge(right[keys + [METRIC]], on=keys, suffixes=("_a", "_b"))
    rows = []
    for level, sub in both.groupby("compression_x"):
        diffs = ((sub[f"{METRIC}_a"] - sub[f"{METRIC}_b"]) * 100).tolist()
        mean, lo, hi = _interval(diffs)
        rows.append({"compression": level, "mean_pp": mean, "lo": lo, "hi": hi, "n": len(diffs)})
    return pd.DataFrame(rows)


def _order(names: set[str]) -> list[str]:
    return [a for a in LABELS if a in names] + sorted(names - set(LABELS) - {"dense"})


def accuracy_figure(df: pd.DataFrame, out: Path, title: str) -> Path:
    """Left: final test accuracy vs compression (log) per arm, mean ± std over seeds, dense as a line, each RPS
    arm's unused-slot share at 1× in the legend. Right: STABLE-RPS − best pruning at init and − LTR, paired."""
    df = _main_std(arms(df))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    dense = df[df.arm == "dense"][METRIC] * 100
    if len(dense):
        ax.axhline(dense.mean(), color="black", ls="--", lw=1.2, label=f"dense (n={len(dense)})")
    for a in _order(set(df.arm)):
        sub = df[df.arm == a]
        g = sub.groupby("compression_x")[METRIC].agg(["mean", "std", "size"]).sort_index()
        label = f"{LABELS.get(a, a)} (n={int(g['size'].max())})"
        if a in RPS and "unused_slots" in sub:  # HashedNet's ≈1/e and ROAST's colliding tiles at 1x
            at1 = sub[sub.compression_x <= 1.0001].unused_slots
            if len(at1):
                label += f"; {100 * at1.mean():.1f} % slots unused at 1x"
        ls = "-" if a in RPS else ":" if a in ("small_dense", "ltr") else "--"
        ax.errorbar(g.index, g["mean"] * 100, yerr=g["std"].fillna(0) * 100, fmt="o", ls=ls, ms=4, lw=1.2,
                    capsize=2, color=COLORS.get(a), label=label)
    ax.set_xscale("log")
    ax.set_xlabel("compression: shareable weights per trained parameter (log)")
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    for j, (b, label, color) in enumerate((("best", "best pruning at init (by val acc)", "tab:purple"),
                                           ("small_dense", "small dense", "tab:brown"), ("ltr", "LTR", "black"))):
        p = paired(df, "stable_rps", b)
        if p.empty:
            continue
        xs = [x * (1.08 ** (j - 1)) for x in p.compression]
        bx.errorbar(xs, p.mean_pp, yerr=[p.mean_pp - p.lo, p.hi - p.mean_pp], fmt="o", capsize=3, color=color,
                    label=f"STABLE-RPS − {label} (n={int(p.n.max())})")
    bx.axhline(0, color="black", lw=0.8)
    bx.set_xscale("log")
    bx.set_xlabel("compression (log)")
    bx.set_ylabel("paired difference (pp), 95 % t-interval")
    bx.grid(True, which="both", alpha=0.3)
    bx.legend(fontsize=7, loc="upper left")
    return save_titled(fig, out, title, df)


def init_std_figure(df: pd.DataFrame, out: Path, title: str) -> Path | None:
    """Final test accuracy vs z's init std (log) per RPS arm, one panel per compression; mean with 95 % t-interval
    over seeds. Diverged arms count at the majority class's accuracy and are crossed."""
    df = arms(df)
    rps = df[df.arm.isin(RPS)]
    if "init_std" not in rps or rps.init_std.nunique() < 2:
        return None
    levels = sorted(rps.compression_x.unique())
    fig, axes = plt.subplots(1, len(levels), figsize=(5.5 * len(levels) + 3.2, 4.4), squeeze=False)
    dense = df[df.arm == "dense"][METRIC] * 100
    for ax, lv in zip(axes[0], levels):
        sub = rps[rps.compression_x == lv]
        for a in _order(set(sub.arm)):
            g = sub[sub.arm == a].groupby("init_std")[METRIC].apply(lambda s: [v * 100 for v in s])
            stats = [_interval(v) for v in g]
            ax.errorbar(g.index, [s[0] for s in stats], yerr=[[s[0] - s[1] for s in stats],
                                                              [s[2] - s[0] for s in stats]],
                        fmt="o-", capsize=3, color=COLORS.get(a), label=f"{LABELS.get(a, a)} (n={max(map(len, g))})")
        bad = sub[sub.status == "diverged"] if "status" in sub else sub.iloc[0:0]
        if len(bad):  # every seed's diverged arm, at the accuracy it was recorded at
            ax.plot(bad.init_std, bad[METRIC] * 100, "x", color="black", ms=9, mew=2,
                    label=f"diverged (NaN loss; {len(bad)} arm-seeds, at the majority class)")
        if len(dense):
            ax.axhline(dense.mean(), color="black", ls="--", lw=1, label="dense")
        ax.set_xscale("log")
        ax.set_xlabel("init std of the shared array z (log)")
        ax.set_title(f"{lv:g}x compression", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("final test accuracy (%), 95 % t-interval")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))  # outside: points fill the panel
    return save_titled(fig, out, title, df)


def figures(df: pd.DataFrame, stem: str, title: str) -> list[Path]:
    """The sharing figures of one set of runs, named ``<stem>rps_*.png``: across init stds the std figure alone."""
    a = arms(df)
    rps = a[a.arm.isin(RPS)]
    if "init_std" in rps and rps.init_std.nunique() > 1 and not (a.variant == "sparse").any():
        made = [init_std_figure(df, Path(f"{stem}rps_init_std.png"), title)]
    else:
        made = [accuracy_figure(df, Path(f"{stem}rps_accuracy.png"), title),
                init_std_figure(df, Path(f"{stem}rps_init_std.png"), title)]
    return [m for m in made if m is not None]
