"""Runners for N:M sparsity: ``schedule.kind=nm`` (one method) and ``nm_compare`` (nm_mnist).

Arms (the summary's ``variant``): ``dense`` (round 0), and at round 1 ``oneshot`` (the dense arm of
the same seed, N:M-masked by magnitude, then fine-tuned for the same schedule with the mask fixed:
the ASP recipe), ``ste``, ``srste`` and ``bdwp`` (N:M from scratch on a living dense weight, see
``sparsity/ste.py``). Arms of one seed share the initial weights and the data order (paired).
Every arm records the pattern it applied per layer (``layers.csv``), SAD (``metrics.jsonl``) and
per-phase training FLOPs (``summary.csv``).

Only ``Run.train_arm`` / ``Run.new_model`` / ``Run.new_masks`` / ``Run.writer`` are used.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from sparse_run.config import ConfigError
from sparse_run.engine.run import Run
from sparse_run.engine.train import TrainResult
from sparse_run.sparsity import flops as flops_mod
from sparse_run.sparsity import nm as nm_sel
from sparse_run.sparsity.masks import MaskSet
from sparse_run.sparsity.policy import candidates, prunable
from sparse_run.sparsity.ste import NMTraining
from sparse_run.store.files import load_state

from .base import Method

Pattern = nm_sel.Pattern


@dataclass
class Arm:
    variant: str                 # dense | oneshot | ste | srste | bdwp
    seed: int
    pattern: Pattern | None = None
    decay: float = 0.0

    @property
    def key(self) -> str:
        return f"dense/s{self.seed}" if self.pattern is None else \
            f"{self.variant}/{nm_sel.fmt(self.pattern)}/s{self.seed}"


@dataclass
class LayerRow:
    """A ``layers.csv`` row: ``extra`` carries the N:M columns (pattern applied, partial-group size)."""
    name: str
    numel: int
    nonzeros: int
    target_density: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def density(self) -> float:
        return self.nonzeros / self.numel


def layer_patterns(model: nn.Module, method: Any, default: Pattern) -> dict[str, Pattern]:
    """N:M pattern of every prunable weight: ``default``, then ``selection.overrides`` (glob → "N:M")."""
    out = {name: default for name in prunable(model, method.policy)}
    for glob, value in (method.selection.overrides or {}).items():
        p = nm_sel.parse(value, f"method.selection.overrides.{glob}")
        for name in out:
            if fnmatch.fnmatch(name, glob):
                out[name] = p
    return out


def _label(patterns: dict[str, Pattern]) -> str:
    """The summary's ``pattern``: "2:4", or the distinct per-layer patterns in layer order ("1:8/2:4")."""
    return "/".join(dict.fromkeys(nm_sel.fmt(p) for p in patterns.values()))


def _target(patterns: dict[str, Pattern], masks: MaskSet) -> float:
    kept = sum(nm_sel.keep_count(masks.params[n].shape, *patterns[n]) for n in masks.names())
    return kept / masks.numel()


def _check_groups(masks: MaskSet, patterns: dict[str, Pattern]) -> None:
    """Every complete group of M along the input dim holds exactly N kept weights."""
    for name, (n, m) in patterns.items():
        counts = nm_sel.group_counts(masks.masks[name], m, dim=1)
        if not bool((counts == n).all()):
            raise AssertionError(f"{name}: groups of {m} do not all hold exactly {n} weights")


def _layer_rows(model: nn.Module, method: Any, masks: MaskSet, patterns: dict[str, Pattern]) -> list[LayerRow]:
    rows = []
    for name, p in candidates(model, method.policy).items():
        if name in patterns:
            n, m = patterns[name]
            mask = masks.masks[name]
            rows.append(LayerRow(name, mask.numel(), int(mask.sum()),
                                 nm_sel.keep_count(p.shape, n, m) / p.numel(),
                                 {"pattern": f"{n}:{m}", "nm_tail": nm_sel.tail(p.shape, m)}))
        else:
            rows.append(LayerRow(name, p.numel(), int((p.detach() != 0).sum()), 1.0,
                                 {"pattern": "dense", "nm_tail": 0}))
    return rows


