"""Recurrent classifiers: (embedding →) stacked tanh / ReLU RNN, GRU or LSTM → linear on the last step.

Inputs either are float sequences ``[N, T, F]`` (sequential MNIST: 28 rows as 28 steps) or token
ids ``[N, T]`` right-padded with 0 (Reber strings). For tokens the model reads each sequence's
output at its own last non-pad step with one gather, so the training loop stays agnostic of
lengths. The recurrent weights are ``rnn.weight_ih_l{k}`` (input-to-hidden) and
``rnn.weight_hh_l{k}`` (hidden-to-hidden), which the ``rnn`` layer type of the sparsity policy
selects.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparse_run.data.spec import DataSpec
from sparse_run.config.errors import ConfigError
from .common import scaled

CELLS = ("tanh", "relu", "gru", "lstm")
PAD = 0  # token id reserved for padding


class RNNClassifier(nn.Module):
    def __init__(self, cell: str, input_size: int, hidden: int, layers: int, num_classes: int,
                 vocab_size: int | None = None, embedding: int | None = None):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding, padding_idx=PAD) if vocab_size else None
        kwargs = dict(input_size=embedding if vocab_size else input_size, hidden_size=hidden,
                      num_layers=layers, batch_first=True)
        if cell in ("tanh", "relu"):
            self.rnn: nn.RNNBase = nn.RNN(nonlinearity=cell, **kwargs)
        else:
            self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(**kwargs)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed is None:
            y, _ = self.rnn(x)
            return self.out(y[:, -1])
        last = (x != PAD).sum(1).clamp(min=1) - 1  # right-padded: index of each last real token
        y, _ = self.rnn(self.embed(x[:, :int(last.max()) + 1]))  # steps after every string's end change nothing
        return self.out(y[torch.arange(y.shape[0], device=y.device), last])


def rnn(cfg: Any, spec: DataSpec) -> nn.Module:
    """``arch: rnn`` with ``cell``, ``layers``, ``hidden`` and (for token data) ``embedding``."""
    if cfg.cell not in CELLS:
        raise ConfigError("model.cell", f"got {cfg.cell!r}; allowed: {', '.join(CELLS)}")
    if int(cfg.layers) < 1:
        raise ConfigError("model.layers", f"got {cfg.layers!r}; must be >= 1")
    hidden = scaled(int(cfg.hidden), cfg)
    if spec.kind == "tokens":
        if not cfg.embedding:
            raise ConfigError("model.embedding", f"dataset {spec.name} gives token ids; set an embedding size, e.g. 50")
        return RNNClassifier(cfg.cell, 0, hidden, int(cfg.layers), spec.num_classes,
                             vocab_size=spec.vocab_size, embedding=int(cfg.embedding))
    if spec.kind != "sequence" or len(spec.input_shape) != 2:
        raise ConfigError("model.arch", f"rnn needs sequences [T, F] or token ids; dataset {spec.name} gives "
                          f"{spec.kind} inputs of shape {list(spec.input_shape)} (try dataset=seq_mnist)")
    return RNNClassifier(cfg.cell, spec.input_shape[1], hidden, int(cfg.layers), spec.num_classes)
