"""The training loop's fast paths change nothing but speed: LeanStep equals ``opt.step()`` bit for
bit, masked gradients alone keep pruned weights at zero, and a broken invariant stops the run."""
from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from sparse_run.data import DataBundle
from sparse_run.engine import onednn
from sparse_run.engine.train import LeanStep, make_lr_schedule, make_optimizer, train, zero_pruned_state
from sparse_run.sparsity.masks import MaskSet


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
def test_lean_step_is_bit_identical_to_optimizer_step(optimizer, wd, monkeypatch):
    monkeypatch.setattr(onednn, "SAFE_TORCH", False)  # the fast path, even under SPARSE_RUN_SAFE_TORCH=1
    tcfg = OmegaConf.create({"optimizer": optimizer, "lr": 1e-2, "weight_decay": wd})
    ref, lean = _net(), _net()
    o_ref, o_lean = make_optimizer(list(ref.parameters()), tcfg), make_optimizer(list(lean.parameters()), tcfg)
    step = LeanStep(o_lean)
    assert step.fast
    # a changing learning rate (warmup then cosine) must reach the kernel each step
    warm = OmegaConf.create({"lr_schedule": "cosine", "warmup_steps": 5})
    scheds = [make_lr_schedule(o, warm, 25) for o in (o_ref, o_lean)]
    gen = torch.Generator().manual_seed(0)
    for i in range(25):
        x = torch.randn(8, 12, generator=gen)
        for model, opt, do_step, sched in ((ref, o_ref, o_ref.step, scheds[0]), (lean, o_lean, step, scheds[1])):
            opt.zero_grad(set_to_none=True)
            model(x).pow(2).mean().backward()
            do_step()
            sched.step()
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
    """The invariant check at each evaluation is live: without gradient masking it fires.

    Dense kernels are forced: under ``auto`` a machine may time a sparse kernel faster even for these
    tiny layers, and a sparse kernel has no gradient off the mask to leak (CI stop 30 failed so)."""
    model = _net()
    masks = _masks(model)
    monkeypatch.setattr(MaskSet, "mask_grads_", lambda self: None)
    tcfg = OmegaConf.create({"optimizer": "adam", "lr": 1e-2, "batch_size": 20, "sparse_kernel": "dense"})
    with pytest.raises(RuntimeError, match="pruned weights are nonzero"):
        train(model, masks, _data(), tcfg, steps=20, eval_every=10, seed=0)


def test_mask_grads_masks_present_gradients_when_one_is_missing():
    model = _net()
    masks = _masks(model)
    first, second = masks.params.values()
    first.grad, second.grad = torch.ones_like(first), None
    masks.mask_grads_()
    assert torch.equal(first.grad, masks.masks["0.weight"].float())


# -- oneDNN Linear (train.linear_kernel) ------------------------------------------------------------

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="PyTorch built without oneDNN")


@needs_onednn
@pytest.mark.parametrize("shape", [(60, 784), (4, 15, 784)])
def test_onednn_linear_matches_aten_values_and_gradients(shape):
    torch.manual_seed(0)
    layer = nn.Linear(784, 300)
    x = torch.randn(*shape, requires_grad=True)
    ref_out = layer(x)
    ref_grads = torch.autograd.grad(ref_out.pow(2).sum(), [x, layer.weight, layer.bias])
    with onednn.use_onednn(layer):
        assert "forward" in layer.__dict__
        out = layer(x)
        grads = torch.autograd.grad(out.pow(2).sum(), [x, layer.weight, layer.bias])
    assert "forward" not in layer.__dict__  # restored on exit
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-3)


@needs_onednn
def test_a_copy_made_inside_the_block_uses_its_own_weights():
    layer = nn.Linear(784, 300)
    x = torch.randn(5, 784)
    with onednn.use_onednn(layer):
        twin = copy.deepcopy(layer)
        with torch.no_grad():
            twin.weight.zero_()
            twin.bias.fill_(1.0)
        assert torch.equal(twin(x), torch.ones(5, 300))
        assert not torch.equal(layer(x), torch.ones(5, 300))


@needs_onednn
def test_onednn_leaves_small_layers_and_own_forwards_alone():
    net = nn.Sequential(nn.Linear(784, 300), nn.Linear(300, 100), nn.Linear(784, 300))
    net[2].forward = lambda x: x  # e.g. an N:M STE layer
    with onednn.use_onednn(net):
        assert "forward" in net[0].__dict__ and "forward" not in net[1].__dict__
        assert net[2](torch.ones(1)).item() == 1.0
    assert "forward" in net[2].__dict__ and "forward" not in net[0].__dict__


@needs_onednn
def test_train_with_onednn_learns_like_aten_and_keeps_masks():
    accs = {}
    for kind in ("aten", "auto"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(12, 6000), nn.ReLU(), nn.Linear(6000, 4))  # 72k weights: oneDNN
        masks = _masks(model, density=0.2)
        tcfg = OmegaConf.create({"optimizer": "adam", "lr": 1e-3, "batch_size": 20, "linear_kernel": kind})
        accs[kind] = train(model, masks, _data(), tcfg, steps=40, eval_every=20, seed=0).final_val_acc
        masks.check()
        assert all("forward" not in m.__dict__ for m in model.modules())
    assert accs["auto"] == pytest.approx(accs["aten"], abs=0.05)


def test_onednn_on_cuda_is_a_one_line_config_error():
    from conftest import compose_cfg
    from sparse_run.config import ConfigError
    from sparse_run.methods import validate

    with pytest.raises(ConfigError, match="train.linear_kernel"):
        validate(compose_cfg("experiment=lottery_mnist", "device=cuda", "train.linear_kernel=onednn"))
    with pytest.raises(ConfigError, match="train.linear_kernel: .*auto"):
        validate(compose_cfg("experiment=lottery_mnist", "train.linear_kernel=mkl"))
