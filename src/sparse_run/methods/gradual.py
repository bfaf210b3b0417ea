"""Gradual magnitude pruning (``schedule.kind=gradual``, Zhu & Gupta): the cubic sparsity schedule during
training, one arm per final sparsity, plus matched small-dense controls."""
from __future__ import annotations

from typing import Any, Callable

import torch

from sparse_run.config import ConfigError, number
from sparse_run.engine.run import Run, record_event
from sparse_run.sparsity import MaskSet, cubic_sparsity, gradual_events, levels
from sparse_run.sparsity.selection import PATTERNS as LEVEL_PATTERNS

from .base import Method
from .levels import dense_baseline, finish, planned_nnz, prune_to, small_dense_arm, validate_levels

def cubic_hook(run: Run, model: torch.nn.Module, masks: MaskSet, r: int, s_f: float, *, s_i: float, t0: int,
               t_end: int, every: int, variant: str) -> Callable[[int, torch.nn.Module, MaskSet], None]:
    """The step hook of one gradually pruned arm: at each event of the cubic schedule the masks are reset to
    its sparsity by ``method.criterion`` among the surviving weights (recorded in ``layers.csv``). An event
    at step 0 is applied here, before training."""
    method = run.cfg.method
    events = set(gradual_events(t0, t_end, every))

    def hook(step: int, model: torch.nn.Module, masks: MaskSet) -> None:
        if step not in events:
            return
        d = 1.0 - cubic_sparsity(step, s_i, s_f, t0, t_end)
        planned = prune_to(run, model, masks, method.criterion, d, ("gradual", r, step))
        record_event(run, r, masks, planned, d, method=method.name, variant=variant, step=step)

    if 0 in events:
        hook(0, model, masks)
    return hook


def run_gradual(run: Run) -> None:
    """Zhu & Gupta gradual pruning: from ``start_step`` every ``every_steps`` until ``end_step`` the
    masks are reset to the cubic schedule's sparsity by the criterion (alive weights only), then
    frozen; one arm per final sparsity, plus matched small-dense controls."""
    sched, method = run.cfg.method.schedule, run.cfg.method
    if sched.dense:
        dense_baseline(run)
    t0, t_end = int(sched.start_step), int(sched.end_step)
    for i, density in enumerate(levels(sched)):
        r, key = i + 1, f"r{i + 1}/sparse"
        model = run.new_model(run.seed)
        masks = run.new_masks(model)
        if key not in run.done:
            hook = cubic_hook(run, model, masks, r, 1.0 - density, s_i=float(sched.initial_sparsity), t0=t0,
                              t_end=t_end, every=int(sched.every_steps), variant="sparse")
            run.train_arm(key, model, masks, r, "sparse", target_density=density, hooks=[hook], early_stop_from=t_end)
            run.writer.save(f"masks/round_{r:02d}.pt", masks.state_dict())
            finish(run, model, masks)
        if "small_dense" in method.controls.variants:
            small_dense_arm(run, r, density, planned_nnz(model, masks, density))


def validate(cfg: Any) -> None:
    s, steps = cfg.method.schedule, int(cfg.train.steps)
    dens = validate_levels(cfg, final_sparsity=True)
    s_i = number(s.initial_sparsity, "method.schedule.initial_sparsity", lo=0, hi=1, hi_open=True)
    if any(1 - d < s_i for d in dens):
        raise ConfigError("method.schedule.initial_sparsity",
                          f"got {s_i}; must be <= every final sparsity ({[round(1 - d, 6) for d in dens]})")
    t0 = number(s.start_step, "method.schedule.start_step", lo=0, hi=steps, integer=True)
    number(s.end_step, "method.schedule.end_step", lo=t0, hi=steps, integer=True)
    number(s.every_steps, "method.schedule.every_steps", lo=1, integer=True)


METHOD = Method(kind="gradual", run=run_gradual, validate=validate, controls=("small_dense",),
                patterns=LEVEL_PATTERNS, figures="levels", data_parallel=True)
