"""Sparse kernels in the training loop (``train.sparse_kernel``): each kernel's defining products against
``F.linear`` on the masked weight, the loop on sparse kernels against the dense loop, the ``auto`` choice
(measured, remembered, restored on resume, falling back to dense), and the configuration errors."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from sparse_run import models
from sparse_run.config import ConfigError
from sparse_run.data.spec import DataBundle, DataSpec
from sparse_run.engine import kernels, timing
from sparse_run.engine import sparse_linear as sl
from sparse_run.engine.train import train
from sparse_run.sparsity import MaskSet, prunable
from tests.conftest import compose_cfg

CPP = sl.cpp_module() is not None
SPARSE = ["csr", pytest.param("cpp", marks=pytest.mark.skipif(not CPP, reason=f"C++ kernel {sl.cpp_status()}"))]
FNS = {"csr": sl.linear, "cpp": sl.linear_cpp}
SPEC = DataSpec("toy", (1, 28, 28), 10)


def _layer(out: int, inp: int, density: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(out, inp, generator=gen) < density
    return (torch.randn(out, inp, generator=gen) * mask).requires_grad_(), torch.randn(out, generator=gen), mask


@pytest.mark.parametrize("kind", SPARSE)
@pytest.mark.parametrize("batch", [1, 13, 60])
def test_sparse_products_equal_the_masked_dense_layer(kind, batch):
    """forward W x + b, input gradient Wᵀ g and weight gradient g xᵀ restricted to the mask, for batches
    that are and are not multiples of the C++ kernel's vector width."""
    w, b, mask = _layer(37, 50, 0.1)
    b.requires_grad_()
    x = torch.randn(batch, 50, requires_grad=True)
    gy = torch.randn(batch, 37)
    y = FNS[kind](x, w, b, sl.Plan.of(mask))
    gx, gw, gb = torch.autograd.grad(y, [x, w, b], gy)
    ref = F.linear(x, w, b)
    rx, rw, rb = torch.autograd.grad(ref, [x, w, b], gy)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, rw * mask, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gb, rb)
    assert not gw[~mask].any()  # exactly zero off the mask, by construction
    with torch.no_grad():  # evaluation: the bare kernel, leading dimensions kept
        x3 = torch.randn(2, 3, 50)
        torch.testing.assert_close(FNS[kind](x3, w, None, sl.Plan.of(mask)), F.linear(x3, w), rtol=1e-5, atol=1e-5)
    # packed: W's gradient goes to plan.grad as the kept values (pos order), autograd's W.grad stays unset
    plan = sl.Plan.of(mask)
    w.grad = None
    FNS[kind](x, w, b, plan, packed_grad=True).backward(gy)
    assert w.grad is None
    torch.testing.assert_close(plan.grad, rw.reshape(-1)[plan.pos], rtol=1e-5, atol=1e-5)
    FNS[kind](x, w, b, plan, packed_grad=True).backward(gy)  # a second use in one step accumulates
    torch.testing.assert_close(plan.grad, 2 * rw.reshape(-1)[plan.pos], rtol=1e-5, atol=1e-5)


def test_plan_holds_the_mask_and_its_transpose():
    mask = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 1]], dtype=torch.bool)
    p = sl.Plan.of(mask)
    assert p.crow.tolist() == [0, 2, 2, 4] and p.col.tolist() == [0, 2, 1, 2] and p.pos.tolist() == [0, 2, 7, 8]
    assert p.crow_t.tolist() == [0, 1, 2, 4] and p.col_t.tolist() == [0, 2, 0, 2] and p.pos_t.tolist() == [0, 7, 2, 8]
    assert p.nnz == 4 and p.density == pytest.approx(4 / 9)


def toy_data(n: int = 1200) -> DataBundle:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(n, 1, 28, 28, generator=gen)
    y = (x.flatten(1)[:, :10].argmax(1) + (x.flatten(1)[:, 10] > 1).long()) % 10  # learnable, not trivial
    return DataBundle(SPEC, x, y, x[:200], y[:200], x[200:400], y[200:400])


def lenet(density: float, seed: int = 0) -> tuple[nn.Module, MaskSet]:
    cfg = compose_cfg("experiment=lottery_mnist")
    model = models.build(cfg.model, SPEC, seed)
    masks = MaskSet(prunable(model, cfg.method.policy))
    gen = torch.Generator().manual_seed(100 + seed)
    masks.set({n: torch.rand(m.shape, generator=gen) < density for n, m in masks.masks.items()})
    return model, masks


def tcfg(**kw):
    t = compose_cfg("experiment=lottery_mnist").train.copy()
    t.update(chance_check=False, **kw)
    return t


