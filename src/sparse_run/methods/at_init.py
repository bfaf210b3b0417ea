"""Pruning at initialisation (``schedule.kind=at_init``: SNIP, GraSP, SynFlow, random …): score θ0 per
criterion, keep each level, train θ0 ⊙ m."""
from __future__ import annotations

from typing import Any


from sparse_run.engine.run import Run, record_event
from sparse_run.sparsity import levels
from sparse_run.sparsity.selection import PATTERNS as LEVEL_PATTERNS

from .base import Method
from .levels import criteria_of, dense_baseline, finish, planned_nnz, prune_to, small_dense_arm, validate_levels

def run_at_init(run: Run) -> None:
    """Pruning at initialisation: score θ0 with each criterion, keep each level, train θ0 ⊙ m."""
    sched, method = run.cfg.method.schedule, run.cfg.method
    if sched.dense:
        dense_baseline(run)
    crits = criteria_of(run.cfg)
    for crit in crits:
        name = crit if len(crits) > 1 else method.name
        for i, density in enumerate(levels(sched)):
            r, key = i + 1, f"{crit}/r{i + 1}/sparse"
            if key in run.done:
                continue
            model = run.new_model(run.seed)
            masks = run.new_masks(model)
            planned = prune_to(run, model, masks, crit, density, ("at_init", crit, r))
            record_event(run, r, masks, planned, density, method=name, variant="sparse")
            run.writer.save(f"masks/{crit}/round_{r:02d}.pt", masks.state_dict())
            run.train_arm(key, model, masks, r, "sparse", target_density=density, method=name)
            finish(run, model, masks)
    for i, density in enumerate(levels(sched)):
        if "small_dense" in method.controls.variants:
            model = run.new_model(run.seed)
            small_dense_arm(run, i + 1, density, planned_nnz(model, run.new_masks(model), density))


def validate(cfg: Any) -> None:
    validate_levels(cfg)


METHOD = Method(kind="at_init", run=run_at_init, validate=validate, controls=("small_dense",),
                several_criteria=True, patterns=LEVEL_PATTERNS, figures="levels", data_parallel=True)
