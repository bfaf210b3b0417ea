"""Importance criteria: ``score(ctx) -> {param_name: score tensor}``; higher means keep.

Each criterion is a pure function of the model, its current masks and (if it needs data) a
batch source, so it can be unit-tested against its paper's formula on tiny tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .masks import MaskSet


@dataclass
class ScoreContext:
    model: nn.Module
    masks: MaskSet
    generator: torch.Generator
    batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None  # n -> (x, y)
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


Criterion = Callable[[ScoreContext], dict[str, torch.Tensor]]


def magnitude(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """|θ| (Han et al.; LTH's IMP)."""
    return {n: p.detach().abs() for n, p, _ in ctx.masks}


def random(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """Uniform random scores from the run's generator: the random-pruning control."""
    return {n: torch.rand(p.shape, generator=ctx.generator).to(p.device) for n, p, _ in ctx.masks}


CRITERIA: dict[str, Criterion] = {
    "magnitude": magnitude,
    "random": random,
}
