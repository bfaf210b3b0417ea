"""What a training step minimises and an evaluation measures, by the data's layout: classification (cross-entropy,
accuracy) for images, sequences and tokens; ranking (BPR, Recall@K and NDCG@K) for (user, item) interactions.

Ranking maps onto the loop's record as: ``val_acc`` = validation Recall@K, ``test_acc`` = test Recall@K,
``val_loss`` = 1 − validation NDCG@K (so the early-stop point is the best validation NDCG), plus ``val_ndcg`` and
``test_ndcg``. The protocol is the standard full ranking: every item scored for every user, the user's known
interactions masked out (training ones for validation; training and validation ones for test), users without a
held-out item skipped.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparse_run.data.spec import DataBundle

K = 20


@torch.no_grad()
def classify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy as 0-d device tensors (no host sync here)."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    for i in range(0, x.shape[0], chunk):
        out = model(x[i:i + chunk])
        loss += F.cross_entropy(out, y[i:i + chunk], reduction="sum")
        correct += (out.argmax(1) == y[i:i + chunk]).sum()
    model.train(was_training)
    return loss / x.shape[0], correct / x.shape[0]


def _matrix(pairs: torch.Tensor, users: int, items: int) -> torch.Tensor:
    m = torch.zeros(users, items, dtype=torch.bool, device=pairs.device)
    m[pairs[:, 0], pairs[:, 1]] = True
    return m


def recall_ndcg(scores: torch.Tensor, seen: torch.Tensor, relevant: torch.Tensor, k: int = K
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean Recall@k and NDCG@k over users with at least one relevant item; ``seen`` items are never ranked.

    Recall@k = hits in the top k / relevant items; NDCG@k = Σ_{hits at rank r} 1/log2(r + 1) over the ideal
    Σ_{r ≤ min(k, relevant)} 1/log2(r + 1) (ranks from 1)."""
    k = min(k, scores.shape[1])
    top = scores.masked_fill(seen, float("-inf")).topk(k, dim=1).indices
    hits = relevant.gather(1, top).float()
    n_rel = relevant.sum(1)
    users = n_rel > 0
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, device=scores.device, dtype=torch.float))
    ideal = torch.cumsum(discount, 0)[(n_rel.clamp(1, k) - 1)]
    recall = hits.sum(1) / n_rel.clamp(min=1)
    ndcg = (hits * discount).sum(1) / ideal
    return recall[users].mean(), ndcg[users].mean()


class Classification:
    """Cross-entropy on logits; accuracy; chance = the majority class's share + 3 standard errors."""

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y)

    def evaluate(self, model: nn.Module, data: DataBundle) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                     dict[str, torch.Tensor]]:
        val_loss, val_acc = classify(model, data.val_x, data.val_y)
        _, test_acc = classify(model, data.test_x, data.test_y)
        return val_loss, val_acc, test_acc, {}

    def chance(self, data: DataBundle, sigmas: float) -> float:
        y = data.test_y
        n = y.numel()
        p = float(torch.bincount(y.flatten().long()).max()) / n
        return p + sigmas * math.sqrt(p * (1 - p) / n)


class Ranking:
    """BPR on (user, positive, negative) triples (the model returns the margin); Recall@K / NDCG@K."""

    def __init__(self, data: DataBundle):
        users, items = int(data.spec.num_users), int(data.spec.num_items)
        self.train = _matrix(data.train_x, users, items)
        self.val = _matrix(data.val_x, users, items)
        self.test = _matrix(data.test_x, users, items)
        self.seen_test = self.train | self.val

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.softplus(-out).mean()  # −log σ(s_ui − s_uj)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: DataBundle) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                     dict[str, torch.Tensor]]:
        scores = model.all_scores()
        val_recall, val_ndcg = recall_ndcg(scores, self.train, self.val)
        test_recall, test_ndcg = recall_ndcg(scores, self.seen_test, self.test)
        return 1 - val_ndcg, val_recall, test_recall, {"val_ndcg": val_ndcg, "test_ndcg": test_ndcg}

    def chance(self, data: DataBundle, sigmas: float) -> float:
        """Mean Recall@K of a random ranking plus ``sigmas`` standard errors: a user with n held-out items among
        C unseen ones finds X ~ Hypergeometric(C, n, K) of them in a random top K."""
        n = self.test.sum(1).double()
        c = (~self.seen_test).sum(1).double()
        ok = n > 0
        n, c = n[ok], c[ok]
        k = torch.clamp(c, max=K)
        mean = (k / c).mean()
        var_x = k * (n / c) * (1 - n / c) * (c - k) / (c - 1).clamp(min=1)
        se = torch.sqrt((var_x / n ** 2).sum()) / n.numel()
        return float(mean + sigmas * se)


def for_data(data: DataBundle) -> Any:
    """The task of a data bundle (by its layout)."""
    return Ranking(data) if data.spec is not None and data.spec.kind == "interactions" else Classification()
