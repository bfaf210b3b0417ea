"""What the multi-level methods share (``oneshot``, ``at_init``, ``gradual``): scoring and selecting to a
level, the dense baseline (round 0), the matched small-dense control, and their common settings' checks.

Each of those methods runs the dense baseline and one arm per level (``round`` = level index,
``target_density`` = the level's density). Every arm is deterministic given the seed, so a resumed run
recomputes masks of unfinished arms and skips finished ones.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from omegaconf import OmegaConf

from sparse_run import models
from sparse_run.config import ConfigError, choice, number
from sparse_run.engine.run import Run, derive_seed, record_event
from sparse_run.sparsity import CRITERIA, MaskSet, ScoreContext, rate_scales
from sparse_run.sparsity import select as select_masks
from sparse_run.sparsity.permute import permute_for_groups
from sparse_run.sparsity.selection import PATTERNS as LEVEL_PATTERNS
from sparse_run.sparsity.selection import targets as layer_targets
from sparse_run.store.files import load_state


def criteria_of(cfg: Any) -> list[str]:
    """``method.criteria`` (several criteria compared in one run) or the single ``method.criterion``."""
    return list(cfg.method.criteria or [cfg.method.criterion])


def prune_to(run: Run, model: torch.nn.Module, masks: MaskSet, criterion: str, density: float,
             tag: Any) -> dict[str, float] | None:
    """Score with ``criterion`` and set ``masks`` to ``density`` of the prunable weights under the
    method's selection; returns the per-layer planned densities (None for global / percentile scope)."""
    method = run.cfg.method
    scope, pattern = method.selection.scope, method.selection.pattern
    scales = rate_scales(model, method.policy, masks.names())

    def select(scores: dict[str, torch.Tensor], current: dict[str, torch.Tensor], d: float) -> dict[str, torch.Tensor]:
        return select_masks(scores, current, d, scope=scope, pattern=pattern, scales=scales,
                            selection=method.selection)

    if method.selection.permute:  # before scoring: the criterion then sees the permuted network (same function)
        permute_for_groups(model, masks.names(), int(method.selection.group), density, masks.masks,
                           seed=derive_seed(run.seed, ("permute", tag)))

    def batches(n: int) -> tuple[torch.Tensor, torch.Tensor]:  # the same examples for every criterion and level
        g = torch.Generator().manual_seed(derive_seed(run.seed, "score-batch"))
        idx = torch.randperm(run.data.train_x.shape[0], generator=g)[:n].to(run.data.train_x.device)
        return run.data.train_x[idx], run.data.train_y[idx]

    ctx = ScoreContext(model=model, masks=masks, generator=torch.Generator().manual_seed(derive_seed(run.seed, tag)),
                       batches=batches, num_classes=run.data.spec.num_classes,
                       input_shape=tuple(run.data.spec.input_shape), target_density=density, select=select,
                       rounds=int(method.synflow_rounds),
                       grasp_temperature=float(method.grasp_temperature))
    planned = layer_targets(masks.masks, density, scope, scales)
    masks.set(select(CRITERIA[criterion](ctx), masks.masks, density))
    return planned


