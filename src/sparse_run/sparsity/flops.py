"""Analytic training FLOPs per phase for dense, N:M (forward-only) and BDWP training.

Each Linear / Conv layer runs three GEMMs per training step with the same MAC count B·P·|W|
(batch B, output positions P, weights |W|): forward Y = X·W̃ᵀ, backward-data dX = dY·W and
weight-gradient dW = dYᵀ·X. An N:M pattern along a GEMM's reduction dimension cuts that GEMM's
MACs to the kept fraction (N/M):

- ``dense``: 1, 1, 1;
- ``ste`` / ``srste`` / ``oneshot`` (mask along the input dim): forward N/M; backward-data stays
  dense (its reduction runs over outputs, where W ⊙ E has no N:M structure); weight gradient dense;
- ``bdwp``: forward N/M, backward-data N/M (the separate mask along the output dim), weight
  gradient dense — (N/M + N/M + 1)/3 of dense per layer, 0.5 at 2:8 (BDWP paper). BDWP's backward
  mask keeps at most N of every M (it re-prunes the forward-sparse weights): executed as N:M, N/M.

The first layer's backward-data GEMM is not counted: its input is the data, which needs no
gradient, and autograd skips it. Layers left dense by the policy count as dense. Mask selection
and elementwise work are not counted. FLOPs = 2 × MACs. ``train_flops_ratio`` divides every arm's
total by the same number: the dense arm's (``train.steps`` of dense training).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .nm import Pattern, keep_count

PHASES = ("flops_fwd", "flops_bwd_data", "flops_wgrad")
FORWARD_SPARSE = ("ste", "srste", "oneshot")


@dataclass
class LayerCost:
    name: str
    macs: int           # per example, dense forward GEMM
    fwd: float = 1.0    # fraction of the forward GEMM executed
    bwd_data: float = 1.0
    input_grad: bool = True


def layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerCost]:
    """Per-example MACs of every Linear / Conv weight, in execution order (one forward of one example); a model
    that is no stack of GEMMs states its own (``layer_costs()``: matrix factorisation's embedding tables)."""
    if hasattr(model, "layer_costs"):
        return [LayerCost(name, int(macs)) for name, macs in model.layer_costs().items()]
    costs: list[LayerCost] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(mod: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        positions = out.numel() // mod.weight.shape[0]
        prefix = names[mod]
        costs.append(LayerCost(f"{prefix}.weight" if prefix else "weight", mod.weight.numel() * positions))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
    if costs:
        costs[0].input_grad = False
    return costs


def with_pattern(costs: list[LayerCost], shapes: dict[str, torch.Size], patterns: dict[str, Pattern],
                 variant: str) -> list[LayerCost]:
    """Set each N:M layer's executed fractions for ``variant`` (exact kept counts, tails included)."""
    out = []
    for c in costs:
        c = LayerCost(c.name, c.macs, 1.0, 1.0, c.input_grad)
        if c.name in patterns and variant != "dense":
            n, m = patterns[c.name]
            shape, numel = shapes[c.name], shapes[c.name].numel()
            c.fwd = keep_count(shape, n, m, dim=1) / numel
            if variant == "bdwp":
                c.bwd_data = keep_count(shape, n, m, dim=0) / numel
            elif variant not in FORWARD_SPARSE:
                raise ValueError(f"unknown variant {variant!r}")
        out.append(c)
    return out


def phase_flops(costs: list[LayerCost], batch: int, steps: int) -> dict[str, float]:
    """Total training FLOPs per phase over ``steps`` steps of ``batch`` examples."""
    k = 2.0 * batch * steps
    return {"flops_fwd": k * sum(c.macs * c.fwd for c in costs),
            "flops_bwd_data": k * sum(c.macs * c.bwd_data for c in costs if c.input_grad),
            "flops_wgrad": k * sum(c.macs for c in costs)}


def arm_flops(costs: list[LayerCost], shapes: dict[str, torch.Size], patterns: dict[str, Pattern], variant: str,
              batch: int, steps: int, dense_steps: int = 0) -> dict[str, float]:
    """Phase totals of one arm — ``dense_steps`` of dense training (one-shot's pre-training) then
    ``steps`` under ``variant`` — and ``train_flops_ratio``: that total over the dense arm, i.e. dense
    training for ``steps`` steps. One denominator for every arm, so one-shot's pre-training counts as
    cost (2:4 one-shot + fine-tune ≈ 1.8× dense) instead of being divided away by a longer reference."""
    sparse = phase_flops(with_pattern(costs, shapes, patterns, variant), batch, steps)
    dense_pre = phase_flops(costs, batch, dense_steps)
    total = {k: sparse[k] + dense_pre[k] for k in PHASES}
    ref = phase_flops(costs, batch, steps)
    total["train_flops_ratio"] = sum(total[k] for k in PHASES) / sum(ref[k] for k in PHASES)
    return total


def timeline_flops(costs: list[LayerCost], events: list[tuple[int, dict[str, float]]], batch: int, steps: int,
                   dense_wgrad: str = "never", updates: int = 0) -> float:
    """Training FLOPs of an unstructured sparse arm whose layer densities change over time.

    ``events``: (step, {layer: density}) from which step on each layer runs at that density (layers never
    named, and every layer before its first event, are dense). Each GEMM's MACs scale with the layer's density
    (RigL's accounting: forward, backward-data and weight gradient of a sparse layer all run sparse), except
    the weight gradient when it must be dense: on ``updates`` steps (``dense_wgrad="updates"``: RigL's grow
    score) or on every step (``"every"``: sparse momentum's dense-gradient average).
    """
    current = {c.name: 1.0 for c in costs}
    marks = sorted(events, key=lambda e: e[0]) + [(steps, {})]
    total, prev = 0.0, 0

    def per_step(wgrad_dense: bool) -> float:
        return 2.0 * batch * sum(c.macs * (current[c.name] * (1 + c.input_grad)
                                           + (1.0 if wgrad_dense else current[c.name])) for c in costs)

    for step, dens in marks:
        step = min(max(step, 0), steps)
        total += (step - prev) * per_step(dense_wgrad == "every")
        prev = step
        current.update({n: float(d) for n, d in dens.items() if n in current})
    if dense_wgrad == "updates":
        total += updates * 2.0 * batch * sum(c.macs * (1.0 - current[c.name]) for c in costs)
    return total


def dense_train_flops(costs: list[LayerCost], batch: int, steps: int) -> float:
    """Training FLOPs of dense training for ``steps`` steps (the denominator of every ``train_flops_ratio``)."""
    return sum(phase_flops(costs, batch, steps).values())
