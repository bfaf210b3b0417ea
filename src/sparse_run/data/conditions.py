"""Training-data conditions of the Lazy Neuron study (Li et al. 2023, ``../shared/papers.md`` §12): the same data
bundle with its *training* split altered, the validation and test splits left clean (they measure what was learned).

- ``clean``: unchanged;
- ``random_labels``: every training label drawn uniformly from the classes (nothing to generalise; the network can
  only memorise);
- ``noise_inputs``: every training input replaced by i.i.d. standard-normal values of the same shape (the inputs are
  normalised, so this is noise at the data's own scale), labels kept;
- ``label_noise``: symmetric label noise — exactly ``round(p · n)`` training examples, chosen at random, get a label
  drawn uniformly from the *other* classes, so exactly that share is wrong and every wrong class is equally likely.

Everything is drawn from a generator seeded by the caller, so a condition is the same for every arm of a seed.
"""
from __future__ import annotations

import dataclasses

import torch

from sparse_run.config import choice, number

from .spec import DataBundle

CONDITIONS = ("clean", "random_labels", "noise_inputs", "label_noise")


def apply_condition(data: DataBundle, condition: str, seed: int, label_noise: float = 0.4,
                    field: str = "condition") -> DataBundle:
    """``data`` with its training split under ``condition`` (the other splits are the same tensors)."""
    choice(condition, field, CONDITIONS)
    if condition == "clean":
        return data
    if data.spec.kind not in ("image", "sequence"):
        raise ValueError(f"{field}: {condition} needs class labels of image or sequence data, got {data.spec.kind}")
    gen = torch.Generator().manual_seed(int(seed))
    x, y, classes = data.train_x, data.train_y, int(data.spec.num_classes)
    if condition == "random_labels":
        y = torch.randint(0, classes, y.shape, generator=gen).to(y)
    elif condition == "noise_inputs":
        x = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    else:
        number(label_noise, "label_noise", lo=0, hi=1)
        n = y.shape[0]
        flip = torch.randperm(n, generator=gen)[:int(round(float(label_noise) * n))].to(y.device)
        shift = torch.randint(1, classes, (flip.numel(),), generator=gen).to(y)
        y = y.clone()
        y[flip] = (y[flip] + shift) % classes
    return dataclasses.replace(data, train_x=x, train_y=y)
