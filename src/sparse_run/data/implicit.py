"""Synthetic implicit feedback for recommender experiments (``dataset=implicit_synth``, DSL's scaled setting).

Each user u and item i get rank-r factors drawn N(0, 1); item i also gets a popularity bias ``popularity · log
(1 / rank_i)`` over a random item order (a Zipf-like head). User u's affinity for item i is
p_u · q_i / sqrt(r) + bias_i, and u interacts with n_u ≈ Poisson(``per_user``) items (at least 5) drawn without
replacement with probability ∝ exp(affinity / ``temperature``) (Gumbel top-k). Each user's interactions are split
at random: ``test_fraction`` to the test set, ``val_fraction`` of the rest to validation, the remainder to
training. Everything comes from ``dataset.implicit.seed``, never the run seed, so every run sees the same data.

Tensors are (user, item) pairs: ``train_x`` / ``val_x`` / ``test_x`` of shape [N, 2]; labels are unused zeros.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch


def generate(cfg: Any) -> dict[str, Any]:
    from sparse_run.config.errors import ConfigError, number

    s = cfg.implicit
    if s is None:
        raise ConfigError("dataset.implicit", "source implicit needs its generator settings (users, items, ...)")
    users = number(s.users, "dataset.implicit.users", lo=2, integer=True)
    items = number(s["items"], "dataset.implicit.items", lo=30, integer=True)
    rank = number(s.rank, "dataset.implicit.rank", lo=1, integer=True)
    per_user = number(s.per_user, "dataset.implicit.per_user", lo=5, hi=items / 2)
    test_f = number(s.test_fraction, "dataset.implicit.test_fraction", lo=0, lo_open=True, hi=0.5)
    val_f = number(s.val_fraction, "dataset.implicit.val_fraction", lo=0, hi=0.5)
    temp = number(s.temperature, "dataset.implicit.temperature", lo=0, lo_open=True)
    pop = number(s.popularity, "dataset.implicit.popularity", lo=0)
    g = torch.Generator().manual_seed(int(s.seed))
    p, q = torch.randn(users, rank, generator=g), torch.randn(items, rank, generator=g)
    order = torch.randperm(items, generator=g).float() + 1
    affinity = p @ q.T / math.sqrt(rank) + pop * torch.log(1 / order)
    counts = torch.poisson(torch.full((users,), float(per_user)), generator=g).clamp(5, items // 2).long()
    gumbel = -torch.log(-torch.log(torch.rand(users, items, generator=g).clamp_min(1e-12)))
    ranked = torch.argsort(affinity / temp + gumbel, dim=1, descending=True)
    parts: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
    for u in range(users):  # per-user splits: one pass over 2,000 users at load, not in training
        chosen = ranked[u, : int(counts[u])]
        chosen = chosen[torch.randperm(chosen.numel(), generator=g)]
        n_test = max(1, round(test_f * chosen.numel()))
        n_val = round(val_f * (chosen.numel() - n_test))
        split = {"test": chosen[:n_test], "val": chosen[n_test:n_test + n_val], "train": chosen[n_test + n_val:]}
        for name, its in split.items():
            parts[name].append(torch.stack([torch.full_like(its, u), its], 1))
    out: dict[str, Any] = {"num_users": users, "num_items": items}
    for name, pieces in parts.items():
        pairs = torch.cat(pieces) if pieces else torch.zeros(0, 2, dtype=torch.long)
        out[f"{name}_x"], out[f"{name}_y"] = pairs, torch.zeros(pairs.shape[0], dtype=torch.long)
    return out


def negatives(items: int) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
    """BPR's negative sampling as the bundle's training transform: a [B, 2] batch of (user, positive) pairs
    becomes [B, 3] (user, positive, negative) with negatives drawn uniformly over all items from a generator keyed
    on (run seed, step), so a resumed run draws the same ones. Uniform sampling may draw a user's own positive
    (≈ 3 % of draws here), as most BPR code does."""
    def sample(x: torch.Tensor, seed: int, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed((int(seed) * 2_654_435_761 + int(step)) % (1 << 63))
        neg = torch.randint(0, items, (x.shape[0], 1), generator=g).to(x.device)
        return torch.cat([x, neg], 1)

    return sample
