"""What a model needs to know about the data (``DataSpec``), the loaded tensors (``DataBundle``) and the
error for a dataset that is not on disk (``DataMissing``); the sources import these, never the other way."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sparse_run.config import ConfigError


@dataclass
class DataSpec:
    """What a model needs to know about the data."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    kind: str = "image"            # image [C,H,W] | sequence [T,F] | tokens [T] (int ids, 0 = pad) | interactions [2]
    vocab_size: int | None = None  # tokens only: number of ids including the pad id 0
    num_users: int | None = None   # interactions only: (user, item) id pairs
    num_items: int | None = None


@dataclass
class DataBundle:
    """Train / validation / test tensors on one device, already normalised."""

    spec: DataSpec
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    # batched training-time transform ``(x, seed, step) -> x`` (dataset.augment); None = off
    augment: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None

    def to(self, device: torch.device | str) -> "DataBundle":
        moved = {k: getattr(self, k).to(device) for k in
                 ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return DataBundle(spec=self.spec, augment=self.augment, **moved)


class DataMissing(ConfigError):
    """The dataset is not on disk and could not be fetched."""
