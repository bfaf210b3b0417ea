"""Selection: turn scores into masks with exact counts.

Scope decides how many weights each layer keeps (``layerwise``: each layer its own fraction;
``global``: one threshold over all layers). Pruned weights score -inf so a selection never
revives them, and ties are broken by position (stable sort), so masks are deterministic.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .masks import MaskSet

SCOPES = ("layerwise", "global")


def keep_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask keeping exactly the ``k`` highest scores (ties: earliest position wins)."""
    flat = scores.flatten()
    k = max(0, min(int(k), flat.numel()))
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order] = True
    return mask.view_as(scores)


def _masked(scores: dict[str, torch.Tensor], masks: MaskSet) -> dict[str, torch.Tensor]:
    return {n: torch.where(masks.masks[n], scores[n].float(), torch.tensor(-math.inf, device=scores[n].device))
            for n in masks.names()}


def prune_fraction(scores: dict[str, torch.Tensor], masks: MaskSet, rate: float,
                   scales: dict[str, float], scope: str, selection: Any = None) -> dict[str, torch.Tensor]:
    """Remove ``rate × scale`` of each layer's *surviving* weights (layerwise), or ``rate`` of all
    surviving weights under one threshold (global). Returns the new masks.

    ``selection`` (the method's ``selection`` config) dispatches on ``pattern``: block / channel
    patterns count whole blocks (``patterns.py``); ``unstructured`` (default) continues below."""
    if selection is not None and selection.get("pattern", "unstructured") != "unstructured":
        from .patterns import prune_fraction_pattern

        return prune_fraction_pattern(scores, masks, rate, scales, scope, selection)
    s = _masked(scores, masks)
    alive = {n: int(m.sum()) for n, m in masks.masks.items()}
    if scope == "layerwise":
        return {n: keep_top(s[n], alive[n] - round(alive[n] * rate * scales[n])) for n in s}
    total_keep = sum(alive.values()) - round(sum(alive.values()) * rate)
    return keep_global(s, total_keep)


def keep_global(scores: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Keep the ``k`` highest scores across all layers (exact count)."""
    names = list(scores)
    flat = torch.cat([scores[n].flatten() for n in names])
    kept = keep_top(flat, k)
    out, i = {}, 0
    for n in names:
        numel = scores[n].numel()
        out[n] = kept[i:i + numel].view_as(scores[n])
        i += numel
    return out
