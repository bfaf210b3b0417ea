"""Private torch APIs sit behind feature checks with public fallbacks, and one switch
(``SPARSE_RUN_SAFE_TORCH=1``) turns every fast path off: Adam through ``LeanStep``'s private fused
kernel equals ``opt.step()`` bit for bit, oneDNN equals ATen within float32 tolerance."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from sparse_run.data.spec import DataBundle
from sparse_run.engine import onednn, replicates
from sparse_run.engine.replicates import Lane, train_replicates
from sparse_run.engine.train import LeanStep, make_optimizer, train
from sparse_run.sparsity.masks import MaskSet

# oneDNN vs ATen: same float32 maths in another summation order. After 30 Adam steps at lr 1e-3 the
# weights agree to 3e-7 (measured, torch 2.14.1); 1e-4 absolute leaves room for other CPUs without
# hiding a bug (a wrong kernel moves weights by ~lr = 1e-3 per step).
ONEDNN_ATOL = 1e-4


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # the first layer is big enough (300 x 256 weights) for oneDNN's threshold
    return nn.Sequential(nn.Flatten(), nn.Linear(256, 300), nn.ReLU(), nn.Linear(300, 10))


def _masks(model: nn.Module, seed: int = 0) -> MaskSet:
    ms = MaskSet({n: p for n, p in model.named_parameters() if n.endswith("weight")})
    gen = torch.Generator().manual_seed(seed)
    ms.set({n: torch.rand(p.shape, generator=gen) < 0.3 for n, p in ms.params.items()})
    return ms


def _data(n: int = 300) -> DataBundle:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 256, generator=gen)
    y = x[:, :10].argmax(1)
    return DataBundle(train_x=x, train_y=y, val_x=x[:60], val_y=y[:60], test_x=x[60:120], test_y=y[60:120],
                      spec=None)


def _tcfg(**kw) -> OmegaConf:
    # sparse kernels are public API and compared on their own (test_sparse_kernels); dense here isolates the switch
    return OmegaConf.create({"optimizer": "adam", "lr": 1e-3, "batch_size": 20, "chance_check": False,
                             "sparse_kernel": "dense", **kw})


def _train(safe: bool, monkeypatch, seed: int = 0, **kw) -> nn.Module:
    monkeypatch.setattr(onednn, "SAFE_TORCH", safe)
    model = _net(seed)
    train(model, _masks(model, seed), _data(), _tcfg(**kw), steps=30, eval_every=10, seed=seed)
    return model


def test_safe_torch_switch_turns_every_fast_path_off(monkeypatch):
    monkeypatch.setattr(onednn, "SAFE_TORCH", True)
    assert not onednn.fast_paths() and not onednn.available()
    assert onednn.resolve("auto", torch.device("cpu"), False) is False
    assert onednn.resolve("onednn", torch.device("cpu"), False) is False  # ATen, whatever was asked
    model = _net()
    assert LeanStep(make_optimizer(list(model.parameters()), _tcfg())).fast is False


def test_safe_torch_is_read_from_the_environment():
    code = "from sparse_run.engine import onednn; print(onednn.SAFE_TORCH, onednn.fast_paths(), onednn.available())"
    env = {**os.environ, "SPARSE_RUN_SAFE_TORCH": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "False"]


@pytest.mark.parametrize("optimizer, wd", [("adam", 0.0), ("adamw", 1e-2)])
def test_adam_trains_bit_identically_with_fast_paths_off(monkeypatch, optimizer, wd):
    """LeanStep's private fused kernel vs the public ``opt.step()``: the same weights, bit for bit."""
    fast = _train(False, monkeypatch, optimizer=optimizer, weight_decay=wd, linear_kernel="aten")
    safe = _train(True, monkeypatch, optimizer=optimizer, weight_decay=wd, linear_kernel="aten")
    for a, b in zip(fast.parameters(), safe.parameters()):
        assert torch.equal(a, b)


@pytest.mark.skipif(not onednn._probe(), reason="this PyTorch build has no working oneDNN linear kernel")
def test_onednn_training_matches_aten_fallback_within_float_tolerance(monkeypatch):
    fast = _train(False, monkeypatch, linear_kernel="onednn")
    safe = _train(True, monkeypatch, linear_kernel="onednn")  # the switch sends it through ATen
    aten = _train(False, monkeypatch, linear_kernel="aten")
    for a, b, c in zip(fast.parameters(), safe.parameters(), aten.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=ONEDNN_ATOL)
        assert torch.equal(b, c)  # the fallback is exactly ATen


def test_lean_step_falls_back_when_the_private_kernel_rejects_its_arguments(monkeypatch):
    """A torch whose ``_fused_adam_`` changed signature: the step goes through ``opt.step()`` from then on."""
    real, armed = torch._fused_adam_, [False]

    def changed(*args, **kwargs):
        if armed[0]:  # the call LeanStep makes (torch's own Adam calls the real kernel)
            armed[0] = False
            raise TypeError("_fused_adam_() got an unexpected keyword argument 'found_inf'")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_fused_adam_", changed)
    monkeypatch.setattr(onednn, "SAFE_TORCH", False)  # the fast path, even under SPARSE_RUN_SAFE_TORCH=1
    ref_model = _net()
    ref = make_optimizer(list(ref_model.parameters()), _tcfg())
    model = _net()
    step = LeanStep(make_optimizer(list(model.parameters()), _tcfg()))
    gen = torch.Generator().manual_seed(0)
    for i in range(5):
        x = torch.randn(8, 256, generator=gen)
        for m, do_step, opt in ((ref_model, ref.step, ref), (model, step, step.opt)):
            opt.zero_grad(set_to_none=True)
            m(x).pow(2).mean().backward()
            armed[0] = i == 1 and do_step is step  # step 0 creates the state through opt.step()
            do_step()
    assert step.fast is False and armed[0] is False
    for a, b in zip(ref_model.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_replicates_train_the_same_with_fast_paths_off(monkeypatch):
    """The lanes' mask multiplies without ``torch._foreach_mul_`` and Adam without the private kernel."""
    calls = []
    real = replicates._mul_all

    def spy(tensors, factors):
        calls.append(onednn.fast_paths())
        real(tensors, factors)

    monkeypatch.setattr(replicates, "_mul_all", spy)
    hook = lambda step, model, masks: None  # noqa: E731 - a hook makes the loop re-mask weights too
    out = {}
    for safe in (False, True):
        monkeypatch.setattr(onednn, "SAFE_TORCH", safe)
        lanes = [Lane(_net(s), _masks(_net(s), s), seed=s, hooks=[hook]) for s in (0, 1)]
        train_replicates(lanes, _data(), _tcfg(linear_kernel="aten"), steps=20, eval_every=10)
        out[safe] = [list(lane.model.parameters()) for lane in lanes]
    assert True in calls and False in calls
    for fast_lane, safe_lane in zip(out[False], out[True]):
        for a, b in zip(fast_lane, safe_lane):
            assert torch.equal(a, b)
