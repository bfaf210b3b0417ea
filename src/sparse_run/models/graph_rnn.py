"""Recurrent classifier whose layers are the layers of a DAG (Darji's ``ArbitraryStructureRNN``).

Layer l of the DAG becomes one recurrent layer (tanh / ReLU RNN, GRU or LSTM) with as many units as
the layer has nodes; it reads the output sequence of layer l − 1 (layer 0 reads the embedding, whose
width is the number of source nodes). Every skip pair (s, t), t ≥ s + 2, is in the thesis a further
recurrent layer reading layer s's output sequence, with layer t's size and its own hidden state, its
output added to layer t's output. Here the skip layers that read the same layer s run as one module
(``skips.<k>``, k-th source in ascending order) whose units are the targets' blocks side by side;
its hidden-to-hidden mask is block-diagonal, so the blocks are exactly the thesis' separate layers
(each block initialised with its own U(±1/√size)) at a fraction of the per-time-step overhead. The
classifier reads the last layer at each sequence's last real token. Which weights exist is a mask
set by ``graph_rnn.graph_masks``; hidden-to-hidden weights inside a DAG layer are dense.
Parameter names: ``layers.<l>.weight_ih_l0`` / ``weight_hh_l0`` and ``skips.<k>.…`` (plus biases).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .rnn import PAD

GATES = {"tanh": 1, "relu": 1, "gru": 3, "lstm": 4}


def cell_layer(cell: str, inputs: int, hidden: int) -> nn.RNNBase:
    """One single-layer recurrent module (batch first): PyTorch's cells compute the thesis' gate equations."""
    if cell in ("tanh", "relu"):
        return nn.RNN(inputs, hidden, nonlinearity=cell, batch_first=True)
    return (nn.GRU if cell == "gru" else nn.LSTM)(inputs, hidden, batch_first=True)


def skip_groups(skips: list[tuple[int, int]]) -> list[tuple[int, list[int]]]:
    """``(source layer, [target layers])`` per source, both ascending: the units of one skip module."""
    return [(s, sorted(t for s2, t in skips if s2 == s)) for s in sorted({s for s, _ in skips})]


def block_rows(gates: int, sizes: list[int]) -> list[list[torch.Tensor]]:
    """Row indices of each (block, gate) in a module whose units are blocks of ``sizes`` side by side."""
    total, out, off = sum(sizes), [], 0
    for n in sizes:
        out.append([torch.arange(g * total + off, g * total + off + n) for g in range(gates)])
        off += n
    return out


class GraphRNNClassifier(nn.Module):
    def __init__(self, cell: str, sizes: list[int], skips: list[tuple[int, int]], vocab_size: int,
                 num_classes: int):
        super().__init__()
        if not sizes or any(s < 1 for s in sizes):
            raise ValueError(f"layer sizes must be positive, got {sizes}")
        self.cell, self.sizes = cell, list(sizes)
        self.groups = skip_groups([(int(s), int(t)) for s, t in skips])
        self.embed = nn.Embedding(vocab_size, sizes[0], padding_idx=PAD)
        self.layers = nn.ModuleList(cell_layer(cell, sizes[max(0, i - 1)], n) for i, n in enumerate(sizes))
        self.skips = nn.ModuleList(cell_layer(cell, sizes[s], sum(sizes[t] for t in ts)) for s, ts in self.groups)
        self.out = nn.Linear(sizes[-1], num_classes)
        self.reset_skip_blocks()

    @torch.no_grad()
    def reset_skip_blocks(self) -> None:
        """Each block of a skip module drawn as the thesis' own layer would be: U(±1/√block size)."""
        for (_, ts), mod in zip(self.groups, self.skips):
            sizes = [self.sizes[t] for t in ts]
            for n, rows in zip(sizes, block_rows(GATES[self.cell], sizes)):
                bound = 1.0 / math.sqrt(n)
                for p in mod.parameters():
                    idx = torch.cat(rows)
                    p[idx] = torch.empty_like(p[idx]).uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = (x != PAD).sum(1).clamp(min=1) - 1  # right-padded: index of each last real token
        h = self.embed(x[:, :int(last.max()) + 1])  # steps after every string's end change nothing: skip them
        pending: dict[int, list[torch.Tensor]] = {}
        by_source = {s: (ts, mod) for (s, ts), mod in zip(self.groups, self.skips)}
        for i, layer in enumerate(self.layers):
            y, _ = layer(h)
            for extra in pending.pop(i, []):
                y = y + extra
            if i in by_source:  # this layer's output (skips included) feeds its skip module
                ts, mod = by_source[i]
                z, _ = mod(y)
                for t, part in zip(ts, z.split([self.sizes[t] for t in ts], dim=-1)):
                    pending.setdefault(t, []).append(part)
            h = y
        return self.out(h[torch.arange(h.shape[0], device=h.device), last])
