"""Dynamic sparse training's mask update (SET, RigL, sparse momentum): drop the weakest active weights, grow as
many inactive ones, keep each layer's count fixed. Pure tensor functions; the schedule kind that calls them
every ΔT steps is ``methods.dynamic``.

Conventions, as google-research/rigl: the drop fraction follows a cosine decay to zero at ``t_end``; k =
round(ζ_t · n_active) per layer; drop among active weights by smallest |w|, grow among the weights inactive after
the drop (so a weight dropped at an update may be regrown at once) by the largest grow score; a *newly* grown
weight (inactive before the update) starts at exactly zero with zero optimizer state, a regrown one keeps its
value. Ties are broken by tiny noise from a generator keyed on (seed, layer name, step) through SHA-256 —
never Python's ``hash()``, which differs between processes.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from sparse_run.config import ConfigError, number

from .selection import integer_counts, water_fill


def drop_fraction(step: int, zeta0: float, t_end: int) -> float:
    """ζ_t = ζ0 / 2 · (1 + cos(π t / T_end)) for t < T_end, else 0 (no more updates)."""
    number(zeta0, "method.schedule.zeta0", lo=0, lo_open=True, hi=1)
    if t_end < 1:
        raise ConfigError("method.schedule.t_end", f"got {t_end}; at least 1 step")
    if step >= t_end:
        return 0.0
    return zeta0 / 2 * (1 + math.cos(math.pi * step / t_end))


def is_update_step(step: int, delta_t: int, t_end: int) -> bool:
    """Updates happen at every ΔT-th step after the first and before T_end."""
    if delta_t < 1:
        raise ConfigError("method.schedule.delta_t", f"got {delta_t}; at least 1 step")
    return 0 < step < t_end and step % delta_t == 0


def generator(seed: int, name: str, step: int) -> torch.Generator:
    """A CPU generator seeded by (seed, layer name, step), the same in every process."""
    digest = hashlib.sha256(f"{seed}/{name}/{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


@dataclass(frozen=True)
class Update:
    """One layer's update: the new mask, the weights newly grown (to zero with their state) and the count moved."""

    mask: torch.Tensor
    grown: torch.Tensor
    swapped: int


def _noise(shape: torch.Size, gen: torch.Generator, scale: float) -> torch.Tensor:
    return torch.rand(shape, generator=gen) * scale


def drop_count(mask: torch.Tensor, fraction: float) -> int:
    """k = round(fraction · active): the weights one layer drops at an update."""
    active = int(mask.sum())
    return min(round(fraction * active), active)


def drop_grow(weight: torch.Tensor, mask: torch.Tensor, grow_scores: torch.Tensor, fraction: float,
              gen: torch.Generator, n_grow: int | None = None) -> Update:
    """Drop k = round(fraction · active) smallest-|w| active weights and grow ``n_grow`` (default k: the active
    count is unchanged) highest-score weights among those inactive after the drop (sparse momentum moves counts
    between layers, so there ``n_grow`` differs from k; it is capped at the candidates there are)."""
    mask = mask.bool()
    k = drop_count(mask, fraction)
    n_grow = k if n_grow is None else min(n_grow, mask.numel() - int(mask.sum()) + k)
    if k <= 0 and n_grow <= 0:
        return Update(mask.clone(), torch.zeros_like(mask), 0)
    w, s = weight.detach().abs().flatten().float().cpu(), grow_scores.detach().abs().flatten().float().cpu()
    flat = mask.flatten().cpu()
    eps = 1e-12 * (float(w.max()) + float(s.max()) + 1.0)  # breaks ties only
    keep_score = torch.where(flat, w + _noise(w.shape, gen, eps), torch.full_like(w, math.inf))
    drop = torch.topk(keep_score, k, largest=False).indices
    after = flat.clone()
    after[drop] = False
    grow_score = torch.where(after, torch.full_like(s, -math.inf), s + _noise(s.shape, gen, eps))
    grow = torch.topk(grow_score, n_grow, largest=True).indices
    new = after.clone()
    new[grow] = True
    grown = new & ~flat
    return Update(new.view_as(mask).to(mask.device), grown.view_as(mask).to(mask.device), int(grown.sum()))


def regrow_counts(momenta: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], dropped: dict[str, int]
                  ) -> dict[str, int]:
    """Sparse momentum's redistribution: the Σ dropped weights are regrown across layers in proportion to each
    layer's mean |momentum| over its active weights, never more than a layer has room for (its size minus its
    active weights after the drop); the counts sum exactly to what was dropped."""
    total = sum(dropped.values())
    room = {n: m.numel() - int(m.sum()) + dropped[n] for n, m in masks.items()}
    means = {n: float(momenta[n].abs()[masks[n].bool()].mean()) if bool(masks[n].any()) else 0.0 for n in masks}
    if sum(means.values()) <= 0:
        return dict(dropped)
    real = water_fill({n: room[n] for n in masks}, means, float(total))
    return integer_counts(real, total, room)


def zero_grown(param: torch.Tensor, grown: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    """Newly grown weights start at exactly zero, and so does every optimizer state tensor of their shape
    (SGD's momentum buffer; Adam's first and second moments)."""
    with torch.no_grad():
        param.masked_fill_(grown, 0.0)
        for value in optimizer.state.get(param, {}).values():
            if torch.is_tensor(value) and value.shape == param.shape:
                value.masked_fill_(grown, 0.0)


def itop_rate(union: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, float]:
    """In-time over-parameterisation: the union of every mask so far, and R_s = |∪ mask_t| / N."""
    union = union | mask.bool()
    return union, float(union.sum()) / union.numel()
