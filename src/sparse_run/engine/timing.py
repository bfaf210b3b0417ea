"""Timing kernels against each other on this machine, and remembering the verdicts (``Memory``).

A kernel choice is measured where it runs, never assumed: the same PyTorch build takes oneDNN's AVX-512 path on
one CPU and loses to ATen on an AVX2-only one. Verdicts are remembered per machine so a command computes the same
way on every run and pays the measurement once.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from sparse_run.store.files import atomic_write_text

from . import sparse_linear as sl

ROUNDS, MIN_ROUND_S = 5, 2e-3


def median_s(fns: dict[str, Callable[[], Any]], rounds: int = ROUNDS,
             min_round_s: float = MIN_ROUND_S) -> dict[str, float]:
    """Seconds per call of each function: interleaved rounds (order rotating), each repeating a call for at
    least ``min_round_s``, after one warm-up call; medians over the rounds."""
    reps: dict[str, int] = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        reps[name] = max(1, int(min_round_s / max(time.perf_counter() - t0, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                fns[name]()
            times[name].append((time.perf_counter() - t0) / reps[name])
    return {name: statistics.median(ts) for name, ts in times.items()}


def fingerprint() -> str:
    """What a remembered choice is valid for: this CPU, this torch, this kernel build."""
    cpu = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), cpu)
        flags = next((ln.split(":", 1)[1] for ln in info if ln.startswith("flags")), "")
        cpu += " " + hashlib.sha1(flags.encode()).hexdigest()[:8]
    except OSError:
        pass
    return f"{cpu} | torch {torch.__version__} | cpp {sl.cpp_status()} {sl.SOURCE_HASH}"


class Memory:
    """Kernel choices measured on this machine, by layer shape, density, batch, threads and phase: the same
    command computes the same way on every run, and measures once. A JSON file (``SPARSE_RUN_KERNELS``, default
    ``~/.cache/sparse-run/kernels.json``) whose entries hold only for the fingerprint they were measured under."""

    def __init__(self, path: Path | None):
        self.path, self._loaded, self._fp = path, False, ""
        self._entries: dict[str, dict[str, Any]] = {}

    @staticmethod
    def key(shape: tuple[int, int], density: float, batch: int, phase: str) -> str:
        return f"{shape[0]}x{shape[1]} d{density:.4g} b{batch} t{torch.get_num_threads()} {phase}"

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded, self._fp = True, fingerprint()
        if self.path is not None and self.path.is_file():
            try:
                doc = json.loads(self.path.read_text())
                if isinstance(doc, dict) and doc.get("fingerprint") == self._fp and isinstance(doc.get("choices"), dict):
                    self._entries.update(doc["choices"])
            except (OSError, ValueError):  # unreadable or damaged: measure again and rewrite it
                pass

    def get(self, key: str) -> dict[str, Any] | None:
        self._load()
        return self._entries.get(key)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        self._load()
        self._entries[key] = entry
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self.path, json.dumps({"fingerprint": self._fp, "choices": self._entries},
                                                        indent=1, sort_keys=True))
            except OSError:  # a read-only home: the choice still holds for this process
                pass


def _default_path() -> Path:
    return Path(os.environ.get("SPARSE_RUN_KERNELS") or os.path.expanduser("~/.cache/sparse-run/kernels.json"))


MEMORY = Memory(_default_path())
