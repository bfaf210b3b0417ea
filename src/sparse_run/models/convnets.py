"""Plain conv nets: LeNet-5, the Lottery Ticket paper's Conv-2/4/6, and CIFAR VGG-11/16/19.

Parameter names are stable so layer policies can address them by glob: ``convs.*`` / ``fc.*`` /
``out.weight`` for LeNet-5 and Conv-N, ``features.*`` / ``out.weight`` for VGG.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparse_run.data.spec import DataSpec
from sparse_run.config.errors import ConfigError
from sparse_run.sparsity.permute import ChannelLink
from .common import need_image, scaled


class ConvFC(nn.Module):
    """Blocks of 3×3 (or k×k) convolutions, each block followed by 2×2 max-pooling, then ReLU fc layers.

    ``blocks`` lists the channels of each block's convolutions, e.g. Conv-4 is ``[[64, 64], [128, 128]]``.
    ``padding='same'`` keeps the spatial size inside a block (LTH's Conv-N); ``0`` is LeNet-5's 'valid'.
    """

    def __init__(self, in_shape: tuple[int, int, int], blocks: list[list[int]], hidden: list[int],
                 num_classes: int, kernel: int, padding: int | str):
        super().__init__()
        c, h, w = in_shape
        convs: list[nn.Conv2d] = []
        self.pool_after: list[bool] = []
        for block in blocks:
            for i, out_c in enumerate(block):
                convs.append(nn.Conv2d(c, out_c, kernel, padding=padding))
                if padding != "same":
                    h, w = h - kernel + 1 + 2 * int(padding), w - kernel + 1 + 2 * int(padding)
                self.pool_after.append(i == len(block) - 1)
                c = out_c
            h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise ConfigError("model.blocks", f"{len(blocks)} pooled blocks shrink the input "
                                  f"{list(in_shape)} below 1×1; use fewer blocks or larger inputs")
        self.convs = nn.ModuleList(convs)
        self.flat_spatial = h * w  # inputs of the first fc layer per channel of the last conv
        sizes = [c * h * w, *hidden]
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(sizes[-1], num_classes)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, pool in zip(self.convs, self.pool_after):
            x = torch.relu(conv(x))
            if pool:
                x = self.pool(x)
        x = x.flatten(1)
        for layer in self.fc:
            x = torch.relu(layer(x))
        return self.out(x)

    def channel_links(self) -> list[ChannelLink]:
        """Conv channels go to the next conv (ReLU and max-pooling act per channel) or, flattened, to the first
        fc layer; fc units to the next fc layer or the output layer."""
        convs = [f"convs.{i}" for i in range(len(self.convs))]
        fcs = [f"fc.{i}" for i in range(len(self.fc))] + ["out"]
        links = [ChannelLink(a, b) for a, b in zip(convs[:-1], convs[1:])]
        links.append(ChannelLink(convs[-1], fcs[0], spatial=self.flat_spatial))
        return links + [ChannelLink(a, b) for a, b in zip(fcs[:-1], fcs[1:])]


def convfc(cfg: Any, spec: DataSpec) -> nn.Module:
    """``arch: convfc``: LeNet-5 and Conv-2/4/6 from ``blocks``, ``hidden``, ``kernel``, ``padding``."""
    shape = need_image(spec, cfg.name)
    blocks = [[scaled(c, cfg) for c in block] for block in cfg.blocks]
    hidden = [scaled(h, cfg) for h in cfg.hidden]
    padding = cfg.padding
    if padding != "same" and not (isinstance(padding, int) and padding >= 0):
        raise ConfigError("model.padding", f"got {padding!r}; allowed: same, or an integer >= 0")
    return ConvFC(shape, blocks, hidden, spec.num_classes, int(cfg.kernel), padding)


VGG_PLANS = {  # CIFAR VGG (as in open_lth): 3×3 conv-BN-ReLU, 'M' = 2×2 max-pool, no pool at the end
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class VGG(nn.Module):
    """CIFAR VGG: conv-BN-ReLU stacks, global average pooling, one linear classifier (512 → classes)."""

    def __init__(self, in_channels: int, plan: list[Any], num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in plan:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.out = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x).mean((2, 3)))


def vgg(cfg: Any, spec: DataSpec) -> nn.Module:
    """``arch: vgg`` with ``depth`` 11 / 16 / 19."""
    if cfg.depth not in VGG_PLANS:
        raise ConfigError("model.depth", f"got {cfg.depth!r}; allowed: {', '.join(map(str, VGG_PLANS))}")
    plan = VGG_PLANS[cfg.depth]
    c, h, w = need_image(spec, cfg.name, min_side=2 ** plan.count("M"))
    return VGG(c, [v if v == "M" else scaled(v, cfg) for v in plan], spec.num_classes)
