"""Hardware targets (config group ``hardware/``): execute the final sparse model the way a target
would, next to the dense model in the same process, and say whether it got faster.

``check(cfg, selects)`` runs before any work: it validates the target and reconciles the method's
selection pattern with what the target can execute (an announced switch where the method allows,
a one-line ``ConfigError`` otherwise). ``measure(run)`` runs after training and writes
``hardware.csv`` and ``hardware.json`` (docs/hardware.md); ``report.hardware`` draws them.

A layer above the engine (it times with the engine's oneDNN kernels) and below the report: may import
``engine``, ``sparsity``, ``store`` and ``config``; never report, methods, studies or execute. The timing
protocol and sparse formats live here; the kernel study that drives them is ``studies/kernel_study.py``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import open_dict

from sparse_run.config import ConfigError, choice, number

TARGETS = ("cpu", "cpu_sparse", "cpu_block", "cpu_group", "slim", "cuda_2of4")
EXECUTIONS = ("dense", "csr", "bsr", "group", "slim", "semi_structured")
NEEDS = ("any", "block", "channel", "group", "nm")
_announced: set[str] = set()


def check(cfg: Any, selects: bool = True) -> None:
    """Reject targets / settings / method combinations the target cannot execute (before any work);
    ``selects``: the method selects weights in a pattern (``Method.patterns``), which the target may constrain."""
    hw = cfg.hardware
    choice(hw.name, "hardware.name", TARGETS)
    choice(hw.execution, "hardware.execution", EXECUTIONS)
    choice(hw.pattern, "hardware.pattern", NEEDS)
    if hw.execution == "dense":
        return
    for b in hw.batch_sizes:
        number(b, "hardware.batch_sizes", lo=1, integer=True)
    if hw.threads is not None:
        number(hw.threads, "hardware.threads", lo=1, integer=True)
    number(hw.warmup, "hardware.warmup", lo=0, integer=True)
    number(hw.rounds, "hardware.rounds", lo=3, integer=True)
    number(hw.min_time_ms, "hardware.min_time_ms", lo=0, lo_open=True)
    number(hw.ci, "hardware.ci", lo=0, hi=1, lo_open=True, hi_open=True)
    if hw.execution in ("csr", "bsr"):
        choice(hw.index_dtype, "hardware.index_dtype", ("int32", "int64"))
    if hw.execution == "bsr":
        blk = list(hw.block)
        if len(blk) != 2 or blk[0] != blk[1] or not all(isinstance(v, int) and v >= 1 for v in blk):
            raise ConfigError("hardware.block", f"got {blk!r}; torch's CPU BSR kernels (MKL) run square blocks "
                                                "only; allowed: [b, b], e.g. [4, 4], [16, 16]")
    if hw.execution == "semi_structured":
        choice(hw.dtype, "hardware.dtype", ("float16", "bfloat16"))
    if hw.execution == "group":
        from sparse_run.sparsity.patterns import GROUP_SIZES

        choice(hw.group, "hardware.group", GROUP_SIZES)
    if selects:
        _constrain_pattern(cfg)


def _announce(msg: str) -> None:
    if msg not in _announced:
        _announced.add(msg)
        print(f"sparse-run: {msg}", file=sys.stderr)


def _constrain_pattern(cfg: Any) -> None:
    """Make the method's selection produce the pattern the target needs, or refuse in one line."""
    hw, method = cfg.hardware, cfg.method
    need, have = hw.pattern, method.selection.pattern
    if need == "any":
        return
    target = f"hardware={hw.name}"
    if need == "block":
        want = [int(v) for v in hw.block]
        if have == "block":
            got = [int(v) for v in (method.selection.block or want)]
            if got != want:
                raise ConfigError("method.selection.block", f"got {got}; {target} executes {want[0]}x{want[1]} "
                                                            f"blocks; allowed: {want}")
            with open_dict(method.selection):
                method.selection.block = want
            return
        if have != "unstructured":
            raise ConfigError("method.selection.pattern", f"got {have!r}; {target} executes block-sparse weights; "
                                                          "allowed: block, unstructured (switched to block)")
        with open_dict(method.selection):
            method.selection.pattern, method.selection.block = "block", want
        _announce(f"{target} needs block-shaped masks: method.selection.pattern unstructured -> block "
                  f"{want[0]}x{want[1]}")
    elif need == "group":
        g = int(hw.group)
        if have == "group" and int(method.selection.group) != g:
            raise ConfigError("method.selection.group", f"got {method.selection.group}; {target} executes {g}x1 "
                                                        f"groups; allowed: {g}")
        if have not in ("group", "unstructured"):
            raise ConfigError("method.selection.pattern", f"got {have!r}; {target} executes g×1 group-sparse "
                                                          "weights; allowed: group, unstructured (switched to group)")
        if have == "unstructured":
            with open_dict(method.selection):
                method.selection.pattern, method.selection.group = "group", g
            _announce(f"{target} needs {g}x1 groups: method.selection.pattern unstructured -> group")
        if method.policy.prune_last:
            with open_dict(method.policy):
                method.policy.prune_last = False
            _announce(f"{target}: the output layer's rows are the classes: method.policy.prune_last true -> false")
    elif need == "channel":
        if have not in ("channel", "unstructured"):
            raise ConfigError("method.selection.pattern", f"got {have!r}; {target} removes whole channels; "
                                                          "allowed: channel, unstructured (switched to channel)")
        if have == "unstructured":
            with open_dict(method.selection):
                method.selection.pattern = "channel"
            _announce(f"{target} removes whole channels: method.selection.pattern unstructured -> channel")
        if method.policy.prune_last:
            with open_dict(method.policy):
                method.policy.prune_last = False
            _announce(f"{target}: the output layer's rows are the classes: method.policy.prune_last true -> false")
    elif need == "nm":
        n, m = int(hw.n), int(hw.m)
        if have == "nm" and method.selection.n == n and method.selection.m == m:
            return
        raise ConfigError("method.selection.pattern", f"got {have!r}; {target} executes {n}:{m} semi-structured "
                                                      f"weights only; allowed: nm with n={n}, m={m}, or a method "
                                                      "that prunes nothing (method=dense)")


