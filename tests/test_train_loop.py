"""The training loop's fast paths change nothing but speed: LeanStep equals ``opt.step()`` bit for
bit, masked gradients alone keep pruned weights at zero, and a broken invariant stops the run."""
from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from sparse_run.data import DataBundle
from sparse_run.sparsity.masks import MaskSet
from sparse_run.train import LeanStep, make_optimizer, train, zero_pruned_state


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


def _masks(model: nn.Module, density: float = 0.3, seed: int = 0) -> MaskSet:
    params = {n: p for n, p in model.named_parameters() if n.endswith("weight")}
    ms = MaskSet(params)
    gen = torch.Generator().manual_seed(seed)
    ms.set({n: torch.rand(p.shape, generator=gen) < density for n, p in params.items()})
    return ms


def _data(n: int = 240) -> DataBundle:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 12, generator=gen)
    y = (x[:, :4].argmax(1)).long()
    return DataBundle(train_x=x, train_y=y, val_x=x[:60], val_y=y[:60], test_x=x[60:120], test_y=y[60:120],
                      spec=None)


@pytest.mark.parametrize("optimizer, wd", [("adam", 0.0), ("adam", 1e-2), ("adamw", 1e-2)])
def test_lean_step_is_bit_identical_to_optimizer_step(optimizer, wd):
    tcfg = OmegaConf.create({"optimizer": optimizer, "lr": 1e-2, "weight_decay": wd})
    ref, lean = _net(), _net()
    o_ref, o_lean = make_optimizer(list(ref.parameters()), tcfg), make_optimizer(list(lean.parameters()), tcfg)
    step = LeanStep(o_lean)
    assert step.fast
    gen = torch.Generator().manual_seed(0)
    for i in range(25):
        x = torch.randn(8, 12, generator=gen)
        for model, opt, do_step in ((ref, o_ref, o_ref.step), (lean, o_lean, step)):
            opt.zero_grad(set_to_none=True)
            model(x).pow(2).mean().backward()
            do_step()
        if i == 10:  # a checkpoint round trip swaps the state tensors: LeanStep must follow
            o_lean.load_state_dict(copy.deepcopy(o_lean.state_dict()))
    for a, b in zip(ref.parameters(), lean.parameters()):
        assert torch.equal(a, b)
    assert o_lean.state_dict()["state"][0]["step"].item() == 25


def test_sgd_falls_back_to_optimizer_step():
    net = _net()
    step = LeanStep(make_optimizer(list(net.parameters()), OmegaConf.create({"optimizer": "sgd", "lr": 0.1})))
    assert not step.fast


def test_zero_pruned_state_leaves_surviving_updates_unchanged():
    """A dense start state (LR rewinding) has moments for weights pruned since: zeroing them keeps
    the pruned weights at zero without re-masking, and the survivors move exactly as before."""
    tcfg = OmegaConf.create({"optimizer": "adam", "lr": 1e-2})
    base = _net()
    opt = make_optimizer(list(base.parameters()), tcfg)
    for _ in range(5):  # dense training builds moments on every weight
        opt.zero_grad()
        base(torch.randn(8, 12)).pow(2).mean().backward()
        opt.step()
    start = copy.deepcopy((base.state_dict(), opt.state_dict()))

    results = []
    for sanitize in (False, True):
        net = _net()
        net.load_state_dict(start[0])
        masks = _masks(net)
        o = make_optimizer(list(net.parameters()), tcfg)
        o.load_state_dict(copy.deepcopy(start[1]))
        if sanitize:
            zero_pruned_state(o, masks)
        torch.manual_seed(3)
        for _ in range(5):
            o.zero_grad()
            net(torch.randn(8, 12)).pow(2).mean().backward()
            masks.mask_grads_()
            o.step()
            if not sanitize:
                masks.apply_()  # the old way: re-zero after every step
        results.append((net, masks))
    (old, _), (new, masks) = results
    assert int(masks.stray_weights()) == 0
    for a, b in zip(old.parameters(), new.parameters()):
        assert torch.equal(a, b)


def test_masked_gradients_alone_keep_pruned_weights_zero_through_train():
    model = _net()
    masks = _masks(model)
    tcfg = OmegaConf.create({"optimizer": "adam", "lr": 1e-2, "weight_decay": 1e-3, "batch_size": 20})
    res = train(model, masks, _data(), tcfg, steps=60, eval_every=20, seed=0)
    assert len(res.history) == 3
    masks.check()
    assert int(masks.stray_weights()) == 0


def test_broken_mask_enforcement_stops_the_run(monkeypatch):
    """The invariant check at each evaluation is live: without gradient masking it fires."""
    model = _net()
    masks = _masks(model)
    monkeypatch.setattr(MaskSet, "mask_grads_", lambda self: None)
    tcfg = OmegaConf.create({"optimizer": "adam", "lr": 1e-2, "batch_size": 20})
    with pytest.raises(RuntimeError, match="pruned weights are nonzero"):
        train(model, masks, _data(), tcfg, steps=20, eval_every=10, seed=0)


def test_mask_grads_masks_present_gradients_when_one_is_missing():
    model = _net()
    masks = _masks(model)
    first, second = masks.params.values()
    first.grad, second.grad = torch.ones_like(first), None
    masks.mask_grads_()
    assert torch.equal(first.grad, masks.masks["0.weight"].float())
