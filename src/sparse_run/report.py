"""Reporting: results files → pandas tables → figures.

Reads only the documented schema (``summary.csv``), so it works on a run, a sweep or a whole
results root, and on runs made by older versions.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from .results import SUMMARY_COLUMNS, atomic_write_text, read_summary, rows_to_csv  # noqa: E402

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


def _series(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str, str]]:
    """(label, rows, color, marker) per method × variant; dense rows are drawn as the baseline band."""
    methods = sorted(df.method.unique())
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    out = []
    for i, (key, sub) in enumerate(sorted(df[df.variant != "dense"].groupby(["method", "variant"]),
                                          key=lambda kv: (kv[0][0], list(STYLE).index(kv[0][1])
                                                          if kv[0][1] in STYLE else 99))):
        method, variant = key
        color, marker, name = STYLE.get(variant, (None, "o", variant))
        if len(methods) > 1:
            name, color = f"{method}: {name}", colors[i % len(colors)]
        out.append((name, sub, color, marker))
    return out


def _mean_band(ax: plt.Axes, sub: pd.DataFrame, col: str, scale: float, label: str, color: str | None,
               marker: str) -> None:
    """Mean over seeds as a line, ±1 std as a band, at each density level."""
    level = sub.target_density.round(6) if "target_density" in sub else sub["round"]
    g = sub.assign(pct=sub.density * 100, level=level).groupby("level").agg(
        pct=("pct", "mean"), mu=(col, "mean"), sd=(col, lambda s: s.std(ddof=0)), n=(col, "size"))
    g = g.sort_values("pct", ascending=False)
    line, = ax.plot(g.pct, g.mu * scale, color=color, marker=marker, ms=4, label=f"{label} (n={int(g.n.max())})")
    ax.fill_between(g.pct, (g.mu - g.sd.fillna(0)) * scale, (g.mu + g.sd.fillna(0)) * scale,
                    color=line.get_color(), alpha=0.15)


def _dense_band(ax: plt.Axes, dense: pd.DataFrame, col: str, scale: float) -> None:
    if dense.empty:
        return
    mu = dense[col].mean() * scale
    sd = (dense[col].std(ddof=0) if len(dense) > 1 else 0.0) * scale
    ax.axhline(mu, color="black", lw=1.2, ls="--", label=f"dense (n={len(dense)})")
    if sd > 0:
        ax.axhspan(mu - sd, mu + sd, color="black", alpha=0.08)


def accuracy_vs_density(df: pd.DataFrame, out: Path, title: str) -> Path:
    """Two panels: test accuracy at early stop, and the early-stop iteration, vs % weights remaining.

    Lines are means over seeds with a ±1 std band; the dense baseline is a horizontal line and band.
    One line per method × variant (ticket, reinit, sparse, small dense, …).
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    dense = df[df.variant == "dense"]
    for ax, col, label in ((axes[0], "test_acc_at_early_stop", "test accuracy at early stop (%)"),
                           (axes[1], "early_stop_step", "early-stop iteration (min val. loss)")):
        scale = 100.0 if col.startswith("test_acc") else 1.0
        _dense_band(ax, dense, col, scale)
        for name, sub, color, marker in _series(df):
            _mean_band(ax, sub, col, scale, name, color, marker)
        _pct_axis(ax, (df.density * 100).tolist())
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out, {"title": title, **_provenance(df)})


def _provenance(df: pd.DataFrame) -> dict[str, Any]:
    info: dict[str, Any] = {"seeds": sorted(int(s) for s in df.seed.dropna().unique())}
    for col in ("experiment", "budget", "method", "model", "dataset", "hardware"):
        if col in df:
            info[col + "s"] = sorted(str(v) for v in df[col].dropna().unique())
    if "run_dir" in df:
        info["runs"] = sorted(df.run_dir.dropna().unique().tolist())
    return info


def save_png(fig: plt.Figure, out: Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG (creating the folder) and close it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def save_figure(fig: plt.Figure, out: Path, meta: dict[str, Any]) -> Path:
    """PNG + PDF + a sidecar JSON recording budget, seeds, source runs and the code's commit."""
    from .pipeline import _git_commit

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "commit": _git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    fig.savefig(out, dpi=120)
    fig.savefig(out.with_suffix(".pdf"), metadata={"Title": str(meta.get("title", out.stem)),
                                                   "Subject": json.dumps({k: v for k, v in meta.items()
                                                                          if k != "runs"})[:2000]})
    plt.close(fig)
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=2))
    return out