def dense_baseline(run: Run, prefix: str = "", method: str | None = None,
                   context: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> torch.nn.Module:
    """Round 0: the dense model from θ0, trained once (its weights are kept for one-shot pruning).
    ``prefix`` separates the dense arms of several model arms (key and checkpoint path); ``extra``: row columns."""
    model = run.new_model(run.seed)
    masks = run.new_masks(model)
    path = run.dir / f"checkpoints/{prefix}round_00.pt"
    if f"{prefix}r0/dense" not in run.done:
        record_event(run, 0, masks, {n: 1.0 for n in masks.names()}, 1.0, method=method or run.cfg.method.name,
                       variant="dense")
        run.train_arm(f"{prefix}r0/dense", model, masks, 0, "dense", target_density=1.0, method=method,
                      save_as=f"checkpoints/{prefix}round_00.pt", stage="dense", context=context, extra=extra)
    else:
        model.load_state_dict(load_state(path, keys=("model",))["model"])
    return model


def matched_width(run: Run, nnz: int) -> tuple[float, int]:
    """The smallest ``model.width`` whose dense model has at least ``nnz`` parameters.

    Hidden sizes are integers, so counts cannot match exactly; erring upwards never gives the
    small-dense control fewer parameters than the sparse model it is compared with.
    """
    spec = run.data.spec

    def count(w: float) -> int:
        cfg = OmegaConf.merge(run.cfg.model, {"width": w})
        with torch.device("meta"):  # shapes only: no memory, no draw from the global RNG
            return sum(q.numel() for q in models.ARCHS[cfg.arch](cfg, spec).parameters())

    lo, hi = 1e-4, max(1.0, float(run.cfg.model.width))
    for _ in range(40):  # smallest width with count >= nnz
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if count(mid) >= nnz else (mid, hi)
    return hi, count(hi)  # not rounded: hidden sizes round(h × w) jump at .5 boundaries


def small_dense_arm(run: Run, r: int, density: float, nnz: int,
                    row_extra: Callable[[Any, torch.nn.Module], dict[str, Any]] | None = None) -> None:
    """Zhu & Gupta's control: a narrower dense model with (about) the sparse model's non-zeros; ``row_extra(result,
    model)`` adds columns computed from the trained arm."""
    key = f"r{r}/small_dense"
    if key in run.done:
        return
    width, _ = matched_width(run, nnz)
    mcfg = OmegaConf.merge(run.cfg.model, {"width": width})
    model = run.new_model(run.seed, model_cfg=mcfg)
    masks = run.new_masks(model, check=False)
    run.train_arm(key, model, masks, r, "small_dense", target_density=density,
                  extra={"width": width, "matched_nnz": nnz},
                  row_extra=(lambda res: row_extra(res, model)) if row_extra else None)


def planned_nnz(model: torch.nn.Module, masks: MaskSet, density: float) -> int:
    """Non-zero parameters of ``model`` once its prunable weights are at ``density``."""
    total = sum(q.numel() for q in model.parameters())
    return total - masks.numel() + round(density * masks.numel())


def finish(run: Run, model: torch.nn.Module, masks: MaskSet) -> None:
    run.writer.save("checkpoints/final.pt", {"model": model.state_dict(), "masks": masks.state_dict()})




def _fractions(values: Any, field: str, *, lo: float, hi: float, lo_open: bool, hi_open: bool) -> list[float]:
    vals = [values] if isinstance(values, (int, float)) else list(values)
    if not vals:
        raise ConfigError(field, "got an empty list; give at least one level")
    for i, v in enumerate(vals):
        number(v, f"{field}[{i}]", lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)
    return [float(v) for v in vals]


def validate_levels(cfg: Any, *, full: bool = False, final_sparsity: bool = False) -> list[float]:
    """Exactly one of ``schedule.densities`` / ``sparsities`` (/ ``final_sparsity`` for gradual) in range;
    ``full``: 100 % pruning allowed (one-shot: the sparse-RNN thesis' end point). Returns the densities."""
    m, s = cfg.method, cfg.method.schedule
    choice(m.selection.pattern, f"method.selection.pattern (schedule.kind={s.kind})", LEVEL_PATTERNS)
    given = [k for k in ("densities", "sparsities") if s.get(k) is not None]
    if final_sparsity and s.final_sparsity is not None:
        given.append("final_sparsity")
    if len(given) != 1:
        keys = "densities | sparsities" + (" | final_sparsity" if final_sparsity else "")
        raise ConfigError("method.schedule", f"got {given or 'none'}; give exactly one of {keys}")
    key = given[0]
    if key == "densities":
        return _fractions(s.densities, "method.schedule.densities", lo=0, hi=1, lo_open=not full, hi_open=False)
    spars = _fractions(s[key], f"method.schedule.{key}", lo=0, hi=1, lo_open=False, hi_open=not full)
    return [1 - v for v in spars]