@pytest.mark.parametrize("kind", SPARSE)
def test_lth_at_7_percent_trains_on_sparse_kernels_like_dense(kind):
    """100 Adam steps of LeNet-300-100 at 7 % density: the sparse loop follows the dense loop's loss trajectory
    (same maths, another summation order: measured |Δ loss| ~1e-6 relative here; 1e-3 leaves room for other
    CPUs without hiding a wrong gradient, which moves the loss by ~1e-2 within ten steps), pruned weights stay
    exactly zero, and the row records the kernel."""
    data = toy_data()
    runs = {}
    for k in ("dense", kind):
        model, masks = lenet(0.07)
        runs[k] = (train(model, masks, data, tcfg(sparse_kernel=k), steps=100, eval_every=10, seed=0), model, masks)
    (ref, mref, _), (got, mgot, masks) = runs["dense"], runs[kind]
    for a, b in zip(ref.history, got.history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-3)
    for (name, a), b in zip(mref.named_parameters(), mgot.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)
    assert masks.violations() == {}
    assert got.extra["kernels"] == f"hidden.0={kind}/{kind} hidden.1={kind}/{kind} out={kind}/{kind}"
    assert ref.extra["kernels"] == "dense"


@pytest.mark.parametrize("kind", SPARSE)
def test_sparse_kernels_leave_no_gradient_to_leak_off_the_mask(kind, monkeypatch):
    """Without gradient masking the dense path breaks the mask (test_train_loop checks the alarm fires);
    a sparse kernel computes the weight gradient on the mask only, so pruned weights stay exactly zero."""
    monkeypatch.setattr(MaskSet, "mask_grads_", lambda self: None)
    model, masks = lenet(0.07)
    train(model, masks, toy_data(), tcfg(sparse_kernel=kind), steps=30, eval_every=10, seed=0)
    assert masks.violations() == {}


def fake_timer(winner: str, calls: list | None = None):
    """A timer that reports ``winner`` 2x faster than everything else (and records what it was asked)."""
    def timer(fns):
        if calls is not None:
            calls.append(sorted(fns))
        fast = {winner} if winner in ("onednn", "aten") else {k for k in fns if (k == "dense") == (winner == "dense")}
        return {k: (1e-4 if k in fast else 2e-4) for k in fns}
    return timer


@pytest.mark.parametrize("winner", ["dense", "cpp" if CPP else "csr"])
def test_auto_takes_what_measures_faster_and_falls_back_to_dense(winner):
    """``auto`` times dense against the sparse kernels on each layer's real input, once for training and once
    for evaluation, and takes the faster; dense stays when the sparse path is slower."""
    model, masks = lenet(0.05)
    calls: list = []
    with kernels.use(model, masks, "auto", timer=fake_timer(winner, calls), memory=None) as kern:
        train(model, masks, toy_data(), tcfg(sparse_kernel="dense"), steps=3, eval_every=3, seed=0)  # loop unpatched
        out = model(torch.randn(60, 1, 28, 28))
        out.sum().backward()  # the training choice
        with torch.no_grad():
            model(torch.randn(500, 1, 28, 28))  # the evaluation choice
    sparse = "cpp" if CPP else "csr"
    assert all(c == sorted(["dense", sparse]) for c in calls) and len(calls) == 6  # 3 layers x (train, eval)
    summary = kern.summary()
    assert summary == ("dense" if winner == "dense" else f"hidden.0={sparse}/{sparse} hidden.1={sparse}/{sparse} "
                                                         f"out={sparse}/{sparse}")
    assert all(not m.__dict__.get("forward") for m in model.modules() if isinstance(m, nn.Linear))  # unpatched


def test_auto_does_not_measure_dense_masks_or_high_densities():
    model, masks = lenet(0.5)
    calls: list = []
    with kernels.use(model, masks, "auto", timer=fake_timer("csr", calls), memory=None) as kern:
        model(torch.randn(8, 1, 28, 28)).sum().backward()
    assert calls == [] and kern.summary() == "dense"


