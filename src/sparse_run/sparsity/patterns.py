"""Structured selection patterns: masks made of whole blocks, g×1 groups or whole output channels.

A hardware target can only accelerate the pattern it executes: BSR kernels need block-shaped
masks, a physically smaller dense model needs whole output channels removed. Selection here
pools the criterion's scores over each block (mean over the block's surviving entries), keeps
an exact number of *whole blocks* (ties: earliest block wins), and never revives a pruned
weight. Weights are viewed as 2-D ``[out, in·k·k]`` (conv filters flattened), so a ``channel``
is one whole row: a neuron of a Linear layer, a filter of a convolution, and a ``group`` of size g is a
g×1 block: g consecutive output channels at one input / kernel tap (SparseByteNN's fine-grained
group sparsity), which needs g to divide every prunable layer's output channels.

``unstructured`` stays the default and is handled by ``selection.py`` itself; N:M selection is
not implemented here (only the ``is_nm`` check the 2:4 hardware target needs, which uses N:M's
own grouping from ``nm.py``).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from sparse_run.config.errors import ConfigError, choice
from .nm import is_nm as nm_is_nm
from .topk import _masked, keep_global, keep_top

PATTERNS = ("unstructured", "block", "channel", "group", "nm")  # nm: N:M runners (sparsity/nm.py)
DEFAULT_BLOCK = (4, 4)
GROUP_SIZES = (2, 4, 8, 16)


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """The 2-D ``[out, rest]`` view every pattern is defined on."""
    return t.reshape(t.shape[0], -1) if t.ndim != 2 else t


def block_of(sel: Any, shape: tuple[int, ...]) -> tuple[int, int]:
    """Block ``(rows, cols)`` of ``sel.pattern`` for a weight of ``shape`` (channel: one whole row)."""
    if sel.pattern == "channel":
        return 1, math.prod(shape[1:])
    if sel.pattern == "group":
        return int(sel.group), 1
    block = sel.block or DEFAULT_BLOCK  # null: the default block (method.selection.block)
    return int(block[0]), int(block[1])


def validate_method(method: Any) -> None:
    """Pattern fields of ``method`` (selection + the policy constraint ``channel`` adds)."""
    sel = method.selection
    choice(sel.pattern, "method.selection.pattern", PATTERNS)
    if sel.pattern == "block" and sel.block is not None:
        b = list(sel.block)
        if len(b) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in b):
            raise ConfigError("method.selection.block", f"got {b!r}; allowed: [rows, cols] of positive integers")
    if sel.pattern == "group" and sel.group not in GROUP_SIZES:
        raise ConfigError("method.selection.group", f"got {sel.group!r}; allowed: {', '.join(map(str, GROUP_SIZES))}")
    if sel.permute and sel.pattern != "group":
        raise ConfigError("method.selection.permute", f"got true with pattern={sel.pattern}; a channel permutation "
                                                      "packs g×1 groups; allowed: false, or pattern=group")
    if sel.permute and method.policy.prune_last:
        raise ConfigError("method.policy.prune_last", "got true with selection.permute=true; the output layer's rows "
                                                      "are the classes and cannot be permuted; allowed: false")
    if sel.pattern == "channel" and method.policy.prune_last:
        raise ConfigError("method.policy.prune_last", "got true; pattern=channel removes whole output rows and the "
                                                      "last layer's rows are the classes; allowed: false")


def check_shapes(shapes: dict[str, tuple[int, ...]], sel: Any) -> None:
    """Pattern ``group`` needs g to divide every prunable layer's output channels (one-line error otherwise)."""
    if sel is None or sel.pattern != "group":
        return
    g = int(sel.group)
    for name, shape in shapes.items():
        if shape[0] % g:
            raise ConfigError("method.selection.group", f"got {g}; layer {name} has {shape[0]} output channels, not "
                                                        f"a multiple of {g}; allowed: a divisor of every prunable "
                                                        "layer's output channels (or exclude the layer)")


