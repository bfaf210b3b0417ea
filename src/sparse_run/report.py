"""Reporting: results files → pandas tables → figures.

Reads only the documented schema (``summary.csv``), so it works on a run, a sweep or a whole
results root, and on runs made by older versions.
"""
from __future__ import annotations

import hashlib
import json
import re
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


VARIANT_LS = {"ticket": "-", "sparse": "-", "reinit": "--", "small_dense": ":"}
DENSE_LS = ("--", ":", "-.", (0, (5, 1, 1, 1)))


def _pct_axis(ax: plt.Axes, pcts: list[float]) -> None:
    """Log axis of % weights remaining, decreasing left to right (like the papers), ticked at the data."""
    ax.set_xscale("log")
    pcts = [p for p in pcts if p > 0]  # 0 % has no place on a log axis (listed under the figure instead)
    if not pcts:
        return
    ticks = sorted({round(p, 1) if p >= 0.1 else float(f"{p:.2g}") for p in pcts}, reverse=True)
    if len(ticks) > 9:  # keep labels readable: thin out, always keeping both ends
        step = -(-len(ticks) // 9)
        ticks = sorted(set(ticks[::step]) | {ticks[0], ticks[-1]}, reverse=True)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.set_xlim(max(pcts) * 1.15, min(pcts) / 1.15)
    ax.set_xlabel("weights remaining (%)")
    ax.grid(True, which="both", alpha=0.3)


def _grouped(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``group`` / ``dense_group`` labels ("" for a single run's summary, which has none)."""
    return df.assign(**{c: df[c].fillna("").astype(str) if c in df else "" for c in ("group", "dense_group")})


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


def _note_not_drawn(fig: plt.Figure, out: Path, not_drawn: dict[str, None]) -> list[str]:
    """Say under the figure (and on stdout) which points the log axis could not show."""
    notes = list(not_drawn)
    if notes:
        text = "not drawn (a zero has no place on a log axis): " + "; ".join(notes)
        fig.text(0.01, 0.005, text, fontsize=7, ha="left", va="bottom", wrap=True)
        print(f"report: {Path(out).name}: {text}")
    return notes


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
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04 if not_drawn else 0, 1, 1))
    notes = _note_not_drawn(fig, out, not_drawn)
    lines = fig.axes[0].get_legend_handles_labels()[1]
    return save_figure(fig, out, {"title": title, **_provenance(df), "lines": lines, "not_drawn": notes})


def _provenance(df: pd.DataFrame) -> dict[str, Any]:
    info: dict[str, Any] = {"seeds": sorted(int(s) for s in df.seed.dropna().unique())}
    for col in ("experiment", "budget", "method", "model", "dataset", "hardware"):
        if col in df:
            info[col + "s"] = sorted(str(v) for v in df[col].dropna().unique())
    if "group" in df and (df.group.fillna("") != "").any():
        info["groups"] = sorted(str(v) for v in df.group.fillna("").unique())
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
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04 if not_drawn else 0, 1, 1))
    notes = _note_not_drawn(fig, out, not_drawn)
    lines = fig.axes[0].get_legend_handles_labels()[1]
    return save_figure(fig, out, {"title": title, **_provenance(df), "lines": lines, "not_drawn": notes})


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
    """A compact table of a summary for the terminal, one line per row, with every column that tells
    rows apart (method, arm, pattern, seed, width …) when it varies. Small-dense rows are dense models:
    their density column shows the sparse level they are matched to, and an ``nnz`` column shows the
    non-zero parameters each row really has."""
    if df.empty:
        return "(no rows)"
    distinguishing = {"method": "method", "model_arm": "arm", "policy_arm": "scope", "graph_family": "graph",
                      "graph_seed": "graph seed", "seed": "seed"}
    cols = {c: name for c, name in distinguishing.items()
            if c in df and df[c].nunique(dropna=False) > 1 and not (c == "method" and "model_arm" in df
                                                                    and df.model_arm.nunique() > 1)}
    cols |= {"round": "round", "variant": "variant", "pattern": "pattern", "density": "density %"}
    small = df.variant.eq("small_dense") if "variant" in df else pd.Series(False, index=df.index)
    if small.any() and "nnz_params" in df:
        cols |= {"nnz_params": "nnz", "width": "width"}
    cols |= {"test_acc_at_early_stop": "acc@ES %", "early_stop_step": "ES step", "test_acc": "final acc %",
             "wall_s": "s"}
    if "test_acc_before_finetune" in df and df.test_acc_before_finetune.notna().any():
        cols["test_acc_before_finetune"] = "before ft %"
    if "status" in df and df.status.ne("ok").any():  # e.g. at_chance: say which rows learned nothing
        cols["status"] = "status"
    t = df[[c for c in cols if c in df]].copy()
    if small.any() and "target_density" in df:  # the matched level, not the narrow model's own 100 %
        t["density"] = t.density.where(~small, df.target_density)
    for c in ("density", "test_acc_at_early_stop", "test_acc", "test_acc_before_finetune"):
        if c in t:
            t[c] = (t[c] * 100).round(2)
    if "nnz_params" in t:
        t["nnz_params"] = t.nnz_params.astype("Int64")
    if "width" in t:
        t["width"] = t.width.round(4)
    t = t.astype(object).where(t.notna(), "").rename(columns=cols)
    out = t.to_string(index=False)
    if small.any():
        out += "\n(small_dense rows: density % is the matched sparse level; the model itself is dense, nnz as shown)"
    return out


