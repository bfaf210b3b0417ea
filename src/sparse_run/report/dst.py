"""Figures of dynamic sparse training (``schedule.kind=dynamic``): accuracy per arm vs sparsity with the paired
RigL − static / RigL − SET differences, accuracy vs training FLOPs, the in-time over-parameterisation rate over
training, weights moved per update against ζ_t, and accuracy vs ΔT when the runs differ in
``method.schedule.every_steps``.

Differences are paired by seed inside one run (every arm of a level shares θ0, its starting mask and the data
order) and shown with a 95 % Student-t interval over seeds; with one seed the point has no interval.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .claims import t_interval  # noqa: E402
from .collect import run_files  # noqa: E402
from .plot import save_titled  # noqa: E402

ARMS = ("static", "set", "rigl", "snfs", "dsl", "gmp", "prune_ft", "rigl_2x", "small_dense")
COLORS = {"static": "tab:gray", "set": "tab:orange", "rigl": "tab:blue", "snfs": "tab:green", "gmp": "tab:red",
          "rigl_2x": "tab:purple", "small_dense": "tab:brown", "dsl": "tab:blue", "prune_ft": "tab:red"}
LABELS = {"static": "static sparse", "set": "SET", "rigl": "RigL", "snfs": "SNFS (sparse momentum)",
          "gmp": "GMP (prune from dense)", "rigl_2x": "RigL, 2x steps", "small_dense": "small dense (equal nnz)",
          "dsl": "DSL", "prune_ft": "dense → prune → fine-tune"}
PAIRS = (("rigl", "static"), ("rigl", "set"), ("dsl", "static"), ("dsl", "prune_ft"))
METRIC = "test_acc"


def is_dst(df: pd.DataFrame) -> bool:
    """Rows of a dynamic-sparse-training run (its arms' variant names)."""
    return "variant" in df and bool({"set", "rigl", "snfs", "dsl"} & set(df.variant.astype(str)))


def _order(variants: list[str]) -> list[str]:
    known = [v for v in ARMS if v in variants]
    return known + sorted(v for v in variants if v not in ARMS and v != "dense")


def _color(v: str) -> str | None:
    return COLORS.get(v, COLORS.get(v.rsplit("_", 1)[0]))


def _label(v: str) -> str:
    return LABELS.get(v, v)


def _levels(df: pd.DataFrame) -> list[float]:
    arms = df[df.variant != "dense"]
    return sorted({round(float(d), 6) for d in arms.target_density.dropna()}, reverse=True)


def _metric(df: pd.DataFrame) -> str:
    """What ``test_acc`` holds: accuracy, or Recall@20 on ranking data (rows with ``test_ndcg``)."""
    ranking = "test_ndcg" in df and df.test_ndcg.notna().any()
    return "final test Recall@20 (%)" if ranking else "final test accuracy (%)"


def _sparsity_axis(ax: plt.Axes, levels: list[float]) -> None:
    ax.set_xticks(range(len(levels)))
    ax.set_xticklabels([f"{100 * (1 - d):g}" for d in levels])
    ax.set_xlabel("sparsity (%)")
    ax.grid(True, alpha=0.3)


def _interval(vals: list[float]) -> tuple[float, float, float]:
    mean = sum(vals) / len(vals)
    lo, hi = t_interval(vals) if len(vals) > 1 else (mean, mean)
    return mean, mean - lo, hi - mean


def paired(df: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per level: ``a`` − ``b`` in percentage points, paired by run and seed, with mean, t-interval and n."""
    rows = []
    for level, sub in df.assign(level=df.target_density.round(6)).groupby("level"):
        keys = [k for k in ("run_dir", "seed") if k in sub]
        wide = sub[sub.variant.isin([a, b])].pivot_table(index=keys, columns="variant", values=METRIC)
        if a not in wide or b not in wide:
            continue
        diffs = ((wide[a] - wide[b]) * 100).dropna().tolist()
        if diffs:
            mean, lo, hi = _interval(diffs)
            rows.append({"level": level, "pair": f"{a} - {b}", "mean_pp": mean, "lo": mean - lo, "hi": mean + hi,
                         "n": len(diffs)})
    return pd.DataFrame(rows)


def accuracy_figure(df: pd.DataFrame, out: Path, title: str) -> Path:
    """Left: final test accuracy per arm vs sparsity (mean ± std over seeds; dense as a line). Right: paired
    RigL − static and RigL − SET (DSL − static, DSL − prune → fine-tune) per level with 95 % t-intervals."""
    levels = _levels(df)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6))
    dense = df[df.variant == "dense"][METRIC] * 100
    if len(dense):
        ax.axhline(dense.mean(), color="black", ls="--", lw=1.2, label=f"dense (n={len(dense)})")
    arms = _order(sorted(set(df.variant)))
    width = 0.8 / max(1, len(arms))
    for i, v in enumerate(arms):
        sub = df[df.variant == v].assign(level=lambda d: d.target_density.round(6))
        g = sub.groupby("level")[METRIC].agg(["mean", "std", "size"]).reindex(levels).dropna(subset=["mean"])
        xs = [levels.index(lv) + (i - (len(arms) - 1) / 2) * width for lv in g.index]
        ax.errorbar(xs, g["mean"] * 100, yerr=g["std"].fillna(0) * 100, fmt="o-", ms=4, lw=1, capsize=2,
                    color=_color(v), label=f"{_label(v)} (n={int(g['size'].max()) if len(g) else 0})")
    _sparsity_axis(ax, levels)
    ax.set_ylabel(_metric(df))
    ax.legend(fontsize=7, loc="lower left")
    for j, (a, b) in enumerate(pr for pr in PAIRS if {*pr} <= set(df.variant)):
        p = paired(df, a, b)
        if p.empty:
            continue
        xs = [levels.index(lv) + (j - 0.5) * 0.2 for lv in p.level]
        bx.errorbar(xs, p.mean_pp, yerr=[p.mean_pp - p.lo, p.hi - p.mean_pp], fmt="o", capsize=3,
                    color=_color(b), label=f"{_label(a)} − {_label(b)} (n={int(p.n.max())})")
    bx.axhline(0, color="black", lw=0.8)
    _sparsity_axis(bx, levels)
    bx.set_ylabel("paired difference (pp), 95 % t-interval")
    bx.legend(fontsize=7, loc="upper left")
    return save_titled(fig, out, title, df)


def flops_figure(df: pd.DataFrame, out: Path, title: str) -> Path | None:
    """Final test accuracy vs analytic training FLOPs (relative to dense training), one point per arm and level."""
    if "train_flops_ratio" not in df or df.train_flops_ratio.isna().all():
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = "osD^v<>"
    levels = _levels(df)
    for v in _order(sorted(set(df.variant))) + ["dense"]:
        sub = df[(df.variant == v) & df.train_flops_ratio.notna()]
        if sub.empty:
            continue
        g = sub.assign(level=sub.target_density.round(6)).groupby("level").agg(
            x=("train_flops_ratio", "mean"), y=(METRIC, "mean"))
        for lv, r in g.iterrows():
            m = markers[levels.index(lv) % len(markers)] if lv in levels else "*"
            ax.plot(r.x, r.y * 100, m, color=_color(v) or "black", ms=6)
        ax.plot([], [], "o", color=_color(v) or "black", label=_label(v))
    for i, lv in enumerate(levels):
        ax.plot([], [], markers[i % len(markers)], color="gray", mfc="none", label=f"{100 * (1 - lv):g} % sparse")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs relative to dense training (analytic)")
    ax.set_ylabel(_metric(df))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    return save_titled(fig, out, title, df)


def itop_figure(df: pd.DataFrame, out: Path, title: str) -> Path | None:
    """R_s = |∪_t mask_t| / N over training for every updating arm, one panel per level (mean over seeds)."""
    m = run_files(df, "metrics.jsonl")
    if m.empty or "itop" not in m or m.itop.isna().all():
        return None
    m = m[m.itop.notna()].merge(df[["run_dir", "round", "variant", "target_density"]].drop_duplicates(),
                                on=["run_dir", "round", "variant"])
    levels = [lv for lv in _levels(df) if lv in set(m.target_density.round(6))]
    fig, axes = plt.subplots(1, max(1, len(levels)), figsize=(4.2 * max(1, len(levels)), 3.8), squeeze=False)
    for ax, lv in zip(axes[0], levels):
        sub = m[m.target_density.round(6) == lv]
        for v in _order(sorted(set(sub.variant))):
            g = sub[sub.variant == v].groupby("step").itop.mean()
            ax.plot(g.index, g.values * 100, color=_color(v), label=_label(v))
        ax.axhline(lv * 100, color="black", ls=":", lw=1, label="density (static)")
        ax.set_title(f"{100 * (1 - lv):g} % sparse", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("R_s: weights ever active (%)")
    axes[0][0].legend(fontsize=7)
    return save_titled(fig, out, title, df)


def swaps_figure(df: pd.DataFrame, out: Path, title: str) -> Path | None:
    """Weights moved at each update as a share of the active ones, per updating arm and level (mean over seeds),
    against ζ_t: a swap is a newly grown weight, so the share is at most ζ_t (a dropped weight regrown at once is
    not a swap). From ``layers.csv``."""
    lay = run_files(df, "layers.csv")
    if lay.empty or "swapped" not in lay or lay.swapped.isna().all():
        return None
    ev = lay[lay.step > 0].dropna(subset=["swapped"])
    ev = ev.groupby(["run_dir", "variant", "round", "step"]).agg(
        swapped=("swapped", "sum"), active=("nonzeros", "sum"), zeta=("zeta", "first"), d=("total_target_density",
                                                                                           "first")).reset_index()
    levels = [lv for lv in _levels(df) if lv in set(ev.d.round(6))]
    fig, axes = plt.subplots(1, max(1, len(levels)), figsize=(4.2 * max(1, len(levels)), 3.8), squeeze=False)
    for ax, lv in zip(axes[0], levels):
        sub = ev[ev.d.round(6) == lv]
        for v in _order(sorted(set(sub.variant))):
            g = sub[sub.variant == v].assign(share=lambda e: e.swapped / e.active).groupby("step").share.mean()
            ax.plot(g.index, g.values * 100, color=_color(v), marker=".", ms=3, lw=1, label=_label(v))
        # ζ_t of each training length (a long arm has its own T_end): one dashed line per length
        for i, (_, z) in enumerate(sub.groupby(sub.groupby("variant").step.transform("max"))):
            z = z.groupby("step").zeta.first()
            ax.plot(z.index, z.values * 100, color="black", ls="--", lw=1, label="ζ_t (drop fraction)" if not i else None)
        ax.set_title(f"{100 * (1 - lv):g} % sparse", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("weights moved per update (% of active)")
    axes[0][0].legend(fontsize=7)
    return save_titled(fig, out, title, df)


def delta_t_figure(df: pd.DataFrame, out: Path, title: str) -> Path | None:
    """Final test accuracy vs ΔT (``delta_t``) per updating arm and level: mean with a 95 % t-interval over seeds,
    static as a reference line."""
    arms = df[df.variant != "dense"]
    if "delta_t" not in arms or arms.delta_t.nunique() < 2:
        return None
    levels = _levels(df)
    fig, axes = plt.subplots(1, len(levels), figsize=(4.6 * len(levels), 4), squeeze=False)
    for ax, lv in zip(axes[0], levels):
        sub = arms[arms.target_density.round(6) == lv]
        for v in _order(sorted(set(sub.variant))):
            g = sub[sub.variant == v].groupby("delta_t")[METRIC].apply(list)
            if v == "static":
                vals = [x for xs in g for x in xs]
                ax.axhline(sum(vals) / len(vals) * 100, color=_color(v), ls="--", label=f"{_label(v)} (n={len(vals)})")
                continue
            stats = [_interval([x * 100 for x in xs]) for xs in g]
            ax.errorbar(g.index, [s[0] for s in stats], yerr=[[s[1] for s in stats], [s[2] for s in stats]],
                        fmt="o-", capsize=3, color=_color(v), label=f"{_label(v)} (n={max(len(x) for x in g)})")
        ax.set_xscale("log")
        ax.set_xticks(sorted(sub.delta_t.unique()))
        ax.set_xticklabels([f"{int(t)}" for t in sorted(sub.delta_t.unique())])
        ax.set_xlabel("ΔT: steps between mask updates")
        ax.set_title(f"{100 * (1 - lv):g} % sparse", fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(_metric(df).replace(" (%)", " (%), 95 % t-interval"))
    axes[0][0].legend(fontsize=7)
    return save_titled(fig, out, title, df)


def figures(df: pd.DataFrame, stem: str, title: str) -> list[Path]:
    """Every DST figure of one configuration group, named ``<stem>dst_*.png`` (across ΔT values: the ΔT figure
    alone)."""
    if "delta_t" in df and df[df.variant != "dense"].delta_t.nunique() > 1:
        made = [delta_t_figure(df, Path(f"{stem}dst_delta_t.png"), title)]
    else:
        made = [accuracy_figure(df, Path(f"{stem}dst_accuracy.png"), title),
                flops_figure(df, Path(f"{stem}dst_flops.png"), title),
                itop_figure(df, Path(f"{stem}dst_itop.png"), title),
                swaps_figure(df, Path(f"{stem}dst_swaps.png"), title)]
    return [m for m in made if m is not None]
