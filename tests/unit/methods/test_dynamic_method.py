"""The dynamic-sparse-training step hook inside the real training loop: exact counts after every update, zeroed
state of grown and dropped weights (SGD momentum and Adam), RigL's update replacing its optimizer step, sparse
momentum's redistribution, bit-identical resume between updates and exactly at one, and the dense-gradient check."""
from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from sparse_run.config import ConfigError
from sparse_run.data import DataBundle
from sparse_run.engine.train import train
from sparse_run.methods.dynamic import ARMS, DynamicHook
from sparse_run.sparsity import dynamic as dst
from sparse_run.sparsity.flops import LayerCost, dense_train_flops, timeline_flops
from sparse_run.sparsity.masks import MaskSet

SGD = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3, "batch_size": 20,
       "checkpoint_every": 1}
ADAM = {"optimizer": "adam", "lr": 1e-2, "weight_decay": 1e-3, "batch_size": 20, "checkpoint_every": 1}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))


def _masks(model: nn.Module, density: float = 0.3) -> MaskSet:
    params = {n: p for n, p in model.named_parameters() if n.endswith("weight")}
    ms = MaskSet(params)
    gen = torch.Generator().manual_seed(3)
    ms.set({n: torch.rand(p.shape, generator=gen) < density for n, p in params.items()})
    return ms


def _data(n: int = 240) -> DataBundle:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 12, generator=gen)
    y = (x[:, :4].argmax(1)).long()
    return DataBundle(train_x=x, train_y=y, val_x=x[:60], val_y=y[:60], test_x=x[60:120], test_y=y[60:120], spec=None)


def _run(variant: str, tcfg: dict, steps: int = 40, resume=None, saved=None, checks=None):
    model = _net()
    masks = _masks(model)
    budget = {n: int(m.sum()) for n, m in masks.masks.items()}
    events = []

    def on_update(step, zeta, swaps):
        events.append((step, zeta, dict(swaps), {n: int(m.sum()) for n, m in masks.masks.items()}))
        if checks:
            checks(hook, masks, budget)

    hook = DynamicHook(ARMS[variant], variant, 7, zeta0=0.3, delta_t=5, t_end=30, beta=0.9, masks=masks,
                       on_update=on_update)
    cfg = OmegaConf.create(tcfg)
    res = train(model, masks, _data(), cfg, steps=steps, eval_every=10, seed=0, hooks=[hook],
                checkpoint=(lambda st: saved.__setitem__(st["step"], copy.deepcopy(st))) if saved is not None else None,
                resume=resume)
    return model, masks, hook, res, events, budget


def _zero_state_of_inactive(hook, masks, budget):
    for n, p, m in masks:
        for v in hook.opt.state.get(p, {}).values():
            if torch.is_tensor(v) and v.shape == p.shape:
                assert not v[~m].any(), f"optimizer state of inactive weights of {n} is not zero"
        assert not p.detach()[~m].any()


@pytest.mark.parametrize("variant", ["set", "rigl"])
@pytest.mark.parametrize("tcfg", [SGD, ADAM], ids=["sgd_momentum", "adam"])
def test_every_update_keeps_each_layer_at_its_budget_with_zero_state_outside_the_mask(variant, tcfg):
    model, masks, hook, res, events, budget = _run(variant, tcfg, checks=_zero_state_of_inactive)
    assert [e[0] for e in events] == [5, 10, 15, 20, 25]
    for step, zeta, swaps, counts in events:
        assert counts == budget
        assert zeta == pytest.approx(dst.drop_fraction(step, 0.3, 30))
    assert sum(sum(e[2].values()) for e in events) == hook.swapped > 0
    masks.check()
    _zero_state_of_inactive(hook, masks, budget)
    assert res.history[-1]["itop"] == pytest.approx(hook.itop()) and hook.itop() > masks.density()


def test_rigl_update_replaces_its_optimizer_step_and_set_follows_it():
    _, _, rigl, *_ = _run("rigl", ADAM)
    _, _, set_, *_ = _run("set", ADAM)
    step_of = lambda hook: {int(s["step"]) for s in hook.opt.state.values()}  # noqa: E731
    assert step_of(rigl) == {40 - 5} and step_of(set_) == {40}


