"""Figures of the Random Search baseline (``schedule.kind=random_search``): retrained accuracy of the search's winner
against an independent random mask and the dense parent, with the paired difference tested for *equivalence*
(two one-sided t-tests within ±``MARGIN_PP``); the selection score against the retrained accuracy (does the search's
advantage survive retraining, or regress to the mean?); and epochs to the target validation accuracy.

Pairs are searches (runs): every retrained arm of a run is trained on the same fresh data-order seeds from its slice
of the same θ0, and those seeds share the arm's mask, so each arm is first averaged over them; intervals are over
searches.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .claims import t_interval  # noqa: E402
from .plot import save_titled  # noqa: E402

ARMS = ("rs_best", "rs_best_init", "rs_worst", "random_mask")
LABELS = {"rs_best": "RS best (short training)", "rs_best_init": "RS best (at init)", "rs_worst": "RS worst",
          "random_mask": "random mask"}
COLORS = {"rs_best": "tab:blue", "rs_best_init": "tab:cyan", "rs_worst": "tab:red", "random_mask": "tab:gray"}
MARGIN_PP = 0.5  # the equivalence margin of the scoreboard's claims (conf/experiment/random_search_mnist.yaml)


def is_random_search(df: pd.DataFrame) -> bool:
    return "variant" in df and bool(set(ARMS) & set(df.variant.astype(str)))


def tost(diffs: list[float], margin: float) -> float:
    """p-value of two one-sided t-tests that the mean paired difference lies within ±margin (max of the two)."""
    from scipy import stats

    n = len(diffs)
    if n < 2:
        return float("nan")
    s = pd.Series(diffs, dtype=float)
    se = s.std(ddof=1) / math.sqrt(n)
    if se == 0:
        return 0.0 if abs(s.mean()) < margin else 1.0
    p_low = 1 - stats.t.cdf((s.mean() + margin) / se, n - 1)
    p_high = stats.t.cdf((s.mean() - margin) / se, n - 1)
    return float(max(p_low, p_high))


def per_search(df: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """Each retrained arm's ``metric`` averaged over its retrain seeds, one row per search (run): the seeds share the
    arm's mask, so they replicate training noise only; masks are replicated by searches."""
    arms = df[df.variant.isin(ARMS)]
    return arms.groupby(["run_dir", "space", "units_removed", "variant"], as_index=False)[metric].mean()


def paired(df: pd.DataFrame, a: str, b: str, metric: str = "test_acc", scale: float = 100) -> pd.DataFrame:
    """Per space and level: ``a`` − ``b`` paired by search (each the mean over its retrain seeds): mean, 95 %
    t-interval over searches, n and the TOST p-value."""
    keys = ["run_dir", "space", "units_removed"]
    s = per_search(df, metric)
    both = s[s.variant == a][keys + [metric]].merge(s[s.variant == b][keys + [metric]], on=keys,
                                                    suffixes=("_a", "_b"))
    rows = []
    for (space, level), sub in both.groupby(["space", "units_removed"]):
        d = ((sub[f"{metric}_a"] - sub[f"{metric}_b"]) * scale).dropna().tolist()
        if not d:
            continue
        mean = sum(d) / len(d)
        lo, hi = t_interval(d) if len(d) > 1 else (mean, mean)
        rows.append({"space": space, "units_removed": level, "mean": mean, "lo": lo, "hi": hi, "n": len(d),
                     "tost_p": tost(d, MARGIN_PP) if scale == 100 else float("nan")})
    return pd.DataFrame(rows)


def _spaces(df: pd.DataFrame) -> list[str]:
    return [s for s in ("node", "weight") if s in set(df.space.dropna())]


