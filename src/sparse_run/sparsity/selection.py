"""Selection: turn scores into masks with exact counts.

Scope decides how many weights each layer keeps: ``layerwise`` (every layer the same fraction,
or the policy's per-layer rate scales, still meeting the total), ``global`` (one threshold over
all layers), ``erk`` (Erdős–Rényi-kernel: layer density ∝ Σ shape / Π shape, dense layers
capped at 1 and the excess redistributed) or ``percentile`` (one threshold over all layers, numpy's
default percentile of the scores, keeping every score ≥ it: the sparse-RNN thesis' ``PruneRNN``).
Pattern decides the shape of what is pruned: ``unstructured`` here; block / channel / group patterns count
whole blocks (``patterns.select_pattern``, given the method's ``selection``); N:M runs its own selection.

Pruned weights score -inf so a selection never revives them, and ties are broken by position
(stable sort), so masks are deterministic. Counts are integers whose total is exactly
``round(density × numel)`` (when that many weights are still alive), except under ``percentile``,
where the threshold decides (ties at it survive).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from sparse_run.config.errors import ConfigError, choice

from .masks import MaskSet
from .patterns import prune_fraction_pattern, select_pattern
from .topk import _masked, keep_global, keep_top

SCOPES = ("layerwise", "global", "erk", "percentile")
PATTERNS = ("unstructured", "block", "channel", "group")


def prune_fraction(scores: dict[str, torch.Tensor], masks: MaskSet, rate: float,
                   scales: dict[str, float], scope: str, selection: Any = None) -> dict[str, torch.Tensor]:
    """Remove ``rate × scale`` of each layer's *surviving* weights (layerwise), or ``rate`` of all
    surviving weights under one threshold (global). Returns the new masks (iterative pruning).

    ``selection`` (the method's ``selection`` config) dispatches on ``pattern``: block / channel
    patterns count whole blocks (``patterns.py``); ``unstructured`` (default) continues below."""
    if selection is not None and selection.pattern != "unstructured":
        return prune_fraction_pattern(scores, masks, rate, scales, scope, selection)
    s = _masked(scores, masks.masks)
    alive = {n: int(m.sum()) for n, m in masks.masks.items()}
    if scope == "layerwise":
        return {n: keep_top(s[n], alive[n] - round(alive[n] * rate * scales[n])) for n in s}
    total_keep = sum(alive.values()) - round(sum(alive.values()) * rate)
    return keep_global(s, total_keep)


def percentile(values: torch.Tensor, q: float) -> float:
    """``np.percentile(values, q)`` (method ``linear``), computed as numpy does in the values' own dtype: rank
    (N − 1) · q / 100, then its two-sided lerp between the neighbours (so q = 100 gives the maximum exactly)."""
    v = torch.sort(values.flatten()).values
    pos = (v.numel() - 1) * (min(max(float(q), 0.0), 100.0) / 100.0)
    lo = math.floor(pos)
    hi, t = min(lo + 1, v.numel() - 1), pos - lo
    a, b = v[lo], v[hi]
    return float(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)


def keep_percentile(scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                    q: float) -> dict[str, torch.Tensor]:
    """One threshold for all layers: the q-th percentile of the alive scores; keeps every alive score ≥ it
    (ties at the threshold survive, so q = 100 keeps the maximum)."""
    alive = torch.cat([scores[n][masks[n]].flatten() for n in masks])
    if not alive.numel():
        return {n: torch.zeros_like(m) for n, m in masks.items()}
    t = percentile(alive, q)
    return {n: (scores[n] >= t) & masks[n] for n in masks}


def water_fill(sizes: dict[str, int], weights: dict[str, float], total: float) -> dict[str, float]:
    """Real amounts ∝ ``weights`` summing to ``total``, each capped at its size; the excess of a
    capped layer is redistributed over the others (ERK's "dense layers at density 1")."""
    capped: set[str] = set()
    while True:
        free = [n for n in sizes if n not in capped]
        left = total - sum(sizes[n] for n in capped)
        wsum = sum(weights[n] for n in free)
        if left <= 0 or wsum <= 0:
            if left > 1e-9:
                raise ValueError(f"cannot place {total} weights: layers with non-zero weight are full")
            return {n: float(sizes[n]) if n in capped else 0.0 for n in sizes}
        eps = left / wsum
        over = {n for n in free if eps * weights[n] > sizes[n]}
        if not over:
            return {n: float(sizes[n]) if n in capped else eps * weights[n] for n in sizes}
        capped |= over


def integer_counts(real: dict[str, float], total: int, room: dict[str, int]) -> dict[str, int]:
    """Largest-remainder rounding of ``real`` to integers summing exactly to ``total``, never above
    ``room`` (the weights still alive); ties go to the earlier layer."""
    floor = {n: math.floor(v + 1e-9) for n, v in real.items()}
    counts = {n: min(room[n], floor[n]) for n in real}
    left = total - sum(counts.values())
    for n in sorted(real, key=lambda n: floor[n] - real[n]):  # largest remainder first (stable)
        if left > 0 and counts[n] < room[n] and real[n] - floor[n] > 1e-9:
            counts[n] += 1
            left -= 1
    for n in sorted(real, key=lambda n: counts[n] - room[n]):  # only when alive weights cap a layer
        add = max(0, min(left, room[n] - counts[n]))
        counts[n] += add
        left -= add
    return counts


def layer_counts(sizes: dict[str, int], shapes: dict[str, tuple[int, ...]], density: float, scope: str,
                 scales: dict[str, float] | None = None, alive: dict[str, int] | None = None) -> dict[str, int] | None:
    """Weights each layer keeps at overall ``density`` (None for ``global``: one threshold decides)."""
    choice(scope, "method.selection.scope", SCOPES)
    if scope in ("global", "percentile"):
        return None
    alive = alive or dict(sizes)
    total = sum(sizes.values())
    keep = min(round(density * total), sum(alive.values()))
    if scope == "erk":  # keep_l ∝ n_l · Σshape/Πshape = Σshape
        real = water_fill(sizes, {n: float(sum(shapes[n])) for n in sizes}, keep)
    else:  # layerwise: prune_l ∝ n_l · scale_l (uniform density when every scale is 1)
        scales = scales or {}
        pruned = water_fill(sizes, {n: sizes[n] * float(scales.get(n, 1.0)) for n in sizes}, total - keep)
        real = {n: sizes[n] - pruned[n] for n in sizes}
    return integer_counts(real, keep, alive)


def erk_densities(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """ERK per-layer densities (real-valued) meeting ``density`` over all layers."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    real = water_fill(sizes, {n: float(sum(s)) for n, s in shapes.items()}, density * sum(sizes.values()))
    return {n: real[n] / sizes[n] for n in sizes}


def select(scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], density: float, *, scope: str,
           pattern: str = "unstructured", scales: dict[str, float] | None = None,
           selection: Any = None) -> dict[str, torch.Tensor]:
    """New masks keeping the highest-scoring alive weights at overall ``density`` of all weights
    (``selection``: the method's ``selection`` config, which a structured ``pattern`` needs)."""
    choice(pattern, "method.selection.pattern", PATTERNS)
    if pattern != "unstructured":
        if selection is None or selection.pattern != pattern:
            raise ValueError(f"pattern {pattern!r} needs the method's selection config")
        if scales and any(v != 1.0 for v in scales.values()):
            raise ConfigError("method.policy", f"per-layer rate scales with pattern={pattern} are not supported; "
                                               "allowed: last_rate_scale 1 and no rate_scale entries")
        return select_pattern(scores, masks, density, scope, selection, layer_counts)
    s = _masked(scores, masks)
    sizes = {n: m.numel() for n, m in masks.items()}
    alive = {n: int(m.sum()) for n, m in masks.items()}
    if scope == "percentile":  # prune the lowest q % of the alive scores, q set so that ≈ density of all survive
        q = 100.0 * (1.0 - density * sum(sizes.values()) / max(1, sum(alive.values())))
        return keep_percentile(scores, masks, round(q, 9))
    counts = layer_counts(sizes, {n: tuple(m.shape) for n, m in masks.items()}, density, scope, scales, alive)
    if counts is None:
        return keep_global(s, min(round(density * sum(sizes.values())), sum(alive.values())))
    return {n: keep_top(s[n], counts[n]) for n in s}


def targets(masks: dict[str, torch.Tensor], density: float, scope: str,
            scales: dict[str, float] | None = None) -> dict[str, float] | None:
    """Per-layer planned densities for the report (None for ``global`` / ``percentile``)."""
    sizes = {n: m.numel() for n, m in masks.items()}
    alive = {n: int(m.sum()) for n, m in masks.items()}
    counts = layer_counts(sizes, {n: tuple(m.shape) for n, m in masks.items()}, density, scope, scales, alive)
    return None if counts is None else {n: counts[n] / sizes[n] for n in sizes}