def _series_label(row: pd.Series) -> str:
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
                   series=df.apply(_series_label, axis=1))
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
            g = sub.assign(level=sub.target_density.round(6)).groupby("level").agg(x=("x", "mean"), mu=(col, "mean"), sd=(col, lambda v: v.std(ddof=0)),
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
    return save_figure(fig, out, {"title": title, **_provenance(df)})


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
    if {"policy_arm", "graph_family"} & set(df.columns):  # sparse-RNN experiments have their own figures
        from .rnn_report import run_figures as rnn_figures

        return rnn_figures(Path(run_dir), df, title)
    out = Path(run_dir) / "figures" / "accuracy_vs_density.png"
    if compares_methods(df):
        return [method_comparison(df, out, title.replace(f"method {first.method}",
                                                         f"methods {', '.join(dict.fromkeys(df[df.variant != 'dense'].method))}"))]
    return [accuracy_vs_density(df, out, title)]


def console_table(df: pd.DataFrame) -> str:
    """A compact table of a summary for the terminal (one line per round × variant)."""
    cols = {"round": "round", "variant": "variant", "pattern": "pattern", "density": "density %",
            "test_acc_at_early_stop": "acc@ES %", "early_stop_step": "ES step", "test_acc": "final acc %", "wall_s": "s"}
    if "test_acc_before_finetune" in df and df.method.nunique() > 1:  # one-shot arms (e.g. cell × scope)
        cols = {"method": "method", **cols, "test_acc_before_finetune": "before ft %"}
    t = df[[c for c in cols if c in df]].copy()
    for c in ("density", "test_acc_at_early_stop", "test_acc", "test_acc_before_finetune"):
        if c in t:
            t[c] = (t[c] * 100).round(2)
    return t.rename(columns=cols).to_string(index=False)


# ---------------------------------------------------------------------------------------------
# Aggregation over runs, sweeps and results roots
# ---------------------------------------------------------------------------------------------

def _job_config(d: Path) -> dict[str, Any]:
    import yaml

    for cand in (d / "config.yaml", d / ".hydra" / "config.yaml"):
        if cand.exists():
            return yaml.safe_load(cand.read_text()) or {}
    return {}


def _sweep_label(d: Path) -> str:
    """The job's command-line overrides minus seed and output settings: what distinguishes it in a sweep."""
    import yaml

    f = d / ".hydra" / "overrides.yaml"
    if not f.exists():
        return ""
    skip = ("seed=", "paths.", "experiment=", "logger", "hydra/", "threads=", "device=", "progress=", "budget=")
    return ",".join(o for o in (yaml.safe_load(f.read_text()) or []) if not o.startswith(skip))


def collect(root: Path) -> pd.DataFrame:
    """Every run under ``root`` as summary rows; a failed or unfinished job becomes one row whose
    ``status`` says so (with its error), so a sweep with failures still aggregates."""
    root = Path(root)
    frames, seen = [], set()
    job_dirs = sorted({p.parent for p in root.rglob("run.json")} | {p.parent.parent for p in root.rglob(".hydra/config.yaml")})
    for d in job_dirs:
        meta = json.loads((d / "run.json").read_text()) if (d / "run.json").exists() else {"status": "failed",
                                                                                             "error": "no run.json"}
        summary = d / "summary.csv"
        sweep = _sweep_label(d)
        chash = meta.get("config_hash") if meta.get("status") == "complete" else None
        if chash and chash in seen:  # the same config run twice (e.g. with and without seed=0)
            continue
        seen.add(chash)
        if summary.exists() and meta.get("status") == "complete":
            frames.append(pd.read_csv(summary).assign(run_dir=str(d), sweep=sweep))
            continue
        cfg = _job_config(d)
        frames.append(pd.DataFrame([{
            "experiment": cfg.get("name"), "method": (cfg.get("method") or {}).get("name"),
            "model": (cfg.get("model") or {}).get("name"), "dataset": (cfg.get("dataset") or {}).get("name"),
            "seed": cfg.get("seed"), "budget": (cfg.get("budget") or {}).get("name"),
            "hardware": (cfg.get("hardware") or {}).get("name"), "status": meta.get("status", "failed"),
            "error": meta.get("error", ""), "run_dir": str(d), "sweep": sweep}]))
    if not frames:
        return pd.DataFrame(columns=SUMMARY_COLUMNS + ["run_dir"])
    return pd.concat(frames, ignore_index=True)


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per experiment × method × variant × round (ok rows only)."""
    ok = df[df.status == "ok"].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["round"] = ok["round"].astype("Int64")
    keys = [k for k in ("experiment", "budget", "sweep", "method", "variant", "round") if k in ok]
    g = ok.groupby(keys, dropna=False)
    out = g.agg(seeds=("seed", "nunique"), density=("density", "mean"),
                acc_es=("test_acc_at_early_stop", "mean"), acc_es_std=("test_acc_at_early_stop", lambda s: s.std(ddof=0)),
                es_step=("early_stop_step", "mean"), final_acc=("test_acc", "mean"),
                final_acc_std=("test_acc", lambda s: s.std(ddof=0))).reset_index()
    return out.sort_values([k for k in ("experiment", "sweep", "method", "round", "variant") if k in out])


def format_table(agg: pd.DataFrame) -> str:
    if agg.empty:
        return "(no finished runs)"
    t = agg.copy()
    t["density %"] = (t.pop("density") * 100).round(2)
    t["acc@ES %"] = [f"{m * 100:.2f} ± {s * 100:.2f}" for m, s in zip(t.pop("acc_es"), t.pop("acc_es_std"))]
    t["final %"] = [f"{m * 100:.2f} ± {s * 100:.2f}" for m, s in zip(t.pop("final_acc"), t.pop("final_acc_std"))]
    t["ES step"] = t.pop("es_step").round(0).astype(int)
    return t.to_string(index=False)


def report(root: Path, figures: bool = True, quiet: bool = False) -> pd.DataFrame:
    """Gather ``root`` into ``root/report/`` (all_runs.csv, table.txt, figures/) and print the table."""
    root = Path(root)
    df = collect(root)
    out = root / "report"
    atomic_write_text(out / "all_runs.csv", rows_to_csv(df.to_dict("records"), SUMMARY_COLUMNS))
    agg = aggregate(df)
    table = format_table(agg)
    failed = df[df.status != "ok"] if "status" in df else df.iloc[0:0]
    lines = [table]
    if len(failed):
        lines.append(f"\n{len(failed)} job(s) not complete:")
        lines += [f"  {r['status']}: {r['run_dir']} {r.get('error', '') or ''}" for r in failed.to_dict('records')]
    text = "\n".join(lines)
    atomic_write_text(out / "table.txt", text + "\n")
    if not quiet:
        print(text)
        print(f"report → {out}")
    from .hardware import read_hardware

    hw = read_hardware(root)
    if len(hw):
        hw = hw[~hw.run_dir.str.contains("/report")]
        atomic_write_text(out / "hardware_all.csv", hw.to_csv(index=False))
    if figures:
        report_figures(df[df.status == "ok"], out / "figures")
        if len(hw):
            speedup_vs_sparsity(hw, out / "figures" / "speedup_vs_sparsity.png",
                                f"{root.name}: measured speedup of the final models (budgets "
                                f"{', '.join(sorted(hw.budget.astype(str).unique()))})")
    return df


def report_figures(ok: pd.DataFrame, out: Path) -> list[Path]:
    """Per experiment × budget: accuracy vs density (every method, or ticket vs reinit, with early-stop
    iterations), accuracy vs non-zeros when small-dense arms exist, N:M patterns when present."""
    made = []
    for (exp, budget), sub in ok.groupby(["experiment", "budget"]):
        if "density" not in sub or sub.density.isna().all():
            continue
        title = (f"{exp} (budget {budget}): {', '.join(sorted(sub.model.unique()))} on "
                 f"{', '.join(sorted(sub.dataset.unique()))}; seeds {sorted(int(s) for s in sub.seed.unique())}")
        stem = out / f"{exp}_{budget}"
        if {"policy_arm", "graph_family"} & set(sub.dropna(axis=1, how="all").columns):  # sparse RNNs
            from .rnn_report import aggregate_figures

            made += aggregate_figures(sub, stem, title)
            continue
        if "pattern" in sub and sub.pattern.notna().any():
            from .nm_report import accuracy_figure

            made.append(accuracy_figure(sub, Path(f"{stem}_nm_accuracy.png"), title))
            continue
        draw = method_comparison if compares_methods(sub) else accuracy_vs_density
        made.append(draw(sub, Path(f"{stem}_accuracy_vs_density.png"), title))
        if "small_dense" in set(sub.variant) and "nnz_params" in sub:
            made.append(accuracy_vs_nnz(sub, Path(f"{stem}_accuracy_vs_nnz.png"), title))
    return [m for m in made if m is not None]


def accuracy_vs_nnz(df: pd.DataFrame, out: Path, title: str) -> Path:
    """Zhu & Gupta's comparison: test accuracy vs non-zero parameters (log), large-sparse vs small-dense.

    Each line is one method × variant (mean ± std over seeds per level); the dense model is a point.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    colors = plt.get_cmap("tab10")
    arms = df.assign(series=df.apply(_series_label, axis=1))
    for i, (name, sub) in enumerate(arms[arms.variant != "dense"].groupby("series", sort=False)):
        g = sub.assign(level=sub.target_density.round(6)).groupby("level").agg(
            x=("nnz_params", "mean"), mu=("test_acc", "mean"), sd=("test_acc", lambda v: v.std(ddof=0)),
            n=("test_acc", "size")).sort_values("x")
        ax.errorbar(g.x, g.mu * 100, yerr=g.sd.fillna(0) * 100, color=colors(i % 10), marker="D" if "small" in name
                    else "o", ms=4, capsize=3, label=f"{name} (n={int(g.n.max())})")
    dense = df[df.variant == "dense"]
    if len(dense):
        ax.errorbar([dense.nnz_params.mean()], [dense.test_acc.mean() * 100],
                    yerr=[dense.test_acc.std(ddof=0) * 100 if len(dense) > 1 else 0], color="black", marker="*",
                    ms=10, capsize=3, ls="none", label=f"dense (n={len(dense)})")
    ax.set_xscale("log")
    ax.set_xlabel("non-zero parameters (weights + biases, log)")
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out, {"title": title, **_provenance(df)})


