"""Cached stages: a stage that several runs share (the dense pre-training of a sweep's jobs) is
computed once and reused.

A stage is keyed by a hash of exactly the settings that determine its output — model, dataset,
training settings, seed, the data subsets of the budget and, for late rewinding, the step whose
state is kept — and never by paths, loggers or launchers. Parallel jobs serialise on a file lock
and the stage is written atomically, so a job either computes it or reuses a complete one.
"""
from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from . import __version__
from .config import to_dict
from .results import atomic_torch_save
from .sparsity.masks import MaskSet
from .train import TrainResult

if TYPE_CHECKING:
    from .pipeline import Run


def stage_key(run: "Run", stage: str, capture_step: int | None) -> str:
    c = to_dict(run.cfg)
    determining = {"stage": stage, "version": __version__, "model": c["model"], "dataset": c["dataset"],
                   "train": {k: v for k, v in c["train"].items() if k not in ("checkpoint_every", "compile")},
                   "seed": c["seed"], "device": str(run.device),
                   "subsets": [c["budget"].get("train_subset"), c["budget"].get("eval_subset")],
                   "capture_step": capture_step}
    return hashlib.sha256(json.dumps(determining, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached(run: "Run", stage: str, model: torch.nn.Module, masks: MaskSet, fit: Callable[[Any], TrainResult],
           capture: tuple[int, Callable[[dict[str, Any]], None]] | None) -> TrainResult:
    """Run ``fit`` once per stage key; later calls restore the trained weights and the result."""
    key = stage_key(run, stage, capture[0] if capture else None)
    folder = Path(run.cfg.paths.results_dir) / ".cache" / stage
    path = folder / f"{key}.pt"
    with file_lock(folder / f"{key}.lock"):
        if path.exists():
            saved = torch.load(path, weights_only=False)
            model.load_state_dict(saved["model"])
            masks.load_state_dict(saved["masks"])
            if capture:
                capture[1](saved["captured"])
            print(f"sparse-run: reusing cached {stage} stage {key} (trained in {saved['result'].wall_s:.1f} s)")
            return saved["result"]
        captured: dict[str, Any] = {}
        wrapped = None
        if capture:
            def keep(state: dict[str, Any]) -> None:
                captured["state"] = copy.deepcopy(state)  # state_dict tensors alias the live weights
                capture[1](state)
            wrapped = (capture[0], keep)
        result = fit(wrapped)
        atomic_torch_save({"model": model.state_dict(), "masks": masks.state_dict(), "result": result,
                           "captured": captured.get("state"), "saved": time.time()}, path)
        return result
