"""What every figure shares: the % weights-remaining axis, the note under a figure about what was not drawn,
provenance, and saving (PNG, or PNG + PDF + a JSON sidecar with budget, seeds, source runs and the commit)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from sparse_run.store.files import atomic_write_text  # noqa: E402
from sparse_run.store.provenance import git_commit  # noqa: E402


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


def _note_not_drawn(fig: plt.Figure, out: Path, not_drawn: dict[str, None]) -> list[str]:
    """Say under the figure (and on stdout) which points the log axis could not show."""
    notes = list(not_drawn)
    if notes:
        text = "not drawn (a zero has no place on a log axis): " + "; ".join(notes)
        fig.text(0.01, 0.005, text, fontsize=7, ha="left", va="bottom", wrap=True)
        print(f"report: {Path(out).name}: {text}")
    return notes


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


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, lo, hi) for an error bar: the mean with its 95 % Student-t interval (one value: zero width)."""
    from .claims import t_interval

    mean = sum(values) / len(values)
    lo, hi = t_interval(values) if len(values) > 1 else (mean, mean)
    return mean, lo, hi


def save_png(fig: plt.Figure, out: Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG (creating the folder) and close it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def save_figure(fig: plt.Figure, out: Path, meta: dict[str, Any]) -> Path:
    """PNG + PDF + a sidecar JSON recording budget, seeds, source runs and the code's commit."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    fig.savefig(out, dpi=120)
    fig.savefig(out.with_suffix(".pdf"), metadata={"Title": str(meta.get("title", out.stem)),
                                                   "Subject": json.dumps({k: v for k, v in meta.items()
                                                                          if k != "runs"})[:2000]})
    plt.close(fig)
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=2))
    return out


def save_titled(fig: plt.Figure, out: Path, title: str, df: pd.DataFrame) -> Path:
    """Suptitle, tight layout and ``save_figure`` with the rows' provenance and the first panel's legend lines."""
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    lines = fig.axes[0].get_legend_handles_labels()[1]
    return save_figure(fig, out, {"title": title, **_provenance(df), "lines": lines})
