"""The results schema (documented in docs/results.md) and its CSV form.

Everything downstream (report, figures, tests, sweeps) reads these files and nothing else.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable

# One row per (round or level) × variant. Configuration columns first, then measurements.
SUMMARY_COLUMNS = [
    "experiment", "method", "model", "dataset", "seed", "budget", "hardware",
    "round", "variant", "target_density", "density", "nonzeros", "prunable",
    "test_acc", "early_stop_step", "test_acc_at_early_stop", "val_acc", "steps", "wall_s", "status",
]
VARIANTS = ("dense", "ticket", "reinit", "sparse", "small_dense", "oneshot", "ste", "srste", "bdwp")
METRIC_KEYS = ["step", "train_loss", "val_loss", "val_acc", "test_acc"]
LAYER_COLUMNS = ["round", "layer", "numel", "nonzeros", "target_density", "density"]


def rows_to_csv(rows: Iterable[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    extra = sorted({k for r in rows for k in r} - set(columns))
    writer = csv.DictWriter(buf, fieldnames=columns + extra, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _fmt(v) for k, v in r.items()})
    return buf.getvalue()


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def read_summary(path: Path) -> "Any":
    """``summary.csv`` (or every one under a folder) as a pandas DataFrame."""
    import pandas as pd

    path = Path(path)
    files = [path] if path.is_file() else sorted(path.rglob("summary.csv"))
    frames = [pd.read_csv(f).assign(run_dir=str(f.parent)) for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SUMMARY_COLUMNS)
