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
import threading
from pathlib import Path
from typing import Any, Iterable

import torch

from .validate import ConfigError

# One row per (round or level) × variant. Configuration columns first, then measurements.
SUMMARY_COLUMNS = [
    "experiment", "method", "model", "dataset", "seed", "budget", "hardware",
    "round", "variant", "target_density", "density", "nonzeros", "prunable",
    "test_acc", "early_stop_step", "test_acc_at_early_stop", "val_acc", "steps", "wall_s", "status",
]
VARIANTS = ("dense", "ticket", "reinit", "sparse", "small_dense", "oneshot", "ste", "srste", "bdwp")
METRIC_KEYS = ["step", "train_loss", "val_loss", "val_acc", "test_acc"]
LAYER_COLUMNS = ["round", "layer", "numel", "nonzeros", "target_density", "density"]


RESTART_HINT = "rerun with restart=true to start this run directory afresh"
_UMASK_LOCK = threading.Lock()


class StateError(ConfigError):
    """A file sparse-run reads back (resume state, masks, checkpoints, ``run.json``, a cache entry) is
    truncated, garbage, foreign or holds more than tensors and plain data; the message names the file."""

    def __init__(self, path: Path | str, message: str):
        super().__init__(str(path), " ".join(message.split()))  # one line, whatever the cause said


def _why(e: BaseException) -> str:
    text = str(e).strip()
    if "Weights only load failed" in text or "weights_only" in text:
        return "it holds pickled objects other than tensors and plain data; refused, since loading them could run code"
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first[:160]}" if first else type(e).__name__


def load_state(path: Path | str, *, keys: Iterable[str] = (), map_location: Any = None,
               hint: str = RESTART_HINT) -> Any:
    """Every ``.pt`` file sparse-run reads back goes through here: ``torch.load(weights_only=True)``
    unpickles only tensors and plain containers, so a crafted file cannot run code. Unreadable,
    foreign (a dict without ``keys``) or refused files raise one ``StateError`` line naming the file."""
    tail = f"; {hint}" if hint else ""
    try:
        obj = torch.load(path, weights_only=True, map_location=map_location)
    except FileNotFoundError:
        raise StateError(path, f"is missing{tail}") from None
    except Exception as e:  # noqa: BLE001 - truncated zip, EOF, refused global, bad magic: all one line
        raise StateError(path, f"cannot be read ({_why(e)}){tail}") from None
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise StateError(path, f"is not the sparse-run file expected here (missing {', '.join(missing[:5])}){tail}")
    return obj


def plain(obj: Any) -> Any:
    """Numpy scalars in rows become Python numbers, so state files stay loadable with weights_only."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(plain(v) for v in obj)
    if type(obj).__module__ == "numpy" and hasattr(obj, "item"):
        return obj.item()
    return obj


def file_mode() -> int:
    """0o666 minus the process umask: what ``open()`` would give a new file (mkstemp gives 0600)."""
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())  # results are shared files: respect the umask, as open() would
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
        return plain({"rows": self.rows, "metrics": self.metrics, "layers": self.layers})

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
