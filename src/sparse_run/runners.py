"""Multi-level runners: one-shot, at-init and gradual pruning (``schedule.kind`` = ``oneshot`` /
``at_init`` / ``gradual``), each with the dense baseline (round 0) and one arm per level
(``round`` = level index, ``target_density`` = the level's density).

They only use ``pipeline.Run`` and the sparsity library; ``pipeline.RUNNERS`` registers them.
Every arm is deterministic given the seed, so a resumed run recomputes masks of unfinished arms
and skips finished ones.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf

from . import arms, models
from .results import load_state
from .sparsity import CRITERIA, MaskSet, ScoreContext, cubic_sparsity, gradual_events, levels, rate_scales
from .sparsity import select as select_masks
from .sparsity.selection import targets as layer_targets
from .train import evaluate

if TYPE_CHECKING:
    from .pipeline import Run


def _pipeline() -> Any:
    from . import pipeline  # runtime import: pipeline imports this module

    return pipeline


def criteria_of(cfg: Any) -> list[str]:
    """``method.criteria`` (several criteria compared in one run) or the single ``method.criterion``."""
    return list(cfg.method.get("criteria") or [cfg.method.criterion])


def prune_to(run: "Run", model: torch.nn.Module, masks: MaskSet, criterion: str, density: float,
             tag: Any) -> dict[str, float] | None:
    """Score with ``criterion`` and set ``masks`` to ``density`` of the prunable weights under the
    method's selection; returns the per-layer planned densities (None for global / percentile scope)."""
    method = run.cfg.method
    scope, pattern = method.selection.scope, method.selection.pattern
    scales = rate_scales(model, method.policy, masks.names())
    p = _pipeline()

    def select(scores: dict[str, torch.Tensor], current: dict[str, torch.Tensor], d: float) -> dict[str, torch.Tensor]:
        return select_masks(scores, current, d, scope=scope, pattern=pattern, scales=scales)

    def batches(n: int) -> tuple[torch.Tensor, torch.Tensor]:  # the same examples for every criterion and level
        g = torch.Generator().manual_seed(p.derive_seed(run.seed, "score-batch"))
        idx = torch.randperm(run.data.train_x.shape[0], generator=g)[:n].to(run.data.train_x.device)
        return run.data.train_x[idx], run.data.train_y[idx]

    ctx = ScoreContext(model=model, masks=masks, generator=torch.Generator().manual_seed(p.derive_seed(run.seed, tag)),
                       batches=batches, num_classes=run.data.spec.num_classes,
                       input_shape=tuple(run.data.spec.input_shape), target_density=density, select=select,
                       rounds=int(method.get("synflow_rounds", 100)),
                       grasp_temperature=float(method.get("grasp_temperature", 200.0)))
    planned = layer_targets(masks.masks, density, scope, scales)
    masks.set(select(CRITERIA[criterion](ctx), masks.masks, density))
    return planned


def dense_baseline(run: "Run", prefix: str = "", method: str | None = None,
                   context: dict[str, Any] | None = None) -> torch.nn.Module:
    """Round 0: the dense model from θ0, trained once (its weights are kept for one-shot pruning).
    ``prefix`` separates the dense arms of several model arms (key and checkpoint path)."""
    p = _pipeline()
    model = run.new_model(run.seed)
    masks = run.new_masks(model)
    path = run.dir / f"checkpoints/{prefix}round_00.pt"
    if f"{prefix}r0/dense" not in run.done:
        p.record_event(run, 0, masks, {n: 1.0 for n in masks.names()}, 1.0, method=method or run.cfg.method.name,
                       variant="dense")
        run.train_arm(f"{prefix}r0/dense", model, masks, 0, "dense", target_density=1.0, method=method,
                      save_as=f"checkpoints/{prefix}round_00.pt", stage="dense", context=context)
    else:
        model.load_state_dict(load_state(path, keys=("model",))["model"])
    return model


