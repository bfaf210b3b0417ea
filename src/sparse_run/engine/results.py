"""The run directory's writer: summary rows, metrics, the per-layer report and artefacts, each written
atomically (``store.files``) in the schema of ``store.schema``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from sparse_run.store.files import atomic_torch_save, atomic_write_text, plain
from sparse_run.store.schema import LAYER_COLUMNS, SUMMARY_COLUMNS, rows_to_csv


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