# ---------------------------------------------------------------------------------------------
# Configuration groups: which runs may be pooled, and how to name what differs
# ---------------------------------------------------------------------------------------------

# config.yaml keys (dotted prefixes) that never change a result: where files go, how a run is logged,
# shown or scheduled, which kernel or device computes it, how the hardware timing is sampled.
NON_DETERMINING = ("seed", "paths", "logger", "progress", "threads", "hydra", "cache", "device", "hardware",
                   "dataset.root", "dataset.download", "train.checkpoint_every", "train.compile",
                   "train.linear_kernel", "train.replicates")
# the keys that determine the dense (round 0) training: those of the cached dense stage (stages.stage_key)
DENSE_DETERMINING = ("name", "model", "dataset", "train", "budget.train_subset", "budget.eval_subset",
                     "method.schedule.models")
# summary columns that tell apart rows of one run that are not repeats (beyond method, variant, round)
ROW_IDENTITY = ("pattern", "model_arm", "policy_arm", "graph_family", "graph_seed")


def _flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Nested config → {dotted key: JSON of the value}; lists stay whole (a list is one setting)."""
    if isinstance(d, dict) and d:
        out: dict[str, str] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(d, sort_keys=True, default=str)} if prefix else {}


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def determining(cfg: dict[str, Any]) -> dict[str, str]:
    """The settings of an effective config that decide its results, minus the seed."""
    return {k: v for k, v in _flatten(cfg).items() if not _under(k, NON_DETERMINING)}


def _key(flat: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]


def _show(v: str) -> str:
    value = json.loads(v)
    return value if isinstance(value, str) else json.dumps(value)


def group_labels(flats: dict[str, dict[str, str]], max_keys: int = 3) -> dict[str, str]:
    """Name each group by the keys whose values differ between the groups (``method.schedule.rate=0.2``);
    one group (or none differing) → ``""``."""
    keys = sorted({k for f in flats.values() for k in f})
    differ = [k for k in keys if len({f.get(k, "<absent>") for f in flats.values()}) > 1]
    out = {}
    for gk, f in flats.items():
        parts = [f"{k}={_show(f[k]) if k in f else '(absent)'}" for k in differ]
        out[gk] = ", ".join(parts[:max_keys]) + (f", +{len(parts) - max_keys} more" if len(parts) > max_keys else "")
    return out


# ---------------------------------------------------------------------------------------------
# Aggregation over runs, sweeps and results roots
# ---------------------------------------------------------------------------------------------

def _job_config(d: Path) -> dict[str, Any]:
    import yaml

    for cand in (d / "config.yaml", d / ".hydra" / "config.yaml"):
        if cand.exists():
            try:
                loaded = yaml.safe_load(cand.read_text())
            except (yaml.YAMLError, UnicodeDecodeError, OSError):
                print(f"sparse-run-report: warning: {cand} is unreadable; that run is grouped by its overrides only",
                      file=sys.stderr)
                return {}
            return loaded if isinstance(loaded, dict) else {}
    return {}


def _job_meta(d: Path) -> dict[str, Any]:
    """``run.json``, or a failed-status stand-in naming the problem (a report never stops on one bad run)."""
    f = d / "run.json"
    if not f.exists():
        return {"status": "failed", "error": "no run.json"}
    try:
        meta = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError, OSError) as e:
        return {"status": "failed", "error": f"unreadable {f.name} ({type(e).__name__})"}
    return meta if isinstance(meta, dict) else {"status": "failed", "error": f"unreadable {f.name} (not an object)"}


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
    ``status`` says so (with its error), so a sweep with failures still aggregates.

    Each row also gets ``group`` (what distinguishes its run's configuration from the other runs of the
    same experiment × budget, from ``config.yaml``; seeds, paths, loggers, threads … don't count),
    ``dense_group`` (the same for the settings of the dense training) and ``counted`` (False for a row
    that repeats a training another run already holds: a cached dense stage reused by several jobs)."""
    root = Path(root)
    frames, seen = [], set()
    flats: dict[str, dict[str, str]] = {}
    job_dirs = sorted({p.parent for p in root.rglob("run.json")} | {p.parent.parent for p in root.rglob(".hydra/config.yaml")})
    for d in job_dirs:
        meta = _job_meta(d)
        summary = d / "summary.csv"
        sweep = _sweep_label(d)
        chash = meta.get("config_hash") if meta.get("status") == "complete" else None
        if chash and chash in seen:  # the same config run twice (e.g. with and without seed=0)
            continue
        seen.add(chash)
        cfg = _job_config(d)
        if summary.exists() and meta.get("status") == "complete":
            flat = determining(cfg) if cfg else {"(overrides)": json.dumps(sweep)}  # no config: an older run
            dense = {k: v for k, v in flat.items() if _under(k, DENSE_DETERMINING)} if cfg else flat
            gk, dk = _key(flat), "d" + _key(dense)
            flats[gk], flats[dk] = flat, dense
            try:
                frames.append(pd.read_csv(summary).assign(run_dir=str(d), sweep=sweep, group_key=gk, dense_key=dk))
                continue
            except (ValueError, UnicodeDecodeError, OSError) as e:  # pandas' parser errors are ValueErrors
                meta = {"status": "failed", "error": f"unreadable summary.csv ({type(e).__name__})"}
        frames.append(pd.DataFrame([{
            "experiment": cfg.get("name"), "method": (cfg.get("method") or {}).get("name"),
            "model": (cfg.get("model") or {}).get("name"), "dataset": (cfg.get("dataset") or {}).get("name"),
            "seed": cfg.get("seed"), "budget": (cfg.get("budget") or {}).get("name"),
            "hardware": (cfg.get("hardware") or {}).get("name"), "status": meta.get("status", "failed"),
            "error": meta.get("error", ""), "run_dir": str(d), "sweep": sweep}]))
    if not frames:
        return pd.DataFrame(columns=SUMMARY_COLUMNS + ["run_dir"])
    df = pd.concat(frames, ignore_index=True)
    if "group_key" not in df:
        return df
    df["group"], df["dense_group"] = "", ""
    for _, sub in df[df.group_key.notna()].groupby(["experiment", "budget"], dropna=False):
        for col, key in (("group", "group_key"), ("dense_group", "dense_key")):
            names = group_labels({k: flats[k] for k in sub[key].unique()})
            df.loc[sub.index, col] = sub[key].map(names)
    df["counted"] = ~_repeats(df)
    return df