def matched_width(run: "Run", nnz: int) -> tuple[float, int]:
    """The smallest ``model.width`` whose dense model has at least ``nnz`` parameters.

    Hidden sizes are integers, so counts cannot match exactly; erring upwards never gives the
    small-dense control fewer parameters than the sparse model it is compared with.
    """
    spec = run.data.spec

    def count(w: float) -> int:
        cfg = OmegaConf.merge(run.cfg.model, {"width": w})
        with torch.device("meta"):  # shapes only: no memory, no draw from the global RNG
            return sum(q.numel() for q in models.ARCHS[cfg.arch](cfg, spec).parameters())

    lo, hi = 1e-4, max(1.0, float(run.cfg.model.get("width", 1.0)))
    for _ in range(40):  # smallest width with count >= nnz
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if count(mid) >= nnz else (mid, hi)
    return hi, count(hi)  # not rounded: hidden sizes round(h × w) jump at .5 boundaries


def small_dense_arm(run: "Run", r: int, density: float, nnz: int) -> None:
    """Zhu & Gupta's control: a narrower dense model with (about) the sparse model's non-zeros."""
    key = f"r{r}/small_dense"
    if key in run.done:
        return
    width, _ = matched_width(run, nnz)
    mcfg = OmegaConf.merge(run.cfg.model, {"width": width})
    model = run.new_model(run.seed, model_cfg=mcfg)
    masks = run.new_masks(model)
    run.train_arm(key, model, masks, r, "small_dense", target_density=density,
                  extra={"width": width, "matched_nnz": nnz})


def planned_nnz(model: torch.nn.Module, masks: MaskSet, density: float) -> int:
    """Non-zero parameters of ``model`` once its prunable weights are at ``density``."""
    total = sum(q.numel() for q in model.parameters())
    return total - masks.numel() + round(density * masks.numel())


def _finish(run: "Run", model: torch.nn.Module, masks: MaskSet) -> None:
    run.writer.save("checkpoints/final.pt", {"model": model.state_dict(), "masks": masks.state_dict()})


# -- runners ----------------------------------------------------------------------------------

