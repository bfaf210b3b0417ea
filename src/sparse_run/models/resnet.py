"""CIFAR ResNets (He et al. 2016, §4.2): 6n+2 layers in three stages of 16 / 32 / 64 channels.

Shortcuts that change shape are 1×1 conv + BN projections, as in open_lth and the Lottery Ticket
paper's "ResNet-18" (whose 271K weights this matches for n = 3, i.e. ResNet-20).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparse_run.data.spec import DataSpec
from sparse_run.config.errors import ConfigError
from .common import need_image, scaled


class Block(nn.Module):
    """Basic residual block: conv-BN-ReLU-conv-BN plus shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, in_channels: int, n: int, widths: list[int], num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        blocks: list[nn.Module] = []
        c = widths[0]
        for stage, w in enumerate(widths):
            for i in range(n):
                blocks.append(Block(c, w, 2 if stage > 0 and i == 0 else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.out(x.mean((2, 3)))


def resnet(cfg: Any, spec: DataSpec) -> nn.Module:
    """``arch: resnet`` with ``depth`` = 6n + 2 (20, 32, 44, 56, 110)."""
    depth = int(cfg.depth)
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError("model.depth", f"got {cfg.depth!r}; allowed: 6n+2 for n >= 1 (20, 32, 44, 56, 110)")
    c, _, _ = need_image(spec, cfg.name, min_side=4)
    widths = [scaled(w, cfg) for w in cfg.widths]
    return CifarResNet(c, (depth - 2) // 6, widths, spec.num_classes)