def _identity(df: pd.DataFrame) -> pd.DataFrame:
    """What makes a row one training: its configuration (the dense one for dense rows), seed and arm."""
    dense = df.variant == "dense"
    ident = pd.DataFrame({"key": df.dense_key.where(dense, df.group_key), "seed": df.seed,
                          "method": df.method.where(~dense, ""), "variant": df.variant, "round": df["round"]})
    for c in ROW_IDENTITY:
        if c in df:
            ident[c] = df[c].astype(str)
    return ident


# a finished row's status: "ok", or "at_chance" (a real result — e.g. a network pruned to nothing —
# that the training loop flags; kept in means and figures, and listed under the table)
FINISHED = ("ok", "at_chance")


def _repeats(df: pd.DataFrame) -> pd.Series:
    """True for a finished row whose training another run directory already holds (counted there)."""
    ok = df.status.isin(FINISHED) & df.group_key.notna()
    ident = _identity(df[ok])
    cols = list(ident.columns)
    first = ident.assign(run_dir=df.run_dir[ok]).drop_duplicates(cols).set_index(cols).run_dir
    owner = ident.join(first, on=cols).run_dir
    return pd.Series(False, index=df.index).mask(ok, owner != df.run_dir[ok])


def counted(df: pd.DataFrame) -> pd.DataFrame:
    """Finished rows, each training once (drops the repeats ``collect`` marked; other frames pass)."""
    ok = df[df.status.isin(FINISHED)] if "status" in df else df
    return ok[ok.counted.fillna(True).astype(bool)] if "counted" in ok else ok


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per experiment × budget × configuration group × method × variant × round
    (× pattern / arm where rows have them); each training counted once."""
    ok = counted(df).copy()
    if ok.empty:
        return pd.DataFrame()
    ok["round"] = ok["round"].astype("Int64")
    if "target_density" in ok:  # a small-dense model is dense: show the sparse level it is matched to
        ok["density"] = ok.density.where(ok.variant != "small_dense", ok.target_density)
    if "group" in ok:  # a dense row belongs to its dense configuration (shared by, e.g., every rate of a sweep)
        ok["group"] = _grouped(ok).dense_group.where(ok.variant == "dense", _grouped(ok).group)
    keys = [k for k in ("experiment", "budget", "group", "method", "variant", "round", *ROW_IDENTITY)
            if k in ok and (k not in ROW_IDENTITY or ok[k].notna().any())]
    g = ok.groupby(keys, dropna=False)
    out = g.agg(seeds=("seed", "nunique"), density=("density", "mean"),
                acc_es=("test_acc_at_early_stop", "mean"), acc_es_std=("test_acc_at_early_stop", lambda s: s.std(ddof=0)),
                es_step=("early_stop_step", "mean"), final_acc=("test_acc", "mean"),
                final_acc_std=("test_acc", lambda s: s.std(ddof=0))).reset_index()
    if "group" in out and (out.group == "").all():
        out = out.drop(columns="group")
    return out.sort_values([k for k in ("experiment", "group", "method", "round", "variant") if k in out])


def _pm(mean: float, sd: float, n: int) -> str:
    """``mean ± sd`` in %, or just the mean for a single seed (no spread to show)."""
    return f"{mean * 100:.2f}" if n < 2 else f"{mean * 100:.2f} ± {sd * 100:.2f}"


def format_table(agg: pd.DataFrame) -> str:
    if agg.empty:
        return "(no finished runs)"
    t = agg.copy()
    t["density %"] = (t.pop("density") * 100).round(2)
    t["acc@ES %"] = [_pm(m, s, n) for m, s, n in zip(t.pop("acc_es"), t.pop("acc_es_std"), t.seeds)]
    t["final %"] = [_pm(m, s, n) for m, s, n in zip(t.pop("final_acc"), t.pop("final_acc_std"), t.seeds)]
    t["ES step"] = t.pop("es_step").round(0).astype(int)
    for c in ROW_IDENTITY:  # e.g. no scope on a dense row: blank, not NaN
        if c in t:
            t[c] = t[c].astype(object).where(t[c].notna(), "")
    return t.to_string(index=False)


def report(root: Path, figures: bool = True, quiet: bool = False) -> pd.DataFrame:
    """Gather ``root`` into ``root/report/`` (all_runs.csv, table.txt, figures/) and print the table."""
    root = Path(root)
    df = collect(root)
    out = root / "report"
    atomic_write_text(out / "all_runs.csv", rows_to_csv(df.to_dict("records"), SUMMARY_COLUMNS))
    agg = aggregate(df)
    table = format_table(agg)
    failed = df[~df.status.isin(FINISHED)] if "status" in df else df.iloc[0:0]
    chance = df[df.status.eq("at_chance")] if "status" in df else df.iloc[0:0]
    lines = [table]
    repeats = df[df.status.isin(FINISHED) & ~df.counted.fillna(True).astype(bool)] if "counted" in df else df.iloc[0:0]
    if "small_dense" in set(agg.get("variant", [])):
        lines.append("(small_dense rows: density % is the matched sparse level; the model itself is dense)")
    if len(repeats):
        lines.append(f"\n{len(repeats)} row(s) repeat a training another run already holds (same configuration "
                     "and seed: a cached dense stage reused by several jobs, a replicate run again …) and are "
                     "counted once (all_runs.csv: counted = False).")
    if len(chance):
        lines.append(f"\n{len(chance)} row(s) ended at chance accuracy (status at_chance; included above):")
        lines += [f"  {r['run_dir']} {r.get('method', '')} {r.get('variant', '')} round {r.get('round', '')}"
                  for r in chance.to_dict("records")]
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
        report_figures(counted(df), out / "figures")
        if len(hw):
            speedup_vs_sparsity(hw, out / "figures" / "speedup_vs_sparsity.png",
                                f"{root.name}: measured speedup of the final models (budgets "
                                f"{', '.join(sorted(hw.budget.astype(str).unique()))})")
    return df


def _file_part(label: str, key: str) -> str:
    """A group label as part of a file name (shortened, with the group's hash when shortened)."""
    safe = re.sub(r"[^A-Za-z0-9._=+-]+", "_", label).strip("_")
    return safe if len(safe) <= 60 else f"{safe[:60]}_{key[:6]}"


def report_figures(ok: pd.DataFrame, out: Path) -> list[Path]:
    """Per experiment × budget: accuracy vs density (every method, or ticket vs reinit, with early-stop
    iterations; one line per configuration group), accuracy vs non-zeros when small-dense arms exist,
    N:M and sparse-RNN figures (one per configuration group) when present."""
    made = []
    ok = _grouped(ok)
    for (exp, budget), sub in ok.groupby(["experiment", "budget"]):
        if "density" not in sub or sub.density.isna().all():
            continue
        title = (f"{exp} (budget {budget}): {', '.join(sorted(sub.model.unique()))} on "
                 f"{', '.join(sorted(sub.dataset.unique()))}; seeds {sorted(int(s) for s in sub.seed.unique())}")
        stem = out / f"{exp}_{budget}"
        rnn = bool({"policy_arm", "graph_family"} & set(sub.dropna(axis=1, how="all").columns))
        if rnn or ("pattern" in sub and sub.pattern.notna().any()):  # figures without group lines: one per group
            keys = sub.group_key if "group_key" in sub else pd.Series("", index=sub.index)
            dense = sub[sub.variant == "dense"]
            for (key, group), part in sub[sub.variant != "dense"].groupby([keys.fillna(""), "group"]):
                # the dense rows of this group's dense configuration (counted once, maybe in another run)
                part = pd.concat([dense[dense.dense_key.isin(set(part.dense_key))] if "dense_key" in part
                                  else dense, part])
                pstem = Path(f"{stem}_{_file_part(group, str(key))}") if group else stem
                ptitle = f"{title}\n{group}" if group else title
                if rnn:
                    from .rnn_report import aggregate_figures

                    made += aggregate_figures(part, pstem, ptitle)
                else:
                    from .nm_report import accuracy_figure

                    made.append(accuracy_figure(part, Path(f"{pstem}_nm_accuracy.png"), ptitle))
            continue
        draw = method_comparison if compares_methods(sub) else accuracy_vs_density
        made.append(draw(sub, Path(f"{stem}_accuracy_vs_density.png"), title))
        if "small_dense" in set(sub.variant) and "nnz_params" in sub:
            made.append(accuracy_vs_nnz(sub, Path(f"{stem}_accuracy_vs_nnz.png"), title))
    return [m for m in made if m is not None]


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
