"""Datasets as device-resident tensors (config group ``dataset/``): MNIST / Fashion-MNIST / CIFAR-10 sources,
synthetic stand-ins, Reber strings and batched on-device augmentation; ``sources`` is the one entry point.

Imports ``store`` and ``config`` only. ``python -m sparse_run.data`` fetches and prepares MNIST.
"""
from .sources import load, prepare, stand_in, with_fallback
from .spec import DataBundle, DataMissing, DataSpec

__all__ = ["DataBundle", "DataMissing", "DataSpec", "load", "prepare", "stand_in", "with_fallback"]
