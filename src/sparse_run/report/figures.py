"""Figures of one run or of a configuration group: accuracy vs density (ticket vs controls, or several
methods), accuracy vs non-zeros, and the PNG + PDF + JSON sidecar every figure is saved as.

``run_figures(run_dir, figures)`` draws what the run's method declares (``Method.figures``: ``levels``,
``nm``, ``rnn``, ``dst``, ``sharing``, ``random_search``, ``experts``, ``lazy_neuron``, ``pattern_compare``,
``dass``, ``none``); without a
declaration (an older run) it is read off the summary's columns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from sparse_run.store.schema import read_summary  # noqa: E402

from .collect import _grouped  # noqa: E402
from .dst import figures as dst_figures  # noqa: E402
from .dst import is_dst  # noqa: E402
from .nm import run_figures as nm_figures  # noqa: E402
from .plot import _note_not_drawn, _pct_axis, _provenance, save_figure  # noqa: E402
from .rnn import run_figures as rnn_figures  # noqa: E402
from .experts import figures as expert_figures  # noqa: E402
from .experts import is_expert_prune  # noqa: E402
from .lazy_neuron import figures as lazy_figures  # noqa: E402
from .lazy_neuron import is_lazy_neuron  # noqa: E402
from .dass import figures as dass_figures  # noqa: E402
from .dass import is_dass  # noqa: E402
from .pattern_compare import figures as pattern_figures  # noqa: E402
from .pattern_compare import is_pattern_compare  # noqa: E402
from .random_search import figures as rs_figures  # noqa: E402
from .random_search import is_random_search  # noqa: E402
from .sharing import figures as sharing_figures  # noqa: E402
from .sharing import is_sharing  # noqa: E402

STYLE = {"ticket": ("tab:blue", "o", "winning ticket (rewind)"),
         "reinit": ("tab:orange", "s", "random reinit (same mask)"),
         "sparse": ("tab:green", "^", "sparse"),
         "small_dense": ("tab:purple", "D", "small dense")}


VARIANT_LS = {"ticket": "-", "sparse": "-", "reinit": "--", "small_dense": ":"}
DENSE_LS = ("--", ":", "-.", (0, (5, 1, 1, 1)))


def _with_group(name: str, group: str) -> str:
    return f"{name} [{group}]" if group else name


def _n(ns: pd.Series) -> str:
    lo, hi = int(ns.min()), int(ns.max())
    return f"n={hi}" if lo == hi else f"n={lo}–{hi}"


def _series(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str, str, Any]]:
    """(label, rows, color, marker, linestyle) per configuration group × method × variant; dense rows
    are drawn as the baseline. With one group and method the variants keep their usual colours;
    otherwise each group × method gets a colour and the variant sets marker and line style."""
    arms = df[df.variant != "dense"]
    lines = sorted(arms.groupby(["group", "method", "variant"]),
                   key=lambda kv: (kv[0][0], kv[0][1], list(STYLE).index(kv[0][2]) if kv[0][2] in STYLE else 99))
    owners = list(dict.fromkeys((g, m) for (g, m, _), _sub in lines))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    out = []
    for (group, method, variant), sub in lines:
        color, marker, name = STYLE.get(variant, (None, "o", variant))
        if arms.method.nunique() > 1:
            name = f"{method}: {name}"
        if len(owners) > 1:
            color = colors[owners.index((group, method)) % len(colors)]
        out.append((_with_group(name, group), sub, color, marker, VARIANT_LS.get(variant, "-")))
    return out


def _mean_band(ax: plt.Axes, sub: pd.DataFrame, col: str, scale: float, label: str, color: str | None,
               marker: str, ls: Any = "-", not_drawn: dict[str, None] | None = None) -> None:
    """Mean over seeds as a line at each density level (x: ``sub.x``, % weights remaining), ±1 std as
    a band where a level has two seeds or more. Levels at 0 % cannot sit on the log axis: they are
    left out and named in ``not_drawn``."""
    level = sub.target_density.round(6) if "target_density" in sub and sub.target_density.notna().all() \
        else sub["round"]
    g = sub.assign(level=level).groupby("level").agg(
        pct=("x", "mean"), mu=(col, "mean"), sd=(col, lambda s: s.std(ddof=0)), n=(col, "size"))
    g = g.sort_values("pct", ascending=False)
    zero = g[~(g.pct > 0)]
    if len(zero) and not_drawn is not None:
        not_drawn[f"{label} at {', '.join(f'{p:g}' for p in zero.pct)} % ({_n(zero.n)})"] = None
    g = g[g.pct > 0]
    if g.empty:
        return
    line, = ax.plot(g.pct, g.mu * scale, color=color, marker=marker, ms=4, ls=ls, label=f"{label} ({_n(g.n)})")
    spread = (g.n > 1).to_numpy()
    if spread.any():
        ax.fill_between(g.pct, (g.mu - g.sd) * scale, (g.mu + g.sd) * scale, where=spread,
                        color=line.get_color(), alpha=0.15)


def _dense_band(ax: plt.Axes, dense: pd.DataFrame, col: str, scale: float) -> None:
    """One dashed line per dense configuration (labelled by what differs), a ±1 std band only over ≥2 seeds."""
    for i, (name, sub) in enumerate(_grouped(dense).groupby("dense_group")):
        mu = sub[col].mean() * scale
        ax.axhline(mu, color="black", lw=1.2, ls=DENSE_LS[i % len(DENSE_LS)],
                   label=f"{_with_group('dense', name)} (n={len(sub)})")
        if len(sub) > 1:
            sd = sub[col].std(ddof=0) * scale
            ax.axhspan(mu - sd, mu + sd, color="black", alpha=0.08)


def accuracy_vs_density(df: pd.DataFrame, out: Path, title: str) -> Path:
    """Two panels: test accuracy at early stop, and the early-stop iteration, vs % weights remaining.

    Lines are means over seeds with a ±1 std band; the dense baseline is a horizontal line and band.
    One line per configuration group × method × variant (ticket, reinit, sparse, small dense, …).
    """
    df = _grouped(df).assign(x=df.density * 100)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    dense, not_drawn = df[df.variant == "dense"], {}
    for ax, col, label in ((axes[0], "test_acc_at_early_stop", "test accuracy at early stop (%)"),
                           (axes[1], "early_stop_step", "early-stop iteration (min val. loss)")):
        scale = 100.0 if col.startswith("test_acc") else 1.0
        _dense_band(ax, dense, col, scale)
        for name, sub, color, marker, ls in _series(df):
            _mean_band(ax, sub, col, scale, name, color, marker, ls, not_drawn)
        _pct_axis(ax, df.x.tolist())
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7, loc="lower left")
    return _finish(fig, out, title, df, not_drawn)


def _series_label(row: pd.Series) -> str:
    """Line label of a row in a method comparison: the method, plus the variant for controls."""
    if row.variant == "small_dense":
        return "small dense (matched NNZ)"
    return row.method if row.variant in ("sparse", "ticket") else f"{row.method} {row.variant}"


def compares_methods(df: pd.DataFrame) -> bool:
    """True for runs holding several methods or non-IMP arms (one-shot, at-init, gradual, small-dense)."""
    return df[df.variant != "dense"].method.nunique() > 1 or bool(set(df.variant) & {"sparse", "small_dense"})


def method_comparison(df: pd.DataFrame, out: Path, title: str) -> Path:
    """Final test accuracy and test accuracy at early stop vs % weights remaining, one line per
    configuration group × method.

    x is the achieved density of the prunable weights (for small-dense rows, the matched level's
    density); means over seeds with a ±1 std band (two seeds or more); dense baseline as a horizontal
    line and band.
    """
    df = _grouped(df)
    df = df.assign(x=df.density.where(df.variant != "small_dense", df.target_density) * 100,
                   series=[_with_group(_series_label(r), r.group) for r in df.itertuples()])
    arms, dense = df[df.variant != "dense"], df[df.variant == "dense"]
    names = list(dict.fromkeys(arms.series))
    colors = plt.get_cmap("tab10")
    not_drawn: dict[str, None] = {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, col, label in ((axes[0], "test_acc", "final test accuracy (%)"),
                           (axes[1], "test_acc_at_early_stop", "test accuracy at early stop (%)")):
        _dense_band(ax, dense, col, 100.0)
        for i, name in enumerate(names):
            marker = "D" if name.startswith("small dense") else "o"
            _mean_band(ax, arms[arms.series == name], col, 100.0, name, colors(i % 10), marker, "-", not_drawn)
        _pct_axis(ax, df.x.tolist())
        ax.set_ylabel(label)
        ax.tick_params(labelleft=True)
    axes[0].legend(fontsize=8, loc="lower left")
    return _finish(fig, out, title, df, not_drawn)


def run_figures(run_dir: Path, figures: str | None = None) -> list[Path]:
    """The figures of one run, written to ``<run_dir>/figures/``; ``figures``: the family its method draws
    (``Method.figures``), None to read it off the summary's columns."""
    df = read_summary(Path(run_dir) / "summary.csv")
    if df.empty or figures == "none":
        return []
    if figures is None:
        figures = ("pattern_compare" if is_pattern_compare(df) else "dass" if is_dass(df)
                   else "nm" if "pattern" in df and df.pattern.notna().any() else "dst" if is_dst(df)
                   else "sharing" if is_sharing(df) else "random_search" if is_random_search(df)
                   else "experts" if is_expert_prune(df) else "lazy_neuron" if is_lazy_neuron(df)
                   else "rnn" if {"policy_arm", "graph_family"} & set(df.columns) else "levels")
    first = df.iloc[0]
    title = (f"{first.experiment}: {first.model} on {first.dataset}, method {first.method}, "
             f"budget {first.budget}, seeds {sorted(df.seed.unique().tolist())}")
    if figures == "nm":  # N:M runs have their own figures
        return nm_figures(Path(run_dir), df, title)
    if figures == "rnn":  # sparse-RNN experiments have their own figures
        return rnn_figures(Path(run_dir), df, title)
    if figures == "dst":  # dynamic sparse training: arms, paired differences, FLOPs, ITOP
        return dst_figures(df, f"{Path(run_dir) / 'figures'}/", title)
    if figures == "sharing":  # parameter sharing vs pruning: accuracy vs compression, init std
        return sharing_figures(df.assign(run_dir=str(run_dir)), f"{Path(run_dir) / 'figures'}/", title)
    if figures == "experts":  # retraining-free MoE expert pruning
        return expert_figures(df.assign(run_dir=str(run_dir)), f"{Path(run_dir) / 'figures'}/", title)
    if figures == "lazy_neuron":  # activation sparsity over training, vs width and condition; Top-k vs ReLU
        return lazy_figures(df.assign(run_dir=str(run_dir)), f"{Path(run_dir) / 'figures'}/", title)
    if figures == "pattern_compare":  # selection patterns on one trained network: accuracy, Σ|W| kept, speedup
        return pattern_figures(df, f"{Path(run_dir) / 'figures'}/", title)
    if figures == "dass":  # searched (DASS, DARTS) vs hand-designed nets, pruned by learned scores
        return dass_figures(df, f"{Path(run_dir) / 'figures'}/", title)
    if figures == "random_search":  # RS winner vs random mask vs dense, selection vs retrained, convergence
        return rs_figures(df.assign(run_dir=str(run_dir)), f"{Path(run_dir) / 'figures'}/", title)
    out = Path(run_dir) / "figures" / "accuracy_vs_density.png"
    if compares_methods(df):
        return [method_comparison(df, out, title.replace(f"method {first.method}",
                                                         f"methods {', '.join(dict.fromkeys(df[df.variant != 'dense'].method))}"))]
    return [accuracy_vs_density(df, out, title)]


