"""Helpers shared by the builders: width scaling and checks on the data spec."""
from __future__ import annotations

from typing import Any

from sparse_run.data.spec import DataSpec
from sparse_run.config.errors import ConfigError


def scaled(n: int, cfg: Any) -> int:
    """``n`` units times ``model.width`` (at least one), for small-dense baselines."""
    return max(1, int(round(n * float(cfg.width))))


def need_image(spec: DataSpec, arch: str, min_side: int = 1) -> tuple[int, int, int]:
    """``(channels, height, width)`` of an image dataset, or a one-line error naming the mismatch."""
    if len(spec.input_shape) != 3 or spec.kind != "image":
        raise ConfigError("model.arch", f"{arch} needs image inputs [C, H, W]; dataset {spec.name} gives "
                          f"{spec.kind} inputs of shape {list(spec.input_shape)}")
    c, h, w = spec.input_shape
    if min(h, w) < min_side:
        raise ConfigError("model.arch", f"{arch} needs images of at least {min_side}×{min_side}; "
                          f"dataset {spec.name} gives {h}×{w}")
    return c, h, w
