"""The timing protocol: same process, warm-ups, contenders timed in alternating shuffled rounds,
median of the per-round speedups with a bootstrap interval, and a verdict read off the interval.

A round's sample of one contender is the fastest of the back-to-back calls that fill
``min_time_s`` (``sample="mean"`` for their mean): on a shared machine, preemption only ever
adds time, so the minimum is the least contaminated estimate of what the kernel costs.

Timings on shared machines drift by up to 2× between identical runs; pairing each sparse sample
with a dense one taken moments before or after it cancels most of that drift, and shuffling the
order within a round removes any systematic first/second advantage (cache, frequency).
"""
from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

VERDICTS = ("faster", "no faster", "slower", "not available")


@dataclass
class Protocol:
    warmup: int = 3          # untimed calls of every contender before timing
    rounds: int = 15         # timed rounds; each times every contender once, in shuffled order
    min_time_s: float = 0.005  # each sample repeats the call until it lasts at least this long
    sample: str = "min"      # a sample's value: min (fastest call; preemption only adds time) | mean
    bootstrap: int = 2000    # bootstrap resamples of the per-round ratios
    ci: float = 0.95
    seed: int = 0


def _calls_for(fn: Callable[[], object], min_time_s: float, sync: Callable[[], None]) -> int:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    once = max(time.perf_counter() - t0, 1e-7)
    return max(1, min(10_000, math.ceil(min_time_s / once)))


def time_rounds(fns: dict[str, Callable[[], object]], proto: Protocol,
                sync: Callable[[], None] = lambda: None) -> dict[str, np.ndarray]:
    """Seconds per call of each contender, one sample per round (rounds × contenders)."""
    rng = np.random.default_rng(proto.seed)
    with torch.no_grad():
        for _ in range(proto.warmup):
            for fn in fns.values():
                fn()
        calls = {k: _calls_for(fn, proto.min_time_s, sync) for k, fn in fns.items()}
        out: dict[str, list[float]] = {k: [] for k in fns}
        keys = list(fns)
        for _ in range(proto.rounds):
            for i in rng.permutation(len(keys)):
                k = keys[i]
                fn, n = fns[k], calls[k]
                calls_s = []
                for _ in range(n):
                    sync()
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    calls_s.append(time.perf_counter() - t0)
                out[k].append(min(calls_s) if proto.sample == "min" else sum(calls_s) / n)
    return {k: np.asarray(v) for k, v in out.items()}


@dataclass
class Speedup:
    median: float
    lo: float
    hi: float
    verdict: str


def speedup(base: np.ndarray, other: np.ndarray, proto: Protocol) -> Speedup:
    """Median of the paired per-round ratios ``base / other`` and its bootstrap interval."""
    ratios = np.asarray(base, float) / np.asarray(other, float)
    rng = np.random.default_rng(proto.seed + 1)
    idx = rng.integers(0, len(ratios), size=(proto.bootstrap, len(ratios)))
    meds = np.median(ratios[idx], axis=1)
    alpha = (1 - proto.ci) / 2
    lo, hi = np.quantile(meds, [alpha, 1 - alpha])
    return Speedup(float(np.median(ratios)), float(lo), float(hi), verdict(float(lo), float(hi)))


def verdict(lo: float, hi: float) -> str:
    """``faster`` if the whole interval is above 1, ``slower`` if below, else ``no faster``."""
    if lo > 1.0:
        return "faster"
    if hi < 1.0:
        return "slower"
    return "no faster"


class PeakMemory(TorchDispatchMode):
    """Peak bytes of tensors allocated by the ops run inside it (activations, workspaces).

    Counts each new storage once when an op returns it and releases it when its tensor dies;
    inputs and weights that existed before are not counted (they are reported separately).
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._seen: set[int] = set()
        self._external: set[int] = set()  # storages that existed before (inputs, weights) and their views

    def _release(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                key = t.untyped_storage().data_ptr()
                if key not in self._seen:
                    self._external.add(key)
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if not key or key in self._seen or key in self._external:
                continue
            nbytes = storage.nbytes()
            self._seen.add(key)
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(t, self._release, key, nbytes)
        return out


def peak_bytes(fn: Callable[[], object], cuda: bool = False) -> int:
    """Peak bytes newly allocated while ``fn`` runs (CPU: tracked per op; CUDA: the allocator's counter)."""
    with torch.no_grad():
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated() - base)
        mode = PeakMemory()
        with mode:
            out = fn()
        del out
        return int(mode.peak)


def faster(t: dict[str, np.ndarray], key: str) -> tuple[str, np.ndarray]:
    """``key``'s samples, or those of its ``<key>_onednn`` contender when that is faster by median;
    with which kernel won (``aten`` / ``onednn``)."""
    alt = t.get(f"{key}_onednn")
    if alt is not None and np.median(alt) < np.median(t[key]):
        return "onednn", alt
    return "aten", t[key]


def best_dense(t: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, float | str]]:
    """The faster dense contender's samples, and the row's ``dense_kernel`` / per-kernel medians."""
    kind, samples = faster(t, "dense")
    alt = t.get("dense_onednn")
    return samples, {"dense_kernel": kind, "t_dense_aten_ms": 1e3 * float(np.median(t["dense"])),
                     "t_dense_onednn_ms": 1e3 * float(np.median(alt)) if alt is not None else float("nan")}