def speedup_vs_sparsity(hw: pd.DataFrame, out: Path, title: str) -> Path | None:
    """Measured whole-model speedup over dense vs % weights remaining, per target × batch size, with
    95 % intervals, the ideal (MAC-ratio) speedup dashed, and the break-even line at 1×."""
    rows = hw[(hw.scope == "model") & hw.speedup.notna()] if "scope" in hw else hw.iloc[0:0]
    if rows.empty:
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
    fig.tight_layout()
    return save_figure(fig, out, {"title": title, **_provenance(rows)})


class ReportCallback(Callback):
    """Hydra callback: aggregate a sweep when it ends (Hydra skips this when a job raised, so the
    CLI also reports every sweep it started — see ``cli.main``)."""

    started: set[str] = set()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        ReportCallback.started.add(str(config.hydra.sweep.dir))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep = str(config.hydra.sweep.dir)
        ReportCallback.started.discard(sweep)
        report(Path(sweep))


def main() -> None:
    """``sparse-run-report DIR [--no-figures]``: aggregate every run under DIR (a run, a sweep, a results root)."""
    import argparse

    ap = argparse.ArgumentParser(prog="sparse-run-report", description=main.__doc__)
    ap.add_argument("dir", type=Path, nargs="?", default=Path("results"))
    ap.add_argument("--no-figures", action="store_true")
    args = ap.parse_args()
    if not args.dir.is_dir():
        sys.exit(f"error: dir: {args.dir} is not a directory; allowed: a run, sweep or results directory")
    df = report(args.dir, figures=not args.no_figures)
    if df.empty:
        sys.exit(f"error: dir: no runs under {args.dir}")
