"""Importance criteria: ``score(ctx) -> {param_name: score tensor}``; higher means keep.

Each criterion is a function of the model, its current masks and (if it needs them) a batch
source, a loss and the selection it will feed, so it can be unit-tested against its paper's
formula on tiny tensors. Criteria never change the model they score: the data-driven ones run in
eval mode on the live model and restore the training flag; SynFlow works on a float64 copy.
Already-pruned weights may get any score: selection gives them -inf and never revives them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .masks import MaskSet
from .schedules import exponential_densities

Scores = dict[str, torch.Tensor]
Masks = dict[str, torch.Tensor]


@dataclass
class ScoreContext:
    model: nn.Module
    masks: MaskSet
    generator: torch.Generator
    batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None  # n -> (x, y)
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    num_classes: int = 10
    input_shape: tuple[int, ...] | None = None  # one example's shape (SynFlow's all-ones input)
    # iterative criteria (SynFlow) select masks themselves on the way to the final density:
    target_density: float | None = None
    select: Callable[[Scores, Masks, float], Masks] | None = None  # (scores, current masks, density) -> masks
    rounds: int = 100
    grasp_temperature: float = 200.0
    examples_per_class: int = 10


Criterion = Callable[[ScoreContext], Scores]


def magnitude(ctx: ScoreContext) -> Scores:
    """|θ| (Han et al.; LTH's IMP; Zhu & Gupta's GMP)."""
    return {n: p.detach().abs() for n, p, _ in ctx.masks}


def random(ctx: ScoreContext) -> Scores:
    """Uniform random scores from the run's generator: the random-pruning control."""
    return {n: torch.rand(p.shape, generator=ctx.generator).to(p.device) for n, p, _ in ctx.masks}


def _batch(ctx: ScoreContext) -> tuple[torch.Tensor, torch.Tensor]:
    if ctx.batches is None:
        raise ValueError("this criterion needs data: ScoreContext.batches is missing")
    return ctx.batches(ctx.examples_per_class * ctx.num_classes)


def _loss(ctx: ScoreContext) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return ctx.loss_fn or F.cross_entropy


def _grads(ctx: ScoreContext, temperature: float = 1.0, create_graph: bool = False) -> list[torch.Tensor]:
    """∂L/∂θ of the prunable weights on the scoring batch (model in eval mode)."""
    x, y = _batch(ctx)
    params = [p for _, p, _ in ctx.masks]
    was = ctx.model.training
    ctx.model.eval()
    try:
        loss = _loss(ctx)(ctx.model(x) / temperature, y)
        return list(torch.autograd.grad(loss, params, create_graph=create_graph))
    finally:
        ctx.model.train(was)


def _normalised(scores: Scores) -> Scores:
    total = sum(float(s.sum()) for s in scores.values())
    return {n: s / total for n, s in scores.items()} if total else scores


def gradient(ctx: ScoreContext) -> Scores:
    """|∂L/∂θ| on 10 × classes examples: a cheap data-driven baseline."""
    grads = _grads(ctx)
    return {n: g.detach().abs() for (n, _, _), g in zip(ctx.masks, grads)}


def snip(ctx: ScoreContext) -> Scores:
    """SNIP (Lee et al. 2019): |g ⊙ θ| on one batch of 10 × classes examples, normalised to sum 1."""
    grads = _grads(ctx)
    return _normalised({n: (g * p).detach().abs() for (n, p, _), g in zip(ctx.masks, grads)})


def grasp(ctx: ScoreContext) -> Scores:
    """GraSP (Wang et al. 2020) as a *keep* score: θ ⊙ Hg, normalised by |Σ θ ⊙ Hg|.

    Sign convention: the paper's removal score is S(−θ) = −θ ⊙ Hg and it removes the weights with
    the *largest* S (whose removal least reduces gradient flow). Higher-is-keep is therefore
    ``θ ⊙ Hg = −S``: we keep the highest θ ⊙ Hg, as in Synaptic-Flow's ``GraSP`` pruner. g and H
    are the gradient and Hessian of the loss at temperature T (logits / T, T = 200); Hg is one
    double backprop of g_stopped · ∇L.
    """
    T = ctx.grasp_temperature
    stopped = [g.detach() for g in _grads(ctx, T)]
    grads = _grads(ctx, T, create_graph=True)
    z = sum((g * s).sum() for g, s in zip(grads, stopped))
    params = [p for _, p, _ in ctx.masks]
    hg = torch.autograd.grad(z, params)
    scores = {n: (p * h).detach() for (n, p, _), h in zip(ctx.masks, hg)}
    norm = abs(sum(float(s.sum()) for s in scores.values())) + 1e-10
    return {n: s / norm for n, s in scores.items()}


def synflow_scores(model: nn.Module, names: list[str], masks: Masks, input_shape: tuple[int, ...]) -> Scores:
    """One SynFlow pass: |θ ⊙ ∂R/∂θ| with R = Σ f(1; |θ| ⊙ m), on a float64 copy in eval mode.

    Every parameter and buffer is replaced by its absolute value (biases and BatchNorm too, so the
    network is linear in each weight's magnitude); BatchNorm then uses its running statistics. The
    caller's model is never modified.
    """
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in list(net.parameters()) + list(net.buffers()):
            if t.is_floating_point():
                t.abs_()
        params = dict(net.named_parameters())
        for n in names:
            params[n].mul_(masks[n].to(params[n].dtype))
    device = next(net.parameters()).device
    R = net(torch.ones((1, *input_shape), dtype=torch.float64, device=device)).sum()
    grads = torch.autograd.grad(R, [params[n] for n in names])
    return {n: (g * params[n]).detach().abs() for n, g in zip(names, grads)}  # float64: products of |θ| overflow float32 in deep nets


def synflow(ctx: ScoreContext) -> Scores:
    """SynFlow (Tanaka et al. 2020): data-free, iterated over ``rounds`` with an exponential schedule.

    Round k = 1 … R scores the network masked by round k − 1 and keeps density d^(k/R) through
    ``ctx.select`` (the run's own scope and pattern). Returned: round R's scores with everything
    pruned in rounds 1 … R − 1 at -inf, so selecting ``target_density`` from them reproduces the
    final round's mask exactly.
    """
    if ctx.target_density is None or ctx.select is None or ctx.input_shape is None:
        raise ValueError("synflow needs ScoreContext.target_density, .select and .input_shape")
    names = ctx.masks.names()
    current = ctx.masks.clone_masks()
    schedule = exponential_densities(float(ctx.target_density), int(ctx.rounds))
    for density in schedule[:-1]:
        current = ctx.select(synflow_scores(ctx.model, names, current, ctx.input_shape), current, density)
    scores = synflow_scores(ctx.model, names, current, ctx.input_shape)
    return {n: scores[n].masked_fill(~current[n], -torch.inf) for n in names}


CRITERIA: dict[str, Criterion] = {
    "magnitude": magnitude,
    "random": random,
    "gradient": gradient,
    "snip": snip,
    "grasp": grasp,
    "synflow": synflow,
}
DATA_FREE = ("magnitude", "random", "synflow")