def run_oneshot(run: "Run") -> None:
    """Train dense, then per level: prune the *same* trained weights once, fine-tune
    ``finetune_steps``; ``test_acc_before_finetune`` is measured right after pruning.

    ``schedule.models`` / ``method.policies`` (``arms.py``) repeat this per model arm (one dense
    model each) and per policy arm (which weights are prunable); ``schedule.finetune_evals`` = E
    evaluates fine-tuning E times at equal intervals, each into a ``test_acc_ft_<k>`` column."""
    sched, method = run.cfg.method.schedule, run.cfg.method
    p = _pipeline()
    if run.cfg.get("budget_note"):
        print(f"sparse-run: {run.cfg.name} at budget {run.cfg.budget.name}: {run.cfg.budget_note}")
    evals = sched.get("finetune_evals")
    ft_train = {"eval_every": -(-int(sched.finetune_steps) // int(evals))} if evals else None  # ⌈steps / E⌉

    def per_eval(res: Any) -> dict[str, float]:
        return {f"test_acc_ft_{k + 1}": h["test_acc"] for k, h in enumerate(res.history)} if evals else {}

    crits = criteria_of(run.cfg)
    for mlabel, mover in arms.model_arms(run.cfg):
        mrun = arms.derive(run, model=mover)
        mctx = {"model_arm": mlabel} if mlabel else {}
        dense = dense_baseline(mrun, f"{mlabel}/" if mlabel else "", mlabel or None, mctx or None)
        trained = {k: v.clone() for k, v in dense.state_dict().items()}
        for plabel, pover in arms.policy_arms(run.cfg):
            prun = arms.derive(mrun, policy=pover, train=ft_train)
            ctx = {**mctx, **({"policy_arm": plabel} if plabel else {})}
            arm = "/".join(x for x in (mlabel, plabel) if x)
            for crit in crits:
                name = "/".join(x for x in (arm, crit if len(crits) > 1 else "") if x) or method.name
                pre = f"{arm}/{crit}" if arm else crit
                for i, density in enumerate(levels(sched)):
                    r, key = i + 1, f"{pre}/r{i + 1}/sparse"
                    if key in run.done:
                        continue
                    model = prun.new_model(run.seed)
                    model.load_state_dict(trained)
                    masks = prun.new_masks(model)
                    planned = prune_to(prun, model, masks, crit, density, ("oneshot", crit, r))
                    p.record_event(run, r, masks, planned, density, method=name, variant="sparse")
                    run.writer.save(f"masks/{pre}/round_{r:02d}.pt", masks.state_dict())
                    _, before = evaluate(model, run.data.test_x, run.data.test_y)
                    prun.train_arm(key, model, masks, r, "sparse", target_density=density, method=name,
                                   steps=int(sched.finetune_steps), extra={"test_acc_before_finetune": float(before)},
                                   row_extra=per_eval, context=ctx or None)
                    _finish(run, model, masks)
    if "small_dense" in method.controls.variants:
        for i, density in enumerate(levels(sched)):
            model = run.new_model(run.seed)
            small_dense_arm(run, i + 1, density, planned_nnz(model, run.new_masks(model), density))


def run_at_init(run: "Run") -> None:
    """Pruning at initialisation: score θ0 with each criterion, keep each level, train θ0 ⊙ m."""
    sched, method = run.cfg.method.schedule, run.cfg.method
    p = _pipeline()
    if sched.get("dense", True):
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
            p.record_event(run, r, masks, planned, density, method=name, variant="sparse")
            run.writer.save(f"masks/{crit}/round_{r:02d}.pt", masks.state_dict())
            run.train_arm(key, model, masks, r, "sparse", target_density=density, method=name)
            _finish(run, model, masks)
    for i, density in enumerate(levels(sched)):
        if "small_dense" in method.controls.variants:
            model = run.new_model(run.seed)
            small_dense_arm(run, i + 1, density, planned_nnz(model, run.new_masks(model), density))


def run_gradual(run: "Run") -> None:
    """Zhu & Gupta gradual pruning: from ``start_step`` every ``every_steps`` until ``end_step`` the
    masks are reset to the cubic schedule's sparsity by the criterion (alive weights only), then
    frozen; one arm per final sparsity, plus matched small-dense controls."""
    sched, method = run.cfg.method.schedule, run.cfg.method
    p = _pipeline()
    if sched.get("dense", True):
        dense_baseline(run)
    crit = method.criterion
    t0, t_end = int(sched.start_step), int(sched.end_step)
    events = set(gradual_events(t0, t_end, int(sched.every_steps)))
    for i, density in enumerate(levels(sched)):
        r, key = i + 1, f"r{i + 1}/sparse"
        s_i, s_f = float(sched.initial_sparsity), 1.0 - density
        model = run.new_model(run.seed)
        masks = run.new_masks(model)
        if key not in run.done:
            def hook(step: int, model: torch.nn.Module, masks: MaskSet, r: int = r, s_f: float = s_f) -> None:
                if step not in events:
                    return
                d = 1.0 - cubic_sparsity(step, s_i, s_f, t0, t_end)
                planned = prune_to(run, model, masks, crit, d, ("gradual", r, step))
                p.record_event(run, r, masks, planned, d, method=method.name, variant="sparse", step=step)

            if 0 in events:
                hook(0, model, masks)
            run.train_arm(key, model, masks, r, "sparse", target_density=density, hooks=[hook], early_stop_from=t_end)
            run.writer.save(f"masks/round_{r:02d}.pt", masks.state_dict())
            _finish(run, model, masks)
        if "small_dense" in method.controls.variants:
            small_dense_arm(run, r, density, planned_nnz(model, masks, density))


RUNNERS = {"oneshot": run_oneshot, "at_init": run_at_init, "gradual": run_gradual}
