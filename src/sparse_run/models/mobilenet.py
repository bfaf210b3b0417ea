"""MobileNetV2 from torchvision (no pretrained weights) with ``width`` as torchvision's ``width_mult``.

The stem convolution is rebuilt for the dataset's channel count and ``stem_stride`` (torchvision:
2, for 224×224 ImageNet; 1 keeps more resolution on 32×32 CIFAR).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from sparse_run.data.spec import DataSpec
from sparse_run.config.errors import ConfigError
from .common import need_image


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
