"""Activation functions as modules, so that an activation-sparsity probe can hook them (Li et al. 2023, the Lazy
Neuron phenomenon; ``../shared/papers.md`` §12).

``TopK(k)`` keeps the k largest post-ReLU activations of every token along the hidden dimension and zeroes the rest
— per token, not a threshold over the batch — and passes gradient through the kept entries only (the output is the
input times a 0/1 mask chosen without gradient). ``activation(name, k, width)`` builds one with a one-line error for
a k that is not in [1, width).
"""
from __future__ import annotations

import torch
from torch import nn

from sparse_run.config import ConfigError, choice, number

ACTIVATIONS = ("relu", "gelu", "topk")


class TopK(nn.Module):
    """ReLU, then the k largest entries of each row along the last dimension (ties: the earliest index)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = int(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        with torch.no_grad():
            idx = torch.topk(x, self.k, dim=-1, sorted=False).indices
            mask = torch.zeros_like(x).scatter_(-1, idx, 1.0)
        return x * mask

    def extra_repr(self) -> str:
        return f"k={self.k}"


def activation(name: str, k: int | None = None, width: int | None = None, field: str = "model.activation") -> nn.Module:
    """``relu`` | ``gelu`` | ``topk`` (``k`` of the ``width`` hidden units kept per token)."""
    choice(name, field, ACTIVATIONS)
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    if k is None or width is None:
        raise ConfigError(f"{field}_k", "topk needs k (the activations kept per token)")
    number(k, f"{field}_k", lo=1, hi=int(width) - 1, integer=True)
    return TopK(int(k))