def test_a_mask_change_rebuilds_the_plan_and_remeasures_only_when_density_moves():
    """Dynamic sparse training swaps weights at constant density: the plan follows the new mask without
    measuring again; a pruning step that moves the density by more than 10 % measures again."""
    model, masks = lenet(0.05)
    calls: list = []
    gen = torch.Generator().manual_seed(5)
    with kernels.use(model, masks, "auto", timer=fake_timer("csr", calls), memory=None):
        x = torch.randn(20, 1, 28, 28)
        model(x).sum().backward()
        assert len(calls) == 3
        swapped = {n: m[torch.randperm(m.numel(), generator=gen)].view(m.shape) if m.dim() == 1 else
                   m.flatten()[torch.randperm(m.numel(), generator=gen)].view(m.shape) for n, m in masks.masks.items()}
        masks.set(swapped)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_()
            masks.apply_()
        y = model(x)
        assert len(calls) == 3  # same density: no new measurement
        torch.testing.assert_close(y, _dense_forward(model, x), rtol=1e-4, atol=1e-4)  # ... but the new mask
        masks.set({n: m & (torch.rand(m.shape, generator=gen) < 0.5) for n, m in masks.masks.items()})
        model(x).sum().backward()
        assert len(calls) == 6


def _dense_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = x.flatten(1)
    for lin in (model.hidden[0], model.hidden[1]):
        h = torch.relu(F.linear(h, lin.weight, lin.bias))
    return F.linear(h, model.out.weight, model.out.bias)


def test_choices_are_remembered_per_machine(tmp_path):
    """A second run on the same machine takes the remembered choice without measuring; a file written under
    another fingerprint, or damaged, is ignored (measured again and rewritten)."""
    path = tmp_path / "kernels.json"
    x = torch.randn(20, 1, 28, 28)
    for expect_calls in (3, 0):
        model, masks = lenet(0.05)
        calls: list = []
        with kernels.use(model, masks, "auto", timer=fake_timer("csr", calls), memory=kernels.Memory(path)) as kern:
            model(x).sum().backward()
        assert len(calls) == expect_calls and kern.summary().startswith(f"hidden.0={'cpp' if CPP else 'csr'}/")
    doc = json.loads(path.read_text())
    assert len(doc["choices"]) == 3 and all(e["choice"] != "dense" for e in doc["choices"].values())
    for text in (json.dumps({**doc, "fingerprint": "another machine"}), "{not json"):
        path.write_text(text)
        model, masks = lenet(0.05)
        calls = []
        with kernels.use(model, masks, "auto", timer=fake_timer("dense", calls), memory=kernels.Memory(path)):
            model(x).sum().backward()
        assert len(calls) == 3
        assert json.loads(path.read_text())["fingerprint"] != "another machine"


@pytest.mark.parametrize("kind", ["auto", "cpp" if CPP else "csr"])
def test_resume_mid_arm_is_identical_and_keeps_the_choices(kind, monkeypatch):
    """A run checkpointed mid-arm and resumed equals the uninterrupted run bit for bit; under ``auto`` the
    resumed half uses the checkpoint's choices even where a new measurement would choose otherwise."""
    data, t = toy_data(), tcfg(sparse_kernel=kind, checkpoint_every=30)
    monkeypatch.setattr(kernels, "MEMORY", kernels.Memory(None))
    monkeypatch.setattr(kernels, "median_s", fake_timer("csr"))
    model, masks = lenet(0.05)
    states: list = []
    full = train(model, masks, data, t, steps=60, eval_every=20, seed=0,
                 checkpoint=lambda st: states.append(copy.deepcopy(st)))
    monkeypatch.setattr(kernels, "median_s", fake_timer("dense"))  # a re-measurement would now pick dense
    model2, masks2 = lenet(0.05, seed=1)
    resumed = train(model2, masks2, data, t, steps=60, eval_every=20, seed=0, resume=states[0])
    assert states[0]["step"] == 30
    assert resumed.history == full.history
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert resumed.extra["kernels"] == full.extra["kernels"] != "dense"


