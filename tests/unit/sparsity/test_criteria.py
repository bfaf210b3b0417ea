"""Each importance criterion against its paper's defining formula, on tiny tensors."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparse_run.sparsity import CRITERIA, MaskSet, ScoreContext, select
from sparse_run.sparsity.criteria import synflow_scores


class Tiny(nn.Module):
    def __init__(self, bn: bool = False):
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.bn = nn.BatchNorm1d(5) if bn else nn.Identity()
        self.b = nn.Linear(5, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.bn(self.a(x))))  # tanh: a non-zero Hessian everywhere


def setup(seed: int = 0, bn: bool = False):
    torch.manual_seed(seed)
    model = Tiny(bn).double()
    masks = MaskSet({"a.weight": model.a.weight, "b.weight": model.b.weight})
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(30, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (30,), generator=g)
    ctx = ScoreContext(model, masks, g, batches=lambda n: (x[:n], y[:n]), num_classes=3, input_shape=(4,))
    return model, masks, ctx, x, y


def test_snip_is_normalised_abs_g_times_theta_on_ten_per_class_examples():
    model, masks, ctx, x, y = setup()
    seen = []
    ctx.batches = lambda n: (seen.append(n), (x[:n], y[:n]))[1]
    scores = CRITERIA["snip"](ctx)
    assert seen == [10 * 3]
    loss = F.cross_entropy(model(x), y)
    ga, gb = torch.autograd.grad(loss, [model.a.weight, model.b.weight])
    raw = {"a.weight": (ga * model.a.weight).abs(), "b.weight": (gb * model.b.weight).abs()}
    total = sum(v.sum() for v in raw.values())
    for n in raw:
        torch.testing.assert_close(scores[n], raw[n] / total)
    assert abs(sum(float(s.sum()) for s in scores.values()) - 1) < 1e-12


def test_gradient_is_abs_g():
    model, masks, ctx, x, y = setup()
    ga, = torch.autograd.grad(F.cross_entropy(model(x), y), [model.a.weight])
    torch.testing.assert_close(CRITERIA["gradient"](ctx)["a.weight"], ga.abs())


def test_grasp_is_theta_times_hessian_gradient_at_temperature_200():
    model, masks, ctx, x, y = setup()
    T = 200.0
    params = [model.a.weight, model.b.weight]
    shapes = [p.shape for p in params]
    flat0 = torch.cat([p.detach().flatten() for p in params])

    def loss_of(flat):  # the loss as a function of the prunable weights only
        a = flat[:20].view(shapes[0])
        b = flat[20:].view(shapes[1])
        h = torch.tanh(F.linear(x, a, model.a.bias))
        return F.cross_entropy(F.linear(h, b, model.b.bias) / T, y)

    g = torch.autograd.functional.jacobian(loss_of, flat0)
    H = torch.autograd.functional.hessian(loss_of, flat0)
    keep = flat0 * (H @ g)  # θ ⊙ Hg; GraSP's removal score is its negative
    keep = keep / (keep.sum().abs() + 1e-10)  # Synaptic-Flow normalisation (eps matters: scores ~ 1/T³)
    scores = CRITERIA["grasp"](ctx)
    got = torch.cat([scores["a.weight"].flatten(), scores["b.weight"].flatten()])
    torch.testing.assert_close(got, keep, rtol=1e-6, atol=1e-12)
    # sign convention: selection prunes the weights with the largest −θ ⊙ Hg first
    removal = -keep
    new = select(scores, masks.masks, density=0.5, scope="global")
    kept = torch.cat([new["a.weight"].flatten(), new["b.weight"].flatten()])
    assert removal[~kept].min() >= removal[kept].max()


def test_synflow_single_round_uses_abs_weights_and_all_ones_input():
    model, masks, ctx, _, _ = setup()
    model.a.weight.data[0, 0] = -3.0  # a negative weight must enter as |θ|
    before = copy.deepcopy(model.state_dict())
    names = masks.names()
    scores = synflow_scores(model, names, masks.clone_masks(), (4,))
    # by hand: R = Σ f(1) for the network with |θ| (and |bias|) everywhere
    A, B = model.a.weight.detach().abs().clone().requires_grad_(), model.b.weight.detach().abs().clone().requires_grad_()
    h = torch.tanh(F.linear(torch.ones(1, 4, dtype=torch.float64), A, model.a.bias.detach().abs()))
    R = F.linear(h, B, model.b.bias.detach().abs()).sum()
    gA, gB = torch.autograd.grad(R, [A, B])
    torch.testing.assert_close(scores["a.weight"], (gA * A).abs())
    torch.testing.assert_close(scores["b.weight"], (gB * B).abs())
    for k, v in model.state_dict().items():  # the caller's model keeps its signs and values
        assert torch.equal(v, before[k]), k


def test_synflow_iterates_over_rounds_with_an_exponential_schedule():
    model, masks, ctx, _, _ = setup()
    densities = []

    def spy(scores, current, d):
        densities.append(d)
        return select(scores, current, d, scope="global")

    ctx.select, ctx.target_density, ctx.rounds = spy, 0.1, 7
    scores = CRITERIA["synflow"](ctx)
    assert len(densities) == 6 and densities == pytest.approx([0.1 ** (k / 7) for k in range(1, 7)])
    assert all(a > b for a, b in zip(densities, densities[1:]))
    final = select(scores, masks.masks, 0.1, scope="global")
    assert sum(int(m.sum()) for m in final.values()) == round(0.1 * 35)
    # entries pruned in earlier rounds can never come back: they score -inf
    assert sum(int(torch.isinf(s).sum()) for s in scores.values()) == 35 - round(0.1 ** (6 / 7) * 35)
    assert all((final[n] <= ~torch.isinf(scores[n])).all() for n in final)


def test_synflow_handles_batchnorm_in_eval_mode_and_keeps_training_flag():
    model, masks, ctx, _, _ = setup(bn=True)
    model.bn.running_mean.fill_(-0.5)
    model.bn.running_var.fill_(2.0)
    model.train()
    before = copy.deepcopy(model.state_dict())
    ctx.select, ctx.target_density, ctx.rounds = (lambda s, c, d: select(s, c, d, scope="global")), 0.5, 3
    scores = CRITERIA["synflow"](ctx)
    assert model.training and all(torch.isfinite(s[~torch.isinf(s)]).all() for s in scores.values())
    for k, v in model.state_dict().items():  # running stats untouched (eval mode, on a copy)
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", ["snip", "grasp", "gradient"])
def test_data_criteria_restore_the_training_flag(name):
    model, masks, ctx, _, _ = setup()
    model.train()
    CRITERIA[name](ctx)
    assert model.training


def test_magnitude_and_random():
    model, masks, ctx, _, _ = setup()
    assert torch.equal(CRITERIA["magnitude"](ctx)["a.weight"], model.a.weight.detach().abs())
    r1 = CRITERIA["random"](ScoreContext(model, masks, torch.Generator().manual_seed(3)))
    r2 = CRITERIA["random"](ScoreContext(model, masks, torch.Generator().manual_seed(3)))
    assert torch.equal(r1["b.weight"], r2["b.weight"])
