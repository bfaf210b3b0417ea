"""Cached stages: a stage that several runs share (the dense pre-training of a sweep's jobs) is
computed once and reused.

A stage is keyed by a hash of exactly the settings that determine its output — model, dataset,
training settings, seed, the data subsets of the budget and, for late rewinding, the step whose
state is kept — and never by paths, loggers or launchers. Parallel jobs serialise on a file lock
and the stage is written atomically, so a job either computes it or reuses a complete one. An entry
holds tensors and plain data only (the ``TrainResult`` as a dict) and is read with
``store.files.load_state``; one that cannot be read is moved aside to ``<name>.corrupt`` with a warning
and computed again, so a bad file never blocks the other runs of that results root.
"""
from __future__ import annotations

import copy
import dataclasses
import fcntl
import hashlib
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from sparse_run import __version__
from sparse_run.config import to_dict
from sparse_run.sparsity.masks import MaskSet
from sparse_run.store.files import StateError, atomic_torch_save, load_state

from .train import TrainResult

if TYPE_CHECKING:
    from .run import Run


def stage_key(run: "Run", stage: str, capture_step: int | None) -> str:
    c = to_dict(run.cfg)
    determining = {"stage": stage, "version": __version__, "model": c["model"], "dataset": c["dataset"],
                   # the dense stage has no masked weight, so train.sparse_kernel never applies to it
                   "train": {k: v for k, v in c["train"].items()
                             if k not in ("checkpoint_every", "compile", "sparse_kernel")},
                   "seed": c["seed"], "device": str(run.device),
                   "subsets": [c["budget"]["train_subset"], c["budget"]["eval_subset"]],
                   "capture_step": capture_step}
    return hashlib.sha256(json.dumps(determining, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def file_lock(path: Path, blocking: bool = True) -> Iterator[None]:
    """Exclusive ``flock`` on ``path``; with ``blocking=False`` a held lock raises ``BlockingIOError``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _same_layout(saved: Any, live: dict[str, torch.Tensor], what: str) -> None:
    if not isinstance(saved, dict) or {k: tuple(v.shape) for k, v in saved.items() if torch.is_tensor(v)} != \
            {k: tuple(v.shape) for k, v in live.items()}:
        raise ValueError(f"its {what} do not match this model")


def _restore(path: Path, model: torch.nn.Module, masks: MaskSet,
             capture: tuple[int, Callable[[dict[str, Any]], None]] | None) -> TrainResult:
    """Load a cache entry into ``model`` / ``masks``; checked in full before anything is changed."""
    saved = load_state(path, keys=("model", "masks", "result", "captured"), hint="")
    _same_layout(saved["model"], model.state_dict(), "weights")
    _same_layout(saved["masks"], masks.state_dict(), "masks")
    if capture and not isinstance(saved["captured"], dict):
        raise ValueError("it lacks the late-rewinding state")
    result = TrainResult(**saved["result"])
    model.load_state_dict(saved["model"])
    masks.load_state_dict(saved["masks"])
    if capture:
        capture[1](saved["captured"])
    return result


def quarantine(path: Path, why: str) -> Path:
    """Move an unreadable cache entry aside (kept for inspection) and say so in one line."""
    bad = path.with_name(path.name + ".corrupt")
    os.replace(path, bad)
    print(f"sparse-run: warning: cache entry {path} is unusable ({why}); moved to {bad.name}, recomputing",
          file=sys.stderr)
    return bad


def cached(run: "Run", stage: str, model: torch.nn.Module, masks: MaskSet, fit: Callable[[Any], TrainResult],
           capture: tuple[int, Callable[[dict[str, Any]], None]] | None) -> TrainResult:
    """Run ``fit`` once per stage key; later calls restore the trained weights and the result."""
    key = stage_key(run, stage, capture[0] if capture else None)
    folder = Path(run.cfg.paths.results_dir) / ".cache" / stage
    path = folder / f"{key}.pt"
    with file_lock(folder / f"{key}.lock"):
        if path.exists():
            try:
                result = _restore(path, model, masks, capture)
                print(f"sparse-run: reusing cached {stage} stage {key} (trained in {result.wall_s:.1f} s)")
                return result
            except StateError as e:
                quarantine(path, e.message)
            except (ValueError, TypeError, KeyError, RuntimeError) as e:
                quarantine(path, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        captured: dict[str, Any] = {}
        wrapped = None
        if capture:
            def keep(state: dict[str, Any]) -> None:
                captured["state"] = copy.deepcopy(state)  # state_dict tensors alias the live weights
                capture[1](state)
            wrapped = (capture[0], keep)
        result = fit(wrapped)
        if capture and "state" not in captured:
            return result  # resumed past the capture step: the run has its rewind state, the cache would not
        atomic_torch_save({"model": model.state_dict(), "masks": masks.state_dict(),
                           "result": dataclasses.asdict(result), "captured": captured.get("state"),
                           "saved": time.time()}, path)
        return result
