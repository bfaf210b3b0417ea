"""Randomised parameter sharing against pruning (``schedule.kind=sharing``; Desai & Shrivastava 2024).

At every compression c of ``schedule.compressions`` (shareable weights per trained parameter) one run trains, from
the run seed's θ0 and data order:

- each arm of ``schedule.variants`` at each z init std of ``schedule.init_stds``: all shareable weights (the layer
  policy's prunable ones) read one shared array of m = round(n / c) parameters through the arm's map —
  ``stable_rps`` (RandomFold with gradient scaling), ``roast``, ``hashed_net``, and ``stable_rps_nogs`` /
  ``roast_gs`` / ``hashed_net_gs`` with the scaling switched;
- each pruning-at-init criterion of ``method.criteria`` at density 1/c (the same number of trained shareable
  parameters), scored on θ0 in the selection's scope;
- the small-dense control of equal parameter count (``controls.variants: [small_dense]``);
- lottery-ticket rewinding (LTR: IMP, global magnitude, survivors rewound to ``rewind_step``) for
  ``schedule.rounds`` rounds at ``schedule.rate``, and the dense model (``schedule.dense``).

Rows carry ``compression`` (n / trained shareable parameters) and the accounting of ``sparsity.sharing``; the
gradient-scaling rule that ran is in ``grad_scale_rule``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from omegaconf import OmegaConf

from sparse_run.config import ConfigError, choice, number
from sparse_run.engine.run import Run, record_event
from sparse_run.engine.train import Diverged
from sparse_run.sparsity import MaskSet
from sparse_run.sparsity import sharing as rps

from . import iterative
from .base import Method
from .levels import criteria_of, dense_baseline, finish, planned_nnz, prune_to, small_dense_arm

# arm → (mapper, gradient scaling)
ARMS = {"stable_rps": ("random_fold", True), "stable_rps_nogs": ("random_fold", False),
        "roast": ("roast", False), "roast_gs": ("roast", True),
        "hashed_net": ("hashed_net", False), "hashed_net_gs": ("hashed_net", True)}
OPT_MOMENTS = {"adam": 2, "adamw": 2, "sgd": 1}


def compressions(cfg: Any) -> list[float]:
    return [float(c) for c in cfg.method.schedule.compressions]


def shared_model(run: Run, variant: str, compression: float, init_std: float) -> tuple[torch.nn.Module,
                                                                                       rps.SharedArray]:
    """θ0's model of the run seed with every shareable weight read from one shared array (biases kept)."""
    kind, grad_scale = ARMS[variant]
    model = run.new_model(run.seed)
    shareable = run.new_masks(model).params  # the layer policy's weights (same set the pruning arms prune)
    n = sum(p.numel() for p in shareable.values())
    shared = rps.SharedArray({k: tuple(p.shape) for k, p in shareable.items()}, max(1, round(n / compression)),
                             kind, run.seed, init_std, {k: float(p.detach().std()) for k, p in shareable.items()},
                             grad_scale, cache=bool(run.cfg.method.schedule.index_cache))
    shared.attach(model)
    return model.to(run.device), shared


def memory(run: Run, model: torch.nn.Module, masks: MaskSet, shared: rps.SharedArray | None = None) -> dict[str, Any]:
    """Parameters trained vs bytes held while training (analytic for the optimizer in use: parameters, their
    gradients and optimizer moments, boolean masks, buffers)."""
    trained = sum(p.numel() for p in model.parameters())
    moments = OPT_MOMENTS.get(str(run.cfg.train.optimizer), 2)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    state = trained * 4 * (2 + moments) + masks.numel() + buffers
    out = {"trained_params": trained, "train_state_bytes": state}
    if shared is not None:
        c = shared.counts()
        out.update(shared_params=c["shared_params"], unshared_params=trained - c["shared_params"],
                   buffer_bytes=c["buffer_bytes"], forward_weight_bytes=c["forward_weight_bytes"])
    return out


def _rps_arm(run: Run, r: int, c: float, variant: str, std: float, several_stds: bool) -> None:
    key = f"{variant}/std{std:g}/r{r}"
    if key in run.done:
        return
    model, shared = shared_model(run, variant, c, std)
    masks = MaskSet({})
    load = shared.load()
    extra = {"compression": shared.n / shared.m, "target_compression": c, "mapper": shared.kind,
             "grad_scale": shared.grad_scale_on, "grad_scale_rule": rps.GRAD_SCALE_RULE if shared.grad_scale_on
             else "none", "init_std": std, "index_cache": shared.cache, "unused_slots": float((load == 0).float().mean()),
             "max_slot_load": int(load.max()), "density": shared.m / shared.n, "nonzeros": shared.m,
             "prunable": shared.n, **memory(run, model, masks, shared)}
    extra["nnz_params"] = extra["trained_params"]
    name = f"{variant}@{std:g}" if several_stds else variant
    try:
        run.train_arm(key, model, masks, r, variant, target_density=1 / c, extra=extra, method=name)
    except Diverged as e:  # a diverging init std is a result of the stability study
        run.record_diverged(key, masks, r, variant, target_density=1 / c, method=name, extra=extra,
                            error=str(e).split(";")[0])