def pool_blocks(scores: torch.Tensor, r: int, c: int) -> torch.Tensor:
    """Mean score over each ``r×c`` block of the 2-D view; ``-inf`` where every entry is pruned.

    Edge blocks (shape not divisible) are smaller and pooled over what they contain.
    """
    s = as_matrix(scores).float()
    alive = torch.isfinite(s)
    vals = torch.where(alive, s, torch.zeros((), device=s.device))
    pad = (0, (-s.shape[1]) % c, 0, (-s.shape[0]) % r)
    total = F.avg_pool2d(F.pad(vals, pad)[None, None], (r, c), divisor_override=1)[0, 0]
    count = F.avg_pool2d(F.pad(alive.float(), pad)[None, None], (r, c), divisor_override=1)[0, 0]
    return torch.where(count > 0, total / count.clamp(min=1), torch.tensor(-math.inf, device=s.device))


def expand_blocks(block_mask: torch.Tensor, r: int, c: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Block-level mask → element mask of ``shape`` (edge blocks cropped)."""
    rows, cols = shape[0], math.prod(shape[1:])
    full = block_mask.repeat_interleave(r, 0).repeat_interleave(c, 1)[:rows, :cols]
    return full.reshape(shape)


def is_block_shaped(mask: torch.Tensor, r: int, c: int) -> bool:
    """Every ``r×c`` block of ``mask`` is all kept or all pruned."""
    m = as_matrix(mask).bool()
    pooled = pool_blocks(torch.where(m, 1.0, -math.inf), r, c)
    return bool(torch.equal(expand_blocks(torch.isfinite(pooled), r, c, tuple(m.shape)), m))


def is_nm(mask: torch.Tensor, n: int, m: int, *, strict: bool = False) -> bool:
    """At most ``n`` kept entries in every group of ``m`` (2:4: n=2, m=4), grouped exactly as N:M
    selection groups them: along a Linear's inputs, along a conv's input channels in NHWC order
    (``nm.is_nm``). Not the flattened ``[out, in·k·k]`` view the block patterns use: an N:M-trained
    conv would fail that check. ``strict``: the grouped axis must also be a multiple of ``m``."""
    return nm_is_nm(mask, n, m, strict=strict)


def prune_fraction_pattern(scores: dict[str, torch.Tensor], masks: Any, rate: float, scales: dict[str, float],
                           scope: str, sel: Any) -> dict[str, torch.Tensor]:
    """``selection.prune_fraction`` in whole blocks: remove ``rate × scale`` of each layer's surviving
    blocks (layerwise) or ``rate`` of all surviving blocks under one threshold (global)."""
    s = _masked(scores, masks.masks)
    shapes = {n: tuple(t.shape) for n, t in s.items()}
    check_shapes(shapes, sel)
    blocks = {n: block_of(sel, shapes[n]) for n in s}
    pooled = {n: pool_blocks(s[n], *blocks[n]) for n in s}
    alive = {n: int(torch.isfinite(p).sum()) for n, p in pooled.items()}
    if scope == "layerwise":
        kept = {n: keep_top(pooled[n], alive[n] - round(alive[n] * rate * scales[n])) for n in s}
    else:
        total = sum(alive.values())
        kept = keep_global(pooled, total - round(total * rate))
    return {n: expand_blocks(kept[n], *blocks[n], shapes[n]) & masks.masks[n] for n in s}


def select_pattern(scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], density: float, scope: str,
                   sel: Any, counts: Any) -> dict[str, torch.Tensor]:
    """``selection.select`` in whole blocks: keep ``density`` of each layer's blocks (layerwise; ``counts`` turns
    block sizes into exact per-layer counts, as for weights) or of all blocks under one threshold (global)."""
    if scope not in ("layerwise", "global"):
        raise ConfigError("method.selection.scope", f"got {scope!r} with pattern={sel.pattern}; allowed: layerwise, "
                                                    "global")
    shapes = {n: tuple(m.shape) for n, m in masks.items()}
    check_shapes(shapes, sel)
    s = _masked(scores, masks)
    blocks = {n: block_of(sel, shapes[n]) for n in s}
    pooled = {n: pool_blocks(s[n], *blocks[n]) for n in s}
    alive = {n: int(torch.isfinite(p).sum()) for n, p in pooled.items()}
    if scope == "global":
        kept = keep_global(pooled, min(round(density * sum(p.numel() for p in pooled.values())), sum(alive.values())))
    else:
        sizes = {n: p.numel() for n, p in pooled.items()}
        per = counts(sizes, {n: tuple(p.shape) for n, p in pooled.items()}, density, scope, None, alive)
        kept = {n: keep_top(pooled[n], per[n]) for n in s}
    return {n: expand_blocks(kept[n], *blocks[n], shapes[n]) & masks[n] for n in s}