def measure(run: Any) -> Path | None:
    """Time the final model dense vs on the target; write hardware.csv / .json (execute draws the figure)."""
    cfg = run.cfg
    if cfg.hardware.execution == "dense":
        return None
    import torch

    from sparse_run.sparsity import MaskSet, prunable
    from sparse_run.store.files import atomic_write_text, load_state
    from sparse_run.store.schema import rows_to_csv

    from .env import environment
    from .formats import assert_pruned_zero
    from .measurement import COLUMNS, measure_model, protocol

    hw = cfg.hardware
    final = load_state(run.dir / "checkpoints/final.pt", keys=("model", "masks"))
    model = run.new_model(run.seed).cpu()
    assert_pruned_zero(final["model"], final["masks"])  # the model we time is the one that was trained
    model.load_state_dict({k: v.cpu() for k, v in final["model"].items()})
    masks = MaskSet(prunable(model, cfg.method.policy))
    masks.load_state_dict(final["masks"])
    threads_before = torch.get_num_threads()
    threads = hw.threads or cfg.threads or threads_before
    torch.set_num_threads(int(threads))
    try:
        context = {k: v for k, v in run.context(-1, "final").items() if k not in ("round", "variant")}
        proto = protocol(hw, cfg.budget.short_timing, run.seed)
        rows, meta = measure_model(model, masks.masks, hw, run.data.test_x.cpu(), proto, context)
        env = environment(int(threads))
    finally:
        torch.set_num_threads(threads_before)
    atomic_write_text(run.dir / "hardware.csv", rows_to_csv(rows, COLUMNS))
    info = {"target": dict(hw), "protocol": proto.__dict__, "environment": env, **meta,
            "pattern": dict(cfg.method.selection)}
    atomic_write_text(run.dir / "hardware.json", json.dumps(info, indent=2, default=str))
    return run.dir / "hardware.csv"