def accuracy_figure(df: pd.DataFrame, out: Path, title: str) -> Path:
    """Per space: retrained test accuracy per arm and level (mean, 95 % t-interval over searches, each the mean of
    its retrain seeds), dense parent as a line; last panel: RS best − random mask, paired by search, with the
    ±margin band and the TOST p-value."""
    spaces = _spaces(df)
    fig, axes = plt.subplots(1, len(spaces) + 1, figsize=(5.2 * (len(spaces) + 1), 4.6), squeeze=False)
    dense = df[df.variant == "dense"].test_acc * 100
    levels = sorted(df[df.variant.isin(ARMS)].units_removed.unique())
    for ax, space in zip(axes[0], spaces):
        if len(dense):
            ax.axhline(dense.mean(), color="black", ls="--", lw=1, label=f"dense parent (n={len(dense)})")
        searches = per_search(df)
        for i, a in enumerate(ARMS):
            sub = searches[(searches.variant == a) & (searches.space == space)]
            if sub.empty:
                continue
            g = sub.groupby("units_removed").test_acc.apply(lambda s: [v * 100 for v in s])
            stats = [(sum(v) / len(v), *(t_interval(v) if len(v) > 1 else (v[0], v[0]))) for v in g]
            xs = [levels.index(lv) + (i - 1.5) * 0.12 for lv in g.index]
            ax.errorbar(xs, [s[0] for s in stats], yerr=[[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]],
                        fmt="o", capsize=3, ms=4, color=COLORS[a], label=f"{LABELS[a]} ({max(map(len, g))} searches)")
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels([f"{100 * lv:g}" for lv in levels])
        ax.set_xlabel(f"hidden units removed (%), {space} space")
        ax.set_ylabel("final test accuracy (%), 95 % t-interval")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    bx = axes[0][-1]
    p = paired(df, "rs_best", "random_mask")
    for j, space in enumerate(spaces):
        sub = p[p.space == space]
        xs = [levels.index(lv) + (j - 0.5) * 0.2 for lv in sub.units_removed]
        bx.errorbar(xs, sub["mean"], yerr=[sub["mean"] - sub.lo, sub.hi - sub["mean"]], fmt="o", capsize=3,
                    color=("tab:blue", "tab:orange")[j], label=f"{space} space ({int(sub.n.max()) if len(sub) else 0} searches)")
        for x, r in zip(xs, sub.itertuples()):
            bx.annotate(f"p={r.tost_p:.2g}", (x, r.hi), fontsize=6, ha="center", va="bottom")
    lo_lim, hi_lim = -6 * MARGIN_PP, 8 * MARGIN_PP  # keep the margin readable; off-scale points are written out
    off = p[(p.hi > hi_lim) | (p.lo < lo_lim)] if len(p) else p
    if len(off):
        bx.set_ylim(lo_lim, hi_lim)
        for j, r in enumerate(off.itertuples()):
            bx.annotate(f"off scale: {r.space} {100 * r.units_removed:g} %: {r.mean:+.1f} [{r.lo:.1f}, {r.hi:.1f}]",
                        (0.02, 0.97 - 0.06 * j), xycoords="axes fraction", fontsize=7, va="top")
    bx.axhspan(-MARGIN_PP, MARGIN_PP, color="green", alpha=0.12, label=f"equivalence margin ±{MARGIN_PP} pp")
    bx.axhline(0, color="black", lw=0.8)
    bx.set_xticks(range(len(levels)))
    bx.set_xticklabels([f"{100 * lv:g}" for lv in levels])
    bx.set_xlabel("hidden units removed (%)")
    bx.set_ylabel("RS best − random mask (pp), 95 % t; TOST p")
    bx.grid(True, alpha=0.3)
    bx.legend(fontsize=7, loc="lower left")
    return save_titled(fig, out, title, df)