def test_sparse_momentum_moves_counts_between_layers_at_a_fixed_total():
    model, masks, hook, res, events, budget = _run("snfs", SGD, checks=_zero_state_of_inactive)
    total = sum(budget.values())
    assert all(sum(e[3].values()) == total for e in events)
    assert any(e[3] != budget for e in events), "redistribution never moved a weight between layers"


def test_regrow_counts_follow_mean_momentum_and_respect_room():
    masks = {"a": torch.tensor([1, 1, 0, 0], dtype=torch.bool), "b": torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool)}
    momenta = {"a": torch.tensor([3.0, 3.0, 9.0, 9.0]), "b": torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])}
    counts = dst.regrow_counts(momenta, masks, {"a": 1, "b": 2})  # means over active: 3 vs 1 -> 3:1 of 3
    assert sum(counts.values()) == 3 and counts["a"] == 3 - counts["b"] and counts["a"] >= counts["b"]
    counts = dst.regrow_counts(momenta, masks, {"a": 1, "b": 1})
    assert counts["a"] <= 3  # room of a: 2 inactive + 1 dropped


@pytest.mark.parametrize("variant", ["rigl", "snfs"])
@pytest.mark.parametrize("at", [12, 15], ids=["between_updates", "at_an_update_step"])
def test_resume_mid_training_is_bit_identical(variant, at):
    saved: dict = {}
    ref_model, ref_masks, ref_hook, ref_res, ref_events, _ = _run(variant, SGD, saved=saved)
    model, masks, hook, res, events, _ = _run(variant, SGD, resume=saved[at])
    for a, b in zip(ref_model.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert all(torch.equal(ref_masks.masks[n], masks.masks[n]) for n in masks.names())
    assert res.history == ref_res.history
    assert hook.swapped == ref_hook.swapped and hook.itop() == ref_hook.itop()
    # the state saved after step `at` holds SNFS's update at `at` (it follows the step); RigL's comes at resume
    after = [e[0] for e in ref_events if (e[0] >= at if ARMS[variant].replaces_step else e[0] > at)]
    assert [e[0] for e in events] == after
    assert (at in [e[0] for e in ref_events]) == (at == 15)


def test_a_layer_without_a_dense_gradient_is_a_one_line_error():
    model = _net()
    params = {n: p for n, p in model.named_parameters() if n.endswith("weight")}
    params["unused.weight"] = nn.Parameter(torch.zeros(4, 4))  # in the masks, never in the forward pass
    masks = MaskSet(params)
    hook = DynamicHook(ARMS["rigl"], "rigl", 0, zeta0=0.3, delta_t=5, t_end=30, beta=0.9, masks=masks,
                       on_update=lambda *a: None)
    with pytest.raises(ConfigError, match=r"method.schedule.variants: .*rigl.*unused.weight.*no gradient"):
        train(model, masks, _data(), OmegaConf.create(SGD), steps=10, eval_every=5, seed=0, hooks=[hook])


def test_training_flops_follow_density_and_dense_gradient_steps():
    costs = [LayerCost("a", 100, input_grad=False), LayerCost("b", 50)]
    dense = dense_train_flops(costs, 10, 100)
    assert dense == pytest.approx(2 * 10 * 100 * (100 * 2 + 50 * 3))
    static = timeline_flops(costs, [(0, {"a": 0.1, "b": 0.2})], 10, 100)
    assert static == pytest.approx(2 * 10 * 100 * (100 * 0.1 * 2 + 50 * 0.2 * 3))
    rigl = timeline_flops(costs, [(0, {"a": 0.1, "b": 0.2})], 10, 100, "updates", updates=7)
    assert rigl - static == pytest.approx(7 * 2 * 10 * (100 * 0.9 + 50 * 0.8))
    every = timeline_flops(costs, [(0, {"a": 0.1, "b": 0.2})], 10, 100, "every")
    assert every - static == pytest.approx(100 * 2 * 10 * (100 * 0.9 + 50 * 0.8))
    gmp = timeline_flops(costs, [(50, {"a": 0.1, "b": 0.2})], 10, 100)  # dense until step 50
    assert gmp == pytest.approx(dense / 2 + static / 2)