def run_sharing(run: Run) -> None:
    s, method = run.cfg.method.schedule, run.cfg.method
    if s.rounds:
        _ltr(run)
    if s.dense:
        dense_baseline(run)
    stds = [float(v) for v in s.init_stds]
    crits = criteria_of(run.cfg) if method.criteria else []
    for r, c in enumerate(compressions(run.cfg), start=1):
        for variant in s.variants:
            for std in stds:
                _rps_arm(run, r, c, variant, std, len(stds) > 1)
        if c <= 1:  # pruning to density 1 is the dense model
            continue
        for crit in crits:
            key = f"{crit}/r{r}/sparse"
            if key in run.done:
                continue
            model = run.new_model(run.seed)
            masks = run.new_masks(model)
            planned = prune_to(run, model, masks, crit, 1 / c, ("at_init", crit, r))
            record_event(run, r, masks, planned, 1 / c, method=crit, variant="sparse")
            run.train_arm(key, model, masks, r, "sparse", target_density=1 / c, method=crit,
                          extra={"compression": masks.numel() / max(masks.nonzeros(), 1), "target_compression": c,
                                 **memory(run, model, masks)})
            finish(run, model, masks)
        if "small_dense" in method.controls.variants:
            model = run.new_model(run.seed)
            small_dense_arm(run, r, 1 / c, planned_nnz(model, run.new_masks(model), 1 / c),
                            row_extra=lambda res, m, c=c: {"target_compression": c,
                                                           **memory(run, m, MaskSet({}))})


def _ltr(run: Run) -> None:
    """IMP with rewinding to ``rewind_step`` (global magnitude), as ``schedule.kind=iterative`` runs it."""
    over = {"method": {"criterion": "magnitude", "selection": {"scope": "global"}, "controls": {"variants": []},
                       "schedule": {"rewind": "step", "rewinds": None}}}
    ltr_run = dataclasses.replace(run, cfg=OmegaConf.merge(run.cfg, over))
    iterative._iterative_chain(ltr_run, "step", "ltr", capture_round0=True)


def validate(cfg: Any) -> None:
    """One-line errors: compressions >= 1, known arms, positive init stds, LTR settings, shareable layers only."""
    s, m = cfg.method.schedule, cfg.method
    cs = s.compressions
    if cs is None or not OmegaConf.is_list(cs) or not len(cs):
        raise ConfigError("method.schedule.compressions", f"got {cs!r}; a non-empty list of compressions >= 1 "
                                                          "(shareable weights per trained parameter)")
    for i, c in enumerate(cs):
        number(c, f"method.schedule.compressions[{i}]", lo=1)
    variants = list(s.variants or [])
    for i, v in enumerate(variants):
        choice(v, f"method.schedule.variants[{i}]", tuple(ARMS))
    if len(set(variants)) != len(variants):
        raise ConfigError("method.schedule.variants", f"got {variants}; each arm at most once")
    stds = s.init_stds
    if variants and (stds is None or not len(stds)):
        raise ConfigError("method.schedule.init_stds", f"got {stds!r}; a non-empty list of z init stds > 0")
    for i, v in enumerate(stds or []):
        number(v, f"method.schedule.init_stds[{i}]", lo=0, lo_open=True)
    for i, layer in enumerate(m.policy.layers):
        choice(layer, f"method.policy.layers[{i}] (schedule.kind=sharing shares)", ("linear", "conv"))
    if m.selection.pattern != "unstructured":
        raise ConfigError("method.selection.pattern", f"got {m.selection.pattern!r}; schedule.kind=sharing compares "
                                                      "against unstructured pruning")
    if s.rounds:
        iterative.validate(OmegaConf.merge(cfg, {"method": {"criterion": "magnitude",
                                                            "selection": {"scope": "global"},
                                                            "schedule": {"rewind": "step", "rewinds": None}}}))


METHOD = Method(kind="sharing", run=run_sharing, validate=validate, controls=("small_dense",),
                several_criteria=True, patterns=None, figures="sharing", trains=False)
