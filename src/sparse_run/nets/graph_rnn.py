"""Recurrent classifier whose layers are the layers of a DAG (Darji's ``ArbitraryStructureRNN``).

Layer l of the DAG becomes one recurrent layer (tanh / ReLU RNN, GRU or LSTM) with as many units as
the layer has nodes; it reads the output sequence of layer l − 1 (layer 0 reads the embedding, whose
width is the number of source nodes). Every skip pair (s, t), t ≥ s + 2, is a further recurrent
layer reading layer s's output sequence, with layer t's size, its own hidden state and its output
added to layer t's output. The classifier reads the last layer at each sequence's last real token.
Which input-to-hidden weights exist is a mask set by ``graph_rnn.graph_masks``; hidden-to-hidden
weights inside a layer are dense. Parameter names: ``layers.<l>.weight_ih_l0`` /
``skips.<k>.weight_ih_l0`` (and ``weight_hh_l0``, biases).
"""
from __future__ import annotations

import torch
from torch import nn

from .rnn import PAD


def cell_layer(cell: str, inputs: int, hidden: int) -> nn.RNNBase:
    """One single-layer recurrent module (batch first): PyTorch's cells compute the thesis' gate equations."""
    if cell in ("tanh", "relu"):
        return nn.RNN(inputs, hidden, nonlinearity=cell, batch_first=True)
    return (nn.GRU if cell == "gru" else nn.LSTM)(inputs, hidden, batch_first=True)


class GraphRNNClassifier(nn.Module):
    def __init__(self, cell: str, sizes: list[int], skips: list[tuple[int, int]], vocab_size: int,
                 num_classes: int):
        super().__init__()
        if not sizes or any(s < 1 for s in sizes):
            raise ValueError(f"layer sizes must be positive, got {sizes}")
        self.sizes = list(sizes)
        self.skip_pairs = [(int(s), int(t)) for s, t in skips]
        self.embed = nn.Embedding(vocab_size, sizes[0], padding_idx=PAD)
        self.layers = nn.ModuleList(cell_layer(cell, sizes[max(0, i - 1)], n) for i, n in enumerate(sizes))
        self.skips = nn.ModuleList(cell_layer(cell, sizes[s], sizes[t]) for s, t in self.skip_pairs)
        self.out = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = (x != PAD).sum(1).clamp(min=1) - 1  # right-padded: index of each last real token
        h = self.embed(x)
        outputs: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            y, _ = layer(h)
            for (s, t), skip in zip(self.skip_pairs, self.skips):
                if t == i:
                    y = y + skip(outputs[s])[0]
            outputs.append(y)
            h = y
        return self.out(h[torch.arange(h.shape[0], device=h.device), last])
