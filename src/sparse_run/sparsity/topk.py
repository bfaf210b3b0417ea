"""Keeping the top-k scores, per layer or under one global threshold: the primitive every selection uses
(``selection`` for unstructured weights, ``patterns`` for whole blocks)."""
from __future__ import annotations

import math

import torch


def keep_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask keeping exactly the ``k`` highest scores (ties: earliest position wins)."""
    flat = scores.flatten()
    k = max(0, min(int(k), flat.numel()))
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order] = True
    return mask.view_as(scores)


def _masked(scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: scores[n].double().masked_fill(~masks[n], -math.inf) for n in masks}


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


# -- how many weights each layer keeps ------------------------------------------------------
