"""MobileNets: V2 from torchvision, and a small MobileNet-v1 of our own for the group-sparsity study.

V2 (no pretrained weights) takes ``width`` as torchvision's ``width_mult``; its stem convolution is
rebuilt for the dataset's channel count and ``stem_stride`` (torchvision: 2, for 224×224 ImageNet; 1 keeps
more resolution on 32×32 CIFAR).

The v1 (Howard et al. 2017) is a stem conv and depthwise-separable blocks (3×3 depthwise → BN → ReLU →
1×1 pointwise → BN → ReLU) with ``widths`` as pointwise channels, global average pooling and one Linear
classifier. Its pointwise convs hold most weights and multiply-adds — the layers SparseByteNN and Fast
Sparse ConvNets prune — and it declares ``channel_links`` so their output channels can be permuted.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparse_run.data.spec import DataSpec
from sparse_run.config.errors import ConfigError
from sparse_run.sparsity.permute import ChannelLink
from .common import need_image, scaled


def mobilenet_v2(cfg: Any, spec: DataSpec) -> nn.Module:
    from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

    c, _, _ = need_image(spec, cfg.name, min_side=8)
    stride = int(cfg.stem_stride)
    if stride not in (1, 2):
        raise ConfigError("model.stem_stride", f"got {stride}; allowed: 1, 2")
    model = tv_mobilenet_v2(weights=None, num_classes=spec.num_classes, width_mult=float(cfg.width))
    stem: nn.Conv2d = model.features[0][0]
    if c != stem.in_channels or stride != stem.stride[0]:
        model.features[0][0] = nn.Conv2d(c, stem.out_channels, 3, stride=stride, padding=1, bias=False)
    return model


class SeparableBlock(nn.Module):
    """3×3 depthwise (carries the stride) → BN → ReLU → 1×1 pointwise → BN → ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False)
        self.dw_bn = nn.BatchNorm2d(c_in)
        self.pw = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pw_bn(self.pw(torch.relu(self.dw_bn(self.dw(x))))))


class MobileNetV1(nn.Module):
    """Stem → separable blocks (stride 2 where the width grows, after the first block) → pool → Linear."""

    def __init__(self, in_channels: int, widths: list[int], num_classes: int, stem_stride: int):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, stride=stem_stride, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        self.blocks = nn.ModuleList(
            SeparableBlock(a, b, 2 if i > 0 and b > a else 1) for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])))
        self.out = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.out(x.mean((2, 3)))

    def channel_links(self) -> list[ChannelLink]:
        """Each pointwise conv's channels pass through its BN and the next block's depthwise conv + BN to the
        next pointwise conv (or, after pooling, the classifier); the stem feeds the first block likewise."""
        links = []
        producers = ["stem", *(f"blocks.{i}.pw" for i in range(len(self.blocks)))]
        for i, prod in enumerate(producers):
            bn = "stem_bn" if i == 0 else f"blocks.{i - 1}.pw_bn"
            if i < len(self.blocks):
                links.append(ChannelLink(prod, f"blocks.{i}.pw", (bn, f"blocks.{i}.dw", f"blocks.{i}.dw_bn")))
            else:
                links.append(ChannelLink(prod, "out", (bn,)))
        return links


def mobilenet_v1(cfg: Any, spec: DataSpec) -> nn.Module:
    """``arch: mobilenet_v1`` from ``widths`` (stem, then one block per further entry) and ``stem_stride``."""
    widths = [scaled(int(w), cfg) for w in (cfg.widths or [])]
    if len(widths) < 2:
        raise ConfigError("model.widths", f"got {cfg.widths!r}; allowed: a list of at least two channel counts "
                                          "(the stem's, then each block's)")
    stride = int(cfg.stem_stride or 1)
    if stride not in (1, 2):
        raise ConfigError("model.stem_stride", f"got {stride}; allowed: 1, 2")
    downs = sum(1 for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])) if i > 0 and b > a)
    c, _, _ = need_image(spec, cfg.name, min_side=stride * 2 ** downs)
    return MobileNetV1(c, widths, spec.num_classes, stride)