@pytest.mark.parametrize("override, words", [
    ("train.sparse_kernel=fast", "train.sparse_kernel"),
    ("train.sparse_kernel=csr train.replicates=2", "train.sparse_kernel"),
    ("train.sparse_kernel=cpp train.compile=true", "train.sparse_kernel"),
])
def test_bad_sparse_kernel_settings_are_one_line_errors(override, words):
    from sparse_run.methods import validate

    cfg = compose_cfg("experiment=lottery_mnist", "budget=smoke", *override.split())
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_the_kernel_memory_default_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSE_RUN_KERNELS", str(tmp_path / "k.json"))
    assert timing._default_path() == tmp_path / "k.json"
    assert OmegaConf.select(compose_cfg(), "train.sparse_kernel") == "auto"


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_packed_adam_on_sparse_layers_equals_the_dense_step(optimizer):
    """With fixed masks, sparse-kernel layers step only their kept weights (no gradient mask either): Adam is
    elementwise and leaves pruned entries (zero gradient, zero state, zero weight) exactly as they are, so the
    weights equal a run that steps every entry (here one with a no-op hook, which turns packing off) up to
    the last bit."""
    data, t = toy_data(), tcfg(sparse_kernel="cpp" if CPP else "csr", optimizer=optimizer, weight_decay=1e-3)
    models_ = []
    for hooks in (None, [lambda step, model, masks: None]):
        model, masks = lenet(0.05)
        train(model, masks, data, t, steps=40, eval_every=20, seed=0, hooks=hooks)
        assert masks.violations() == {}
        models_.append(model)
    for a, b in zip(*(m.parameters() for m in models_)):
        # the fused kernel's vector body and scalar tail round differently, so an entry that moves between them
        # may differ in its last bit (measured: 4 of 235,200 entries, 4e-9, after 40 steps)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_packed_gradients_only_where_nothing_reads_dense_ones():
    """Sparse-kernel layers leave their gradient packed for the optimizer, except when gradient clipping (which
    needs every gradient's norm) runs: then W.grad is dense, zero off the mask, and clipping sees it."""
    data = toy_data()
    seen = {}
    for clip in (None, 1e-3):
        model, masks = lenet(0.05)
        grads = []
        orig = torch.nn.utils.clip_grad_norm_
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.nn.utils, "clip_grad_norm_",
                       lambda ps, *a, **k: (grads.append([q.grad is not None for q in ps]), orig(ps, *a, **k))[1])
            res = train(model, masks, data, tcfg(sparse_kernel="cpp" if CPP else "csr", grad_clip=clip), steps=20,
                        eval_every=10, seed=0)
        assert masks.violations() == {}
        seen[clip] = (res.history[-1]["train_loss"], grads)
    assert seen[None][1] == [] and seen[1e-3][1] and all(all(g) for g in seen[1e-3][1])
    assert seen[None][0] != seen[1e-3][0]  # a tiny clip norm changes the run: clipping saw the gradients


@pytest.mark.skipif(not __import__("sparse_run.engine.onednn", fromlist=["x"])._probe(), reason="no oneDNN kernel")
@pytest.mark.parametrize("winner", ["onednn", "aten"])
def test_linear_kernel_auto_measures_onednn_instead_of_assuming_it(winner, monkeypatch, tmp_path):
    """``train.linear_kernel=auto`` takes oneDNN only where it measures faster than ATen (it loses on AVX2-only
    CPUs), remembers the verdict, and an explicit ``onednn`` / ``aten`` is taken as asked."""
    from sparse_run.engine import onednn

    calls: list = []
    monkeypatch.setattr(timing, "MEMORY", timing.Memory(tmp_path / "k.json"))
    monkeypatch.setattr(timing, "median_s", fake_timer(winner, calls))
    cpu = torch.device("cpu")
    assert onednn.resolve("auto", cpu, False) is (winner == "onednn")
    assert onednn.resolve("auto", cpu, False) is (winner == "onednn") and len(calls) == 1  # remembered
    assert calls[0] == ["aten", "onednn"]
    assert onednn.resolve("onednn", cpu, False) is True and onednn.resolve("aten", cpu, False) is False
    assert onednn.resolve("auto", cpu, True) is False  # torch.compile picks its own kernels


def test_packed_weights_reach_the_dense_weight_when_the_mask_changes():
    """While the optimizer holds a layer's kept weights packed (``Plan.values``) the kernels read them there; a mask
    change writes them back into the dense weight first and applies the new mask, so the rebuilt plan starts from the
    trained values and newly pruned weights are exactly zero."""
    model, masks = lenet(0.1)
    layer = model.get_submodule("hidden.0")
    name = next(n for n, q in masks.params.items() if q is layer.weight)
    x = torch.randn(60, 1, 28, 28)
    with kernels.use(model, masks, "cpp" if CPP else "csr", memory=None) as kern:
        model(x).sum().backward()
        plan = kern.sparse_trained()[layer.weight]
        with torch.no_grad():
            before = model(x)
        stepped = layer.weight.detach().view(-1).index_select(0, plan.pos) + 1.0
        plan.values, plan.dirty = stepped.clone(), True  # as LeanStep leaves them after a step
        with torch.no_grad():
            assert not torch.equal(model(x), before)  # the kernels read the packed values, not the stale dense weight
        kept = masks.masks[name].clone()
        kept.view(-1)[plan.pos[::2]] = False  # prune every other kept weight
        masks.set({**masks.clone_masks(), name: kept})
        with torch.no_grad():
            model(x)
        assert kern.sparse_trained()[layer.weight] is not plan and plan.values is None
    w = layer.weight.detach().view(-1)
    assert torch.equal(w[plan.pos[1::2]], stepped[1::2])
    assert not w[plan.pos[::2]].any() and not layer.weight[~kept].any()