def selection_figure(df: pd.DataFrame, out: Path, title: str) -> Path | None:
    """Per space × level: every candidate's selection score (validation loss after the short training) as a tick at
    the bottom, and the retrained arms' test accuracy (mean over their seeds, one point per run) at their score."""
    if "score_trained" not in df:
        return None
    spaces, levels = _spaces(df), sorted(df[df.variant.isin(ARMS)].units_removed.unique())
    fig, axes = plt.subplots(len(spaces), len(levels), figsize=(3.6 * len(levels), 3.3 * len(spaces)), squeeze=False)
    for row, space in zip(axes, spaces):
        for ax, lv in zip(row, levels):
            here = df[(df.space == space) & (df.units_removed == lv)]
            cands = here[(here.variant == "candidate") & ~here.get("random_draw", False).astype(bool)]
            ret = here[here.variant.isin(ARMS)].groupby(["run_dir", "variant"]).agg(
                x=("score_trained", "first"), y=("test_acc", "mean")).reset_index()
            for a in ARMS:
                sub = ret[ret.variant == a]
                ax.plot(sub.x, sub.y * 100, "o", color=COLORS[a], ms=5, label=LABELS[a])
            ylo = ax.get_ylim()[0]
            ax.plot(cands.score_trained, [ylo] * len(cands), "|", color="black", ms=8, alpha=0.5,
                    label="candidates' scores")
            ax.set_title(f"{space}: {100 * lv:g} % units removed", fontsize=8)
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("selection score: val loss after short training", fontsize=8)
    for row in axes:
        row[0].set_ylabel("retrained test acc (%)", fontsize=8)
    axes[0][0].legend(fontsize=6, loc="best")
    return save_titled(fig, out, title, df)


def convergence_figure(df: pd.DataFrame, out: Path, title: str) -> Path | None:
    """Epochs until the validation accuracy first reaches the target, RS best vs random mask (mean, 95 % t-interval;
    arms that never reach it are counted in the legend, not averaged)."""
    arms = df[df.variant.isin(("rs_best", "random_mask"))]
    if "epochs_to_target" not in arms or arms.epochs_to_target.isna().all():
        return None
    spaces, levels = _spaces(df), sorted(arms.units_removed.unique())
    fig, axes = plt.subplots(1, len(spaces), figsize=(5.5 * len(spaces), 4.2), squeeze=False)
    for ax, space in zip(axes[0], spaces):
        for i, a in enumerate(("rs_best", "random_mask")):
            sub = arms[(arms.variant == a) & (arms.space == space)]
            missed = int(sub.epochs_to_target.isna().sum())
            g = sub.dropna(subset=["epochs_to_target"]).groupby("units_removed").epochs_to_target.apply(list)
            stats = [(sum(v) / len(v), *(t_interval(v) if len(v) > 1 else (v[0], v[0]))) for v in g]
            xs = [levels.index(lv) + (i - 0.5) * 0.15 for lv in g.index]
            ax.errorbar(xs, [s[0] for s in stats], yerr=[[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]],
                        fmt="o", capsize=3, color=COLORS[a],
                        label=f"{LABELS[a]}" + (f" ({missed} never reached it)" if missed else ""))
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels([f"{100 * lv:g}" for lv in levels])
        ax.set_xlabel(f"hidden units removed (%), {space} space")
        ax.set_ylabel("epochs to the target val accuracy")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return save_titled(fig, out, title, df)


def _title(df: pd.DataFrame, title: str) -> str:
    """The caller's title with its seed list (search and retrain seeds mixed) replaced by the two kinds."""
    search = sorted(int(s) for s in df[df.variant == "candidate"].seed.unique())
    retrained = df[df.variant.isin(ARMS)]
    per_arm = int(retrained.groupby(["run_dir", "space", "units_removed", "variant"]).seed.nunique().max()) \
        if len(retrained) else 0
    head = title.split("; seeds")[0].split(", seeds")[0]
    return f"{head}; search seeds {search}, {per_arm} fresh retrain seeds each"


def figures(df: pd.DataFrame, stem: str, title: str) -> list[Path]:
    """The Random Search figures of a set of runs, named ``<stem>rs_*.png``."""
    title = _title(df, title)
    made = [accuracy_figure(df, Path(f"{stem}rs_accuracy.png"), title),
            selection_figure(df, Path(f"{stem}rs_selection.png"), title),
            convergence_figure(df, Path(f"{stem}rs_convergence.png"), title)]
    return [m for m in made if m is not None]
