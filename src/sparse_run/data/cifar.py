"""CIFAR-10 from torchvision's files (``cifar-10-batches-py/`` or the ``cifar-10-python.tar.gz``
archive under the data root), downloaded through torchvision only when ``dataset.download`` is on.

There is no offline source for CIFAR-10; without the files the error says how to get them.

The batches are Python pickles, read with ``pickle.load``: unpickling runs whatever code a file
names, so the files under the data root are trusted input — put only torchvision's / the Toronto
archive's files there (the archive's published MD5 is ``c58f30108f718f92721af3b95e74349a``).
"""
from __future__ import annotations

import pickle
import shutil
import tarfile
from pathlib import Path
from typing import Any

import torch

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def missing_message(root: Path, why: str) -> str:
    return (f"CIFAR-10 not found under {root}{why}; put torchvision's files there ({FOLDER}/ or {ARCHIVE} "
            f"from {URL}), or run once with dataset.download=true where the internet is reachable; "
            "budget=smoke runs on synthetic_cifar10 instead")


def _read(folder: Path) -> dict[str, torch.Tensor]:
    def batch(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        with open(folder / name, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        x = torch.as_tensor(d["data"], dtype=torch.uint8).reshape(-1, 3, 32, 32)
        return x, torch.as_tensor(d["labels"], dtype=torch.long)

    train = [batch(f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = batch("test_batch")
    return {"train_x": torch.cat([x for x, _ in train]), "train_y": torch.cat([y for _, y in train]),
            "test_x": test_x, "test_y": test_y}


def _complete(folder: Path) -> bool:
    return all((folder / n).is_file() for n in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"])


def source(cfg: Any, root: Path) -> dict[str, torch.Tensor]:
    """uint8 ``[N, 3, 32, 32]`` images and int64 labels, standard 50k / 10k split."""
    from .spec import DataMissing

    folder = root / FOLDER
    if not _complete(folder) and (root / ARCHIVE).is_file():
        with tarfile.open(root / ARCHIVE) as tar:
            tar.extractall(root, filter="data")
    if not _complete(folder) and cfg.download:
        try:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(root), train=True, download=True)
        except Exception as e:  # offline: URLError, DNS failure, partial archive …
            shutil.rmtree(folder, ignore_errors=True)
            raise DataMissing("dataset", missing_message(root, f" and the download failed ({type(e).__name__})")) from None
    if not _complete(folder):
        raise DataMissing("dataset", missing_message(root, ""))
    return _read(folder)
