"""The dense model alone (``schedule.kind=none``, ``method=dense``): one arm, the shared dense stage."""
from __future__ import annotations

from sparse_run.engine.run import Run, record_event

from .base import Method


def run_dense(run: Run) -> None:
    model = run.new_model(run.seed)
    masks = run.new_masks(model)
    if "r0/dense" not in run.done:
        record_event(run, 0, masks, {n: 1.0 for n in masks.names()}, 1.0, method=run.cfg.method.name,
                     variant="dense")
        run.train_arm("r0/dense", model, masks, 0, "dense", target_density=1.0, save_as="checkpoints/final.pt",
                      stage="dense")


METHOD = Method(kind="none", run=run_dense, lockstep=True, data_parallel=True, figures="levels")
