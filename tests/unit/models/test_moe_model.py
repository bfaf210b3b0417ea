"""The top-k MoE: exactly k experts per token with renormalised weights, the load-balancing loss's formula (1 when
uniform), a router restricted to kept experts, the aux loss reaching the training loss, and one-line errors."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import compose_cfg
from sparse_run import models
from sparse_run.config import ConfigError
from sparse_run.data import DataSpec
from sparse_run.engine.train import SingleModule
from sparse_run.models.moe import balance_loss, route
from sparse_run.sparsity import MaskSet

MNIST = DataSpec("mnist", (1, 28, 28), 10)


def test_router_picks_k_experts_per_token_and_renormalises_their_weights():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 3.0, 1.0]])
    probs, top_i, top_w = route(logits, 2, torch.ones(4, dtype=torch.bool))
    assert torch.allclose(probs, torch.softmax(logits, -1))
    assert top_i.tolist() == [[0, 1], [2, 3]]
    p = probs.gather(1, top_i)
    assert torch.allclose(top_w, p / p.sum(1, keepdim=True)) and torch.allclose(top_w.sum(1), torch.ones(2))
    _, kept_i, _ = route(logits, 2, torch.tensor([False, True, True, True]))  # expert 0 dropped
    assert 0 not in kept_i.flatten().tolist()


def test_balance_loss_is_e_times_sum_of_assignment_share_times_mean_probability():
    probs = torch.full((6, 3), 1 / 3)
    top_i = torch.tensor([[0], [1], [2], [0], [1], [2]])
    assert balance_loss(probs, top_i).item() == pytest.approx(1.0)  # uniform routing
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    top_i = torch.tensor([[0, 1], [0, 1]])
    f = torch.tensor([0.5, 0.5, 0.0])
    assert balance_loss(probs, top_i).item() == pytest.approx(3 * float((f * probs.mean(0)).sum()))


def test_moe_builds_counts_and_adds_its_aux_loss_to_the_training_loss():
    cfg = compose_cfg("model=moe_mnist", "train.steps=10")
    model = models.build(cfg.model, MNIST, 0)
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert n == 784 * 64 + 64 * 8 + 8 * 3 * 64 * 64 + 64 * 10
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    strategy = SingleModule(model, MaskSet({}), cfg.train, 10)
    total, task = strategy.forward_loss(x[None], y[None])
    aux = model.aux_loss()
    assert aux is not None and total.item() == pytest.approx(task.item() + aux.item(), rel=1e-6)
    assert 0 < aux.item() / 0.01 <= 8 + 1e-6
    model.eval()
    model(x)
    assert model.aux_loss() is None


def test_kept_experts_restrict_the_router_and_bad_settings_are_one_line_errors():
    model = models.build(compose_cfg("model=moe_mnist").model, MNIST, 0)
    model.keep([1, 3, 5, 7])
    assert model.active.tolist() == [False, True, False, True, False, True, False, True]
    with pytest.raises(ConfigError, match=r"^method.experts_kept: got \[3\]; need at least top_k = 2"):
        model.keep([3])
    with pytest.raises(ConfigError, match=r"^model.top_k: got 9"):
        models.build(compose_cfg("model=moe_mnist", "model.top_k=9").model, MNIST, 0)
    assert not math.isnan(model(torch.randn(4, 1, 28, 28)).sum().item())


def test_dern_applied_to_the_model_keeps_shapes_and_routes_to_the_kept_experts_only():
    from sparse_run.sparsity import experts as ex

    model = models.build(compose_cfg("model=moe_mnist").model, MNIST, 0)
    before = {n: p.shape for n, p in model.named_parameters()}
    reduced = ex.reduce(model.expert_weights(), torch.full((8,), 1 / 8), [0, 2, 4, 6], "dern")
    model.load_experts(reduced)
    assert {n: p.shape for n, p in model.named_parameters()} == before
    assert torch.equal(model.experts[2].up.weight, reduced[2]["up_w"])
    model.eval()
    from sparse_run.models.moe import route

    h = torch.relu(model.stem(torch.randn(64, 784)))
    _, top_i, _ = route(model.router(h), model.k, model.active)
    assert set(top_i.flatten().tolist()) <= {0, 2, 4, 6}