def train_nm_arm(run: Run, arm: Arm, *, save_as: str | None = None) -> None:
    """Build, train and record one arm (skipped when already done)."""
    if arm.key in run.done:
        return
    cfg, t = run.cfg, run.cfg.train
    model = run.new_model(arm.seed)
    masks = run.new_masks(model)  # all ones: nothing is zeroed until an N:M mask is fixed
    costs = flops_mod.layer_macs(model, run.data.spec.input_shape)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    steps, batch = int(t.steps), int(t.batch_size)
    context = {"seed": arm.seed, "pattern": "dense" if arm.pattern is None else None}
    hooks: list[Any] = []
    ctl: NMTraining | None = None
    if arm.pattern is None:
        patterns: dict[str, Pattern] = {}
        target, round_ = 1.0, 0
        flops = flops_mod.arm_flops(costs, shapes, {}, "dense", batch, steps)
    else:
        patterns = layer_patterns(model, cfg.method, arm.pattern)
        context["pattern"] = _label(patterns)
        target, round_ = _target(patterns, masks), 1
        if arm.variant == "oneshot":
            dense = load_state(run.dir / f"checkpoints/dense_s{arm.seed}.pt", keys=("model",))
            model.load_state_dict(dense["model"])
            new = masks.clone_masks()
            for name, (n, m) in patterns.items():
                new[name] = nm_sel.nm_mask(masks.params[name], n, m)
            masks.set(new)  # from here the engine's masking keeps the pruned weights at zero
            flops = flops_mod.arm_flops(costs, shapes, patterns, "oneshot", batch, steps, dense_steps=steps)
        else:
            ctl = NMTraining(model, patterns, arm.variant, arm.decay, final_step=steps)
            hooks.append(ctl)
            flops = flops_mod.arm_flops(costs, shapes, patterns, arm.variant, batch, steps)

    def finish(result: TrainResult) -> dict[str, Any]:
        _check_groups(masks, patterns)
        run.writer.add_layers(round_, _layer_rows(model, cfg.method, masks, patterns),
                              key={"arm": arm.key, "variant": arm.variant, "seed": arm.seed})
        extra: dict[str, Any] = {**flops, "nm_decay": arm.decay if arm.variant in ("srste", "bdwp") else 0.0}
        if ctl is not None:
            extra.update(sad_cum=ctl.sad_cum, sad_late=ctl.late_sad())
            if arm.variant == "bdwp" and ctl.final_bwd is not None:
                diff = sum(int((ctl.final[n] != ctl.final_bwd[n]).sum()) for n in patterns)
                extra["bwd_mask_diff"] = diff / sum(m.numel() for m in ctl.final.values())
        return extra

    run.train_arm(arm.key, model, masks, round_, arm.variant, target_density=target, save_as=save_as,
                  hooks=hooks, row_extra=finish, context=context)


def _decay(cfg: Any, variant: str) -> float:
    return float(cfg.method.schedule.decay) if variant in ("srste", "bdwp") else 0.0


def run_nm(run: Run) -> None:
    """``method=nm``: one N:M arm of ``schedule.variant`` (one-shot also trains its dense arm first)."""
    cfg = run.cfg
    sel, variant = cfg.method.selection, str(cfg.method.schedule.variant)
    pattern = nm_sel.check(sel.n, sel.m, "method.selection.n", "method.selection.m")
    if variant == "oneshot":
        train_nm_arm(run, Arm("dense", run.seed), save_as=f"checkpoints/dense_s{run.seed}.pt")
    train_nm_arm(run, Arm(variant, run.seed, pattern, _decay(cfg, variant)), save_as="checkpoints/final.pt")


def run_nm_compare(run: Run) -> None:
    """``nm_mnist``: dense, then every (pattern × variant) and the BDWP patterns, on paired seeds.

    ``repeats`` seeds (run seed, +1, …) for every arm; ``dense_repeats`` dense seeds for the band.
    ``checkpoints/final.pt`` is the SR-STE arm at the first pattern (2:4 in nm_mnist) of the run seed.
    """
    cfg = run.cfg
    sched = cfg.method.schedule
    seeds = [run.seed + i for i in range(int(sched.repeats))]
    dense_seeds = [run.seed + i for i in range(max(len(seeds), int(sched.dense_repeats)))]
    for s in dense_seeds:
        train_nm_arm(run, Arm("dense", s), save_as=f"checkpoints/dense_s{s}.pt")
    patterns = [nm_sel.parse(p, "method.schedule.patterns") for p in sched.patterns]
    arms = [Arm(v, s, p, _decay(cfg, v)) for s in seeds for p in patterns for v in sched.variants]
    arms += [Arm("bdwp", s, nm_sel.parse(p, "method.schedule.bdwp_patterns"), _decay(cfg, "bdwp"))
             for s in seeds for p in (sched.bdwp_patterns or [])]
    final = next((a.key for a in arms if a.variant == "srste" and a.seed == run.seed), arms[0].key if arms else None)
    for arm in arms:
        train_nm_arm(run, arm, save_as="checkpoints/final.pt" if arm.key == final else None)
    if not arms:
        run.writer.save("checkpoints/final.pt", load_state(run.dir / f"checkpoints/dense_s{run.seed}.pt"))


def validate(cfg: Any) -> None:
    """Config checks of the N:M fields (``method.selection.*``, ``method.schedule.*``), before any work."""
    method = cfg.method
    sel, sched = method.selection, method.schedule
    nm_sel.check(sel.n, sel.m, "method.selection.n", "method.selection.m")
    for glob, value in (sel.overrides or {}).items():
        nm_sel.parse(value, f"method.selection.overrides.{glob}")
    decay = sched.decay
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or decay < 0:
        raise ConfigError("method.schedule.decay", f"got {decay!r}; must be a number >= 0")
    if sched.kind == "nm":
        variant = sched.variant
        if variant not in nm_sel.VARIANTS:
            raise ConfigError("method.schedule.variant", f"got {variant!r}; allowed: {', '.join(nm_sel.VARIANTS)}")
        return
    for key in ("patterns", "bdwp_patterns"):
        for i, value in enumerate(sched[key] or []):
            nm_sel.parse(value, f"method.schedule.{key}[{i}]")
    for v in sched.variants or []:
        if v not in nm_sel.VARIANTS:
            raise ConfigError("method.schedule.variants", f"got {v!r}; allowed: {', '.join(nm_sel.VARIANTS)}")
    for key in ("repeats", "dense_repeats"):
        r = sched[key]
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ConfigError(f"method.schedule.{key}", f"got {r!r}; must be an integer >= 1")


METHOD = Method(kind="nm", run=run_nm, validate=validate, patterns=("nm",), figures="nm")
COMPARE = Method(kind="nm_compare", run=run_nm_compare, validate=validate, patterns=("nm",), figures="nm")