def accuracy_vs_nnz(df: pd.DataFrame, out: Path, title: str) -> Path:
    """Zhu & Gupta's comparison: test accuracy vs non-zero parameters (log), large-sparse vs small-dense.

    Each line is one configuration group × method × variant (mean ± std over seeds per level; no bar
    for one seed); the dense model of each dense configuration is a point.
    """
    df = _grouped(df)
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    colors = plt.get_cmap("tab10")
    arms = df.assign(series=[_with_group(_series_label(r), r.group) for r in df.itertuples()])
    not_drawn: dict[str, None] = {}
    for i, (name, sub) in enumerate(arms[arms.variant != "dense"].groupby("series", sort=False)):
        g = sub.assign(level=sub.target_density.round(6)).groupby("level").agg(
            x=("nnz_params", "mean"), mu=("test_acc", "mean"), sd=("test_acc", lambda v: v.std(ddof=0)),
            n=("test_acc", "size")).sort_values("x")
        if (~(g.x > 0)).any():
            not_drawn[f"{name} at {int((~(g.x > 0)).sum())} level(s) with 0 non-zeros"] = None
            g = g[g.x > 0]
        if g.empty:
            continue
        ax.errorbar(g.x, g.mu * 100, yerr=(g.sd * 100).where(g.n > 1) if (g.n > 1).any() else None,
                    color=colors(i % 10), marker="D" if "small" in name else "o", ms=4, capsize=3,
                    label=f"{name} ({_n(g.n)})")
    for j, (name, dense) in enumerate(df[df.variant == "dense"].groupby("dense_group")):
        ax.errorbar([dense.nnz_params.mean()], [dense.test_acc.mean() * 100],
                    yerr=[dense.test_acc.std(ddof=0) * 100] if len(dense) > 1 else None, color="black",
                    marker="**PX"[j % 4], ms=10, capsize=3, ls="none",
                    label=f"{_with_group('dense', name)} (n={len(dense)})")
    ax.set_xscale("log")
    ax.set_xlabel("non-zero parameters (weights + biases, log)")
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=8)
    fig.tight_layout(rect=(0, 0.04 if not_drawn else 0, 1, 1))
    notes = _note_not_drawn(fig, out, not_drawn)
    lines = fig.axes[0].get_legend_handles_labels()[1]
    return save_figure(fig, out, {"title": title, **_provenance(df), "lines": lines, "not_drawn": notes})


def _finish(fig: Any, out: Path, title: str, df: pd.DataFrame, not_drawn: list[str]) -> Path:
    """Title, layout (room for the note on undrawable points), the note, and the sidecar naming the lines."""
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04 if not_drawn else 0, 1, 1))
    notes = _note_not_drawn(fig, out, not_drawn)
    lines = fig.axes[0].get_legend_handles_labels()[1]
    return save_figure(fig, out, {"title": title, **_provenance(df), "lines": lines, "not_drawn": notes})
