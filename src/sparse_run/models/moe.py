"""A small top-k mixture of experts (``model.arch=moe``) for expert pruning (DERN, ``../shared/papers.md`` §13): a
shared ReLU stem ``in → dim``, one MoE layer of ``experts`` gated MLPs (``down(silu(gate(h)) ⊙ up(h))``, hidden
``hidden``) added residually, and a linear head.

The router picks the ``top_k`` experts of each token by softmax probability and mixes their outputs with those
probabilities renormalised over the chosen ones (Mixtral's rule). ``aux_loss()`` is the usual load-balancing loss of
the last forward pass, E · Σ_e f_e · P_e (f_e: share of the token-to-expert assignments that went to e, P_e: mean
router probability of e), 1 when routing is uniform, scaled by ``aux_weight``; the training loop adds it to the task
loss. ``keep(experts)`` restricts the router to a subset (expert pruning without retraining): dropped experts can
never be chosen and their weights may be removed. Every projection is an ``nn.Linear``, so pruning methods apply.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from sparse_run.config import ConfigError, number
from sparse_run.data.spec import DataSpec

from .common import scaled


class Expert(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.silu(self.gate(h)) * self.up(h))


def route(logits: torch.Tensor, k: int, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probabilities over the active experts [N, E], chosen experts [N, k], their renormalised weights [N, k])."""
    probs = torch.softmax(logits.masked_fill(~active, -math.inf), dim=-1)
    top_p, top_i = torch.topk(probs, k, dim=-1)
    return probs, top_i, top_p / top_p.sum(-1, keepdim=True)


def balance_loss(probs: torch.Tensor, top_i: torch.Tensor) -> torch.Tensor:
    """E · Σ_e f_e · P_e over the experts (f from the hard top-k assignments, P the mean probabilities)."""
    e = probs.shape[-1]
    f = torch.bincount(top_i.flatten(), minlength=e).to(probs.dtype) / top_i.numel()
    return e * (f * probs.mean(0)).sum()


class MoE(nn.Module):
    def __init__(self, in_features: int, dim: int, hidden: int, experts: int, k: int, classes: int,
                 aux_weight: float):
        super().__init__()
        self.k, self.aux_weight = k, aux_weight
        self.stem = nn.Linear(in_features, dim)
        self.router = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(Expert(dim, hidden) for _ in range(experts))
        self.head = nn.Linear(dim, classes)
        self.register_buffer("active", torch.ones(experts, dtype=torch.bool))
        self._aux: torch.Tensor | None = None

    def keep(self, experts: Sequence[int]) -> None:
        """Restrict the router to ``experts`` (the others are never chosen again)."""
        keep = sorted(set(int(e) for e in experts))
        if len(keep) < self.k or keep[0] < 0 or keep[-1] >= len(self.experts):
            raise ConfigError("method.experts_kept", f"got {keep}; need at least top_k = {self.k} of experts "
                                                     f"0 … {len(self.experts) - 1}")
        self.active.zero_()
        self.active[keep] = True

    def expert_weights(self) -> list[dict[str, torch.Tensor]]:
        """Each expert as ``sparsity.experts.Expert`` (detached copies)."""
        return [{f"{name}_{kind}": getattr(getattr(e, name), attr).detach().clone()
                 for name in ("gate", "up", "down") for kind, attr in (("w", "weight"), ("b", "bias"))}
                for e in self.experts]

    @torch.no_grad()
    def load_experts(self, reduced: dict[int, dict[str, torch.Tensor]]) -> None:
        """Write the reduced experts back and route to them only (the rest are never chosen again)."""
        for k, w in reduced.items():
            e = self.experts[k]
            for mod, name in ((e.gate, "gate"), (e.up, "up"), (e.down, "down")):
                mod.weight.copy_(w[f"{name}_w"])
                mod.bias.copy_(w[f"{name}_b"])
        self.keep(list(reduced))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x.flatten(1)))
        probs, top_i, top_w = route(self.router(h), self.k, self.active)
        self._aux = balance_loss(probs, top_i) if self.training else None
        # every expert on every token, mixed by a dense [N, E] gate that is zero off the chosen ones: no host sync
        # (which experts were picked is never read back), exact, and cheap at these sizes
        gate = torch.zeros_like(probs).scatter_(1, top_i, top_w)
        out = sum(gate[:, e, None] * expert(h) for e, expert in enumerate(self.experts))
        return self.head(h + out)

    def aux_loss(self) -> torch.Tensor | None:
        """``aux_weight`` × the load-balancing loss of the last training forward pass (None in evaluation)."""
        return None if self._aux is None or not self.aux_weight else self.aux_weight * self._aux


def moe(cfg: Any, spec: DataSpec) -> nn.Module:
    if spec.kind != "image":
        raise ConfigError("model.arch", f"moe needs float inputs; dataset {spec.name} gives {spec.kind} inputs")
    number(cfg.experts, "model.experts", lo=1, integer=True)
    number(cfg.top_k, "model.top_k", lo=1, hi=int(cfg.experts), integer=True)
    number(cfg.aux_weight, "model.aux_weight", lo=0)
    for field in ("dim", "hidden"):
        number(cfg[field], f"model.{field}", lo=1, integer=True)
    return MoE(math.prod(spec.input_shape), scaled(int(cfg.dim), cfg), scaled(int(cfg.hidden), cfg),
               int(cfg.experts), int(cfg.top_k), spec.num_classes, float(cfg.aux_weight))
