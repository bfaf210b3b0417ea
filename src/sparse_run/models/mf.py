"""Matrix factorisation for implicit feedback (``model.arch=mf``; DSL's MF-BPR): score(u, i) = ⟨P_u, Q_i⟩.

The user and item tables are ``nn.Embedding`` weights (layer type ``embedding`` in ``method.policy.layers``), drawn
N(0, 0.1²) as BPR implementations do; ``model.width`` scales the dimension (small-dense baselines). The forward
pass takes [B, 2] (user, item) pairs and returns their scores, or [B, 3] (user, positive, negative) triples and
returns score(u, pos) − score(u, neg), the BPR margin. Gradients are dense (``sparse=False``), so dynamic sparse
training can grow by them.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparse_run.config import ConfigError
from sparse_run.data.spec import DataSpec

from .common import scaled


class MF(nn.Module):
    def __init__(self, users: int, items: int, dim: int):
        super().__init__()
        self.user = nn.Embedding(users, dim)
        self.item = nn.Embedding(items, dim)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.user(x[:, 0])
        score = (u * self.item(x[:, 1])).sum(1)
        if x.shape[1] == 3:
            return score - (u * self.item(x[:, 2])).sum(1)
        return score

    def all_scores(self) -> torch.Tensor:
        """[users, items]: every user's score for every item (full-ranking evaluation)."""
        return self.user.weight @ self.item.weight.T

    def layer_costs(self) -> dict[str, int]:
        """MACs per BPR triple attributed to each table: the two dot products of dimension d, d each."""
        d = self.user.weight.shape[1]
        return {"user.weight": d, "item.weight": d}


def mf(cfg: Any, spec: DataSpec) -> nn.Module:
    if spec.kind != "interactions" or not spec.num_users or not spec.num_items:
        raise ConfigError("model.arch", f"mf needs (user, item) interactions; dataset {spec.name} gives {spec.kind} "
                          "inputs (try dataset=implicit_synth)")
    if cfg.hidden is None or isinstance(cfg.hidden, (list, tuple)) or int(cfg.hidden) < 1:
        raise ConfigError("model.hidden", f"got {cfg.hidden!r}; mf: the embedding dimension, a positive integer")
    return MF(int(spec.num_users), int(spec.num_items), scaled(int(cfg.hidden), cfg))
