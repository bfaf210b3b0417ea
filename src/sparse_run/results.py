"""The results schema and its writers (documented in README "Results schema").

Everything downstream (report, figures, tests, sweeps) reads these files and nothing else. Every
file is written atomically (temp file + rename), so a killed run or a full disk never leaves a
half-written result behind.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch

# One row per (round or level) × variant. Configuration columns first, then measurements.
SUMMARY_COLUMNS = [
    "experiment", "method", "model", "dataset", "seed", "budget", "hardware",
    "round", "variant", "target_density", "density", "nonzeros", "prunable",
    "test_acc", "early_stop_step", "test_acc_at_early_stop", "val_acc", "steps", "wall_s", "status",
]
VARIANTS = ("dense", "ticket", "reinit", "sparse", "small_dense", "oneshot", "ste", "srste", "bdwp")
METRIC_KEYS = ["step", "train_loss", "val_loss", "val_acc", "test_acc"]
LAYER_COLUMNS = ["round", "layer", "numel", "nonzeros", "target_density", "density"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


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


class RunWriter:
    """Owns one run directory: config, metrics, summary, per-layer report, artefacts."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.layers: list[dict[str, Any]] = []

    # state for resume: everything already recorded
    def state(self) -> dict[str, Any]:
        return {"rows": self.rows, "metrics": self.metrics, "layers": self.layers}

    def load_state(self, state: dict[str, Any]) -> None:
        self.rows, self.metrics, self.layers = list(state["rows"]), list(state["metrics"]), list(state["layers"])

    def add(self, row: dict[str, Any], history: list[dict[str, float]], context: dict[str, Any]) -> None:
        """Record one finished arm: its summary row and its evaluation history."""
        self.rows.append(row)
        self.metrics.extend({**context, **rec} for rec in history)
        self.flush()

    def add_layers(self, round_: int, report: Iterable[Any], key: dict[str, Any] | None = None,
                   **extra: Any) -> None:
        """One row per layer of one pruning event. ``key`` (e.g. ``{"arm": "ste/2:4/s0"}``) and
        ``extra`` (method, variant, step, totals) are written as columns on each row; a report item's
        ``extra`` dict adds its own. Recording the same event again (a resumed run) replaces it."""
        ident = {**(key or {}), **{k: extra[k] for k in ("method", "variant", "step") if k in extra}}
        self.layers = [row for row in self.layers
                       if not (row["round"] == round_ and all(row.get(k) == v for k, v in ident.items()))]
        for lr in report:
            self.layers.append({"round": round_, "layer": lr.name, "numel": lr.numel, "nonzeros": lr.nonzeros,
                                "target_density": lr.target_density, "density": lr.density, **(key or {}),
                                **extra, **getattr(lr, "extra", {})})

    def flush(self) -> None:
        atomic_write_text(self.dir / "summary.csv", rows_to_csv(self.rows, SUMMARY_COLUMNS))
        atomic_write_text(self.dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in self.metrics))
        if self.layers:
            atomic_write_text(self.dir / "layers.csv", rows_to_csv(self.layers, LAYER_COLUMNS))

    def save(self, rel: str, obj: Any) -> Path:
        path = self.dir / rel
        atomic_torch_save(obj, path)
        return path


def read_summary(path: Path) -> "Any":
    """``summary.csv`` (or every one under a folder) as a pandas DataFrame."""
    import pandas as pd

    path = Path(path)
    files = [path] if path.is_file() else sorted(path.rglob("summary.csv"))
    frames = [pd.read_csv(f).assign(run_dir=str(f.parent)) for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SUMMARY_COLUMNS)
