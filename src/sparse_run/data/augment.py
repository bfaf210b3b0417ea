"""Standard CIFAR augmentation (random crop with zero padding + horizontal flip) as batched tensor ops.

Runs on the training device on a whole batch with one gather: no per-sample Python, no host sync.
Randomness comes from a device generator keyed by ``(seed, step)``, so every arm of a run sees the
same augmented batches at the same step and a resumed run continues bit-for-bit without extra
state (the draws differ between CPU and CUDA, as any device RNG does).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class CropFlip:
    """Callable ``(x [B,C,H,W], seed, step) -> x'``: random ``padding``-pixel crop and/or flip.

    ``fill`` is the per-channel value of a black pixel after normalisation, so padding matches the
    usual pipeline that pads raw images before normalising them.
    """

    def __init__(self, padding: int, flip: bool, fill: torch.Tensor):
        self.padding, self.flip, self.fill = int(padding), bool(flip), fill.float().view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor, seed: int, step: int) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.padding
        # drawn on the device itself: no host-to-device copy, so no per-step synchronisation
        dev = x.device
        g = torch.Generator(device=dev).manual_seed((int(seed) * 1_000_003 + int(step)) & 0x7FFF_FFFF_FFFF)
        oy = torch.randint(0, 2 * p + 1, (b,), generator=g, device=dev)
        ox = torch.randint(0, 2 * p + 1, (b,), generator=g, device=dev)
        flip = torch.rand(b, generator=g, device=dev) < 0.5 if self.flip else torch.zeros(b, dtype=torch.bool, device=dev)
        fill = self.fill.to(x.device, x.dtype)
        padded = F.pad(x - fill, (p, p, p, p)) + fill if p else x
        ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        rows = oy[:, None] + ar_h                                            # [B, H]
        cols = torch.where(flip[:, None], w - 1 - ar_w, ar_w) + ox[:, None]  # [B, W]
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def build(cfg: Any, mean: torch.Tensor, std: torch.Tensor) -> CropFlip | None:
    """The ``dataset.augment`` block → a batch transform, or None when it does nothing."""
    from sparse_run.config.errors import ConfigError, number

    if not cfg:
        return None
    padding = number(cfg.crop_padding, "dataset.augment.crop_padding", lo=0, integer=True)
    flip = cfg.hflip
    if not isinstance(flip, bool):
        raise ConfigError("dataset.augment.hflip", f"got {flip!r}; allowed: true, false")
    if not padding and not flip:
        return None
    return CropFlip(padding, flip, (0.0 - mean) / std)
