"""Synthetic stand-ins of any dataset's shape: ``dataset=synthetic_cifar10`` etc., and what
``budget=smoke`` falls back to when the real files are absent.

Each class is a smooth random prototype (a 4×4 grid of Gaussians upsampled to the input size, so
crops and flips keep it recognisable); an example is its class prototype plus white pixel noise,
scaled and clipped to uint8 like a real image. ``snr`` is the distance between two prototypes in
units of the noise's standard deviation (independent of the input size), so the classes overlap
a little: learnable within a few hundred steps, not solved at the first one. Everything is drawn from
``dataset.synthetic.seed``, never from the run seed, so all runs see the same data.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def generate(cfg: Any) -> dict[str, torch.Tensor]:
    from omegaconf import OmegaConf

    from sparse_run.config.errors import ConfigError, number
    from sparse_run.config.schema import SyntheticConfig

    s = cfg.synthetic or OmegaConf.structured(SyntheticConfig)
    shape = tuple(int(d) for d in cfg.shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ConfigError("dataset.shape", f"got {list(shape)}; allowed: [C, H, W] images or [T, F] sequences")
    n_train = number(s.train_size, "dataset.synthetic.train_size", lo=1, integer=True)
    n_test = number(s.test_size, "dataset.synthetic.test_size", lo=1, integer=True)
    snr = number(s.snr, "dataset.synthetic.snr", lo=0)
    k = int(cfg.num_classes)
    g = torch.Generator().manual_seed(int(s.seed))
    planes = shape if len(shape) == 3 else (1, *shape)
    coarse = torch.randn(k, planes[0], 4, 4, generator=g)
    protos = F.interpolate(coarse, size=planes[1:], mode="bilinear", align_corners=False)
    protos = protos - protos.mean(0, keepdim=True)  # classes differ only in their prototype
    dist = torch.cdist(protos.flatten(1), protos.flatten(1)).sum() / max(1, k * (k - 1))
    protos = protos * (snr / dist.clamp(min=1e-12))  # mean pairwise distance = snr noise std

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, k, (n,), generator=g)
        x = protos[y] + torch.randn((n, *planes), generator=g)
        x = (128 + 40 * x).round().clamp(0, 255).to(torch.uint8)  # ±3.2 std fit in 0…255
        return x.view(n, *shape), y

    train_x, train_y = draw(int(n_train))
    test_x, test_y = draw(int(n_test))
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
