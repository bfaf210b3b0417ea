"""N:M sparsity: selection, STE / SR-STE / BDWP mechanics, FLOP accounting, the nm_mnist runner."""
from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import compose_cfg, run_cli
from sparse_run import export as export_mod
from sparse_run.config import ConfigError
from sparse_run.data import DataBundle, DataSpec
from sparse_run.engine.train import train
from sparse_run.execute import effective
from sparse_run.hardware.formats import decode_2of4, encode_2of4
from sparse_run.sparsity import MaskSet
from sparse_run.sparsity import flops as fl
from sparse_run.sparsity.nm import group_counts, keep_count, nm_mask, tail
from sparse_run.sparsity.patterns import is_nm
from sparse_run.sparsity.ste import BDWPFunction, NMTraining, bdwp_backward_mask

PATTERNS = [(2, 4), (1, 4), (1, 8), (1, 16), (4, 8), (3, 4), (2, 32)]


def reference_mask(groups: torch.Tensor, n: int) -> torch.Tensor:
    """Keep the N largest |w| of each row of ``groups`` (stable: earlier wins ties)."""
    order = torch.sort(groups.abs(), dim=1, descending=True, stable=True).indices[:, :n]
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(1, order, True)


@pytest.mark.parametrize("n, m", PATTERNS)
def test_linear_every_group_of_m_along_inputs_keeps_exactly_n_largest(n, m):
    w = torch.randn(6, 64, generator=torch.Generator().manual_seed(n * 100 + m))
    w[0, :m] = 0.5  # a tied group: the first N positions win
    mask = nm_mask(w, n, m)
    groups = w.reshape(6, 64 // m, m)
    assert (mask.reshape(6, -1, m).sum(-1) == n).all()
    assert torch.equal(mask.reshape(-1, m), reference_mask(groups.reshape(-1, m), n))
    assert mask[0, :n].all() and not mask[0, n:m].any()
    assert int(mask.sum()) == keep_count(w.shape, n, m) == w.numel() * n // m


@pytest.mark.parametrize("n, m", PATTERNS)
def test_conv_groups_run_along_input_channels_in_nhwc_order(n, m):
    w = torch.randn(5, 32, 3, 3, generator=torch.Generator().manual_seed(m))
    mask = nm_mask(w, n, m)
    nhwc = w.permute(0, 2, 3, 1).reshape(-1, m)  # [out, kh, kw, C_in] → groups of M channels
    assert torch.equal(mask.permute(0, 2, 3, 1).reshape(-1, m), reference_mask(nhwc, n))
    assert (mask.permute(0, 2, 3, 1).reshape(-1, m).sum(1) == n).all()
    assert (group_counts(mask, m) == n).all()


def test_ragged_rows_keep_at_most_n_in_the_partial_tail_group():
    w = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    for n, m, tail_keep in ((2, 4, 2), (3, 4, 2), (1, 4, 1)):
        mask = nm_mask(w, n, m)
        assert tail(w.shape, m) == 2
        assert (mask[:, :8].reshape(3, 2, m).sum(-1) == n).all()
        assert (mask[:, 8:].sum(1) == tail_keep).all()
        assert int(mask.sum()) == keep_count(w.shape, n, m)


def test_backward_mask_is_nm_along_outputs_and_differs_from_forward_mask():
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(3))
    e_in, e_out = nm_mask(w, 2, 4, dim=1), nm_mask(w, 2, 4, dim=0)
    assert (e_out.t().reshape(-1, 4).sum(1) == 2).all()  # groups of 4 consecutive outputs per input column
    assert torch.equal(e_out, reference_mask(w.t().reshape(-1, 4), 2).reshape(32, 16).t())
    assert not torch.equal(e_in, e_out)
    conv = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(4))
    assert (group_counts(nm_mask(conv, 1, 4, dim=0), 4, dim=0) == 1).all()


def _linear(w: list[list[float]]) -> nn.Linear:
    lin = nn.Linear(len(w[0]), len(w), bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w))
    return lin


def test_srste_weight_gradient_matches_hand_computed_example():
    # W = [1, -2, 0.5, 3] at 2:4 keeps |3| and |-2| → E = [0, 1, 0, 1]; loss = Σ y with x = [1, 2, 3, 4]
    lin = _linear([[1.0, -2.0, 0.5, 3.0]])
    NMTraining(lin, {"weight": (2, 4)}, "srste", decay=0.1, final_step=10)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    y = lin(x)
    assert y.item() == pytest.approx(-2 * 2 + 3 * 4)  # forward uses W ⊙ E
    y.sum().backward()
    # g(W̃) = x; SR-STE adds λ(1 − E) ⊙ W = 0.1 · [1, 0, 0.5, 0]
    assert torch.allclose(lin.weight.grad, torch.tensor([[1.1, 2.0, 3.05, 4.0]]))
    ste = _linear([[1.0, -2.0, 0.5, 3.0]])
    NMTraining(ste, {"weight": (2, 4)}, "ste", decay=0.1, final_step=10)  # ste ignores decay
    ste(x).sum().backward()
    assert torch.equal(ste.weight.grad, x)


def _toy_data(seed: int = 0) -> DataBundle:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 1, 4, 8, generator=gen)
    y = (x.flatten(1)[:, :10].argmax(1) % 4)
    return DataBundle(DataSpec("toy", (1, 4, 8), 4), x, y, x[:128], y[:128], x[:128], y[:128])


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))


def _train_variant(variant: str, decay: float, steps: int = 40, every: int = 0,
                   **kw) -> tuple[nn.Module, NMTraining, MaskSet]:
    model = _mlp()
    masks = MaskSet({"1.weight": model[1].weight})
    ctl = NMTraining(model, {"1.weight": (2, 4)}, variant, decay, final_step=steps)
    tcfg = compose_cfg("experiment=nm_mnist").train.copy()
    tcfg.update(batch_size=32, lr=0.05, checkpoint_every=every)
    train(model, masks, _toy_data(), tcfg, steps=steps, eval_every=10, seed=0, hooks=[ctl], **kw)
    return model, ctl, masks


def test_srste_with_zero_decay_is_bit_exact_ste_and_nonzero_decay_is_not():
    ste, ste_ctl, _ = _train_variant("ste", 0.0)
    zero, zero_ctl, _ = _train_variant("srste", 0.0)
    sr, _, _ = _train_variant("srste", 2e-2)
    for a, b in zip(ste.state_dict().values(), zero.state_dict().values()):
        assert torch.equal(a, b)
    assert ste_ctl.sad_history == zero_ctl.sad_history
    assert not torch.equal(ste[1].weight, sr[1].weight)


def test_dynamic_arm_ends_hard_pruned_with_exact_zeros():
    model, ctl, masks = _train_variant("srste", 2e-4)
    w, mask = model[1].weight, masks.masks["1.weight"]
    assert masks.violations() == {} and (w[~mask] == 0).all()
    assert (group_counts(mask, 4) == 2).all() and torch.equal(mask, ctl.final["1.weight"])
    assert "forward" not in model[1].__dict__  # plain forward again: the model is the exported one
    assert ctl.sad_cum == sum(f for _, f in ctl.sad_history) and len(ctl.sad_history) == 4


def test_resumed_dynamic_arm_equals_uninterrupted_including_sad():
    saved = {}
    full, full_ctl, _ = _train_variant("srste", 2e-3)
    _train_variant("srste", 2e-3, every=20, checkpoint=lambda s: saved.setdefault("s", copy.deepcopy(s)))
    assert saved["s"]["step"] == 20 and saved["s"]["hooks"][0]["sad_cum"] > 0
    resumed, res_ctl, _ = _train_variant("srste", 2e-3, resume=saved["s"])
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))
    assert full_ctl.sad_history == res_ctl.sad_history


@pytest.mark.parametrize("conv", [False, True])
def test_bdwp_gradients_use_the_output_mask_for_dx_and_stay_dense_for_dw(conv):
    gen = torch.Generator().manual_seed(5)
    if conv:
        x = torch.randn(2, 8, 5, 5, generator=gen, requires_grad=True)
        w = torch.randn(8, 8, 3, 3, generator=gen, requires_grad=True)
        args = {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1}
        op = lambda inp, weight: F.conv2d(inp, weight, None, **args)  # noqa: E731
    else:
        x = torch.randn(3, 16, generator=gen, requires_grad=True)
        w = torch.randn(8, 16, generator=gen, requires_grad=True)
        args = None
        op = lambda inp, weight: F.linear(inp, weight)  # noqa: E731
    e_in = nm_mask(w, 2, 4, dim=1)
    e_out = bdwp_backward_mask(w, e_in, 2, 4)
    y = BDWPFunction.apply(x, w, None, e_in, e_out, 0.0, args)
    r = torch.randn(y.shape, generator=gen)
    dx, dw = torch.autograd.grad((y * r).sum(), (x, w))
    assert torch.allclose(y, op(x, w * e_in), atol=1e-5)
    ref_dx = torch.autograd.grad((op(x, w.detach() * e_out) * r).sum(), x)[0]
    ref_dw = torch.autograd.grad((op(x.detach(), w) * r).sum(), w)[0]  # dense weight gradient
    assert torch.allclose(dx, ref_dx, atol=1e-5) and torch.allclose(dw, ref_dw, atol=1e-4)
    wrong_dx = torch.autograd.grad((op(x, w.detach() * e_in) * r).sum(), x)[0]
    assert not torch.allclose(dx, wrong_dx, atol=1e-3)


def test_flops_bdwp_2of8_is_half_of_dense_over_the_three_phases():
    shapes = {"w": torch.Size([64, 128])}
    costs = [fl.LayerCost("w", 64 * 128, input_grad=True)]
    dense = sum(fl.phase_flops(costs, 32, 10).values())

    def ratio(variant: str, n: int, m: int) -> float:
        return sum(fl.phase_flops(fl.with_pattern(costs, shapes, {"w": (n, m)}, variant), 32, 10).values()) / dense

    assert ratio("bdwp", 2, 8) == 0.5
    assert ratio("bdwp", 2, 4) == pytest.approx(2 / 3)
    assert ratio("srste", 2, 4) == pytest.approx(2.5 / 3)
    assert ratio("dense", 2, 8) == 1.0
    per_phase = fl.phase_flops(fl.with_pattern(costs, shapes, {"w": (2, 8)}, "bdwp"), 1, 1)
    assert per_phase == {"flops_fwd": 2 * 64 * 128 / 4, "flops_bwd_data": 2 * 64 * 128 / 4, "flops_wgrad": 2 * 64 * 128}


def test_flops_count_conv_positions_and_skip_the_first_layers_input_gradient():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    costs = fl.layer_macs(model, (4, 6, 6))
    assert [c.macs for c in costs] == [8 * 4 * 9 * 36, 288 * 10]
    assert [c.input_grad for c in costs] == [False, True]
    out = fl.arm_flops(costs, {"0.weight": model[0].weight.shape}, {"0.weight": (2, 4)}, "oneshot", 2, 5, dense_steps=5)
    assert out["flops_fwd"] == 2 * 2 * 5 * (8 * 4 * 9 * 36 * 1.5 + 2 * 288 * 10)
    assert 1 < out["train_flops_ratio"] < 2  # dense pre-training + N:M fine-tuning, over one dense run


@pytest.mark.parametrize("override, field", [
    ("method.selection.n=5", "method.selection.n"),
    ("method.selection.m=0", "method.selection.m"),
    ("method.selection.n=0", "method.selection.n"),
    ("method.schedule.variant=sr", "method.schedule.variant"),
    ("method.schedule.decay=-1", "method.schedule.decay"),
    ("+method.selection.overrides={hidden.1.weight: '3:2'}", "method.selection.overrides.hidden.1.weight"),
])
def test_invalid_nm_config_is_a_one_line_error(override, field):
    with pytest.raises(ConfigError) as e:
        effective(compose_cfg("method=nm", override))
    assert e.value.field == field and "\n" not in str(e.value)


def test_invalid_nm_on_the_command_line_is_one_line_and_writes_nothing(tmp_path):
    proc = run_cli("experiment=nm_mnist", "method.schedule.patterns=[2:4,5:4]", f"paths.results_dir={tmp_path}",
                   check=False, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "method.schedule.patterns[1]" in proc.stderr and "1 <= N <= M" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_nm_mnist_smoke_end_to_end(tmp_path):
    run_cli("experiment=nm_mnist", "budget=smoke", "threads=1", f"paths.results_dir={tmp_path}",
            "method.schedule.patterns=[1:8]", "method.schedule.bdwp_patterns=[2:8]", "method.schedule.dense_repeats=2",
            "+method.selection.overrides={hidden.1.weight: '2:4'}", env={"OMP_NUM_THREADS": "1"})
    run = next((tmp_path / "nm_mnist").iterdir())
    s = pd.read_csv(run / "summary.csv")
    assert sorted(s.variant) == ["bdwp", "dense", "dense", "oneshot", "srste", "ste"]
    assert set(s.pattern) == {"dense", "1:8/2:4", "2:8/2:4"}  # the per-layer override is visible
    assert (s.density == s.target_density).all() and (s.nonzeros == (s.density * s.prunable).round()).all()
    for col in ("flops_fwd", "flops_bwd_data", "flops_wgrad", "train_flops_ratio"):
        assert s[col].notna().all()
    assert (s.query("variant == 'dense'").train_flops_ratio == 1).all()
    assert (s.query("variant not in ['dense', 'oneshot']").train_flops_ratio < 1).all()
    assert 1.5 < s.query("variant == 'oneshot'").train_flops_ratio.item() < 2  # its dense pre-training counts
    assert s.query("variant == 'bdwp'").flops_bwd_data.item() < s.query("variant == 'ste'").flops_bwd_data.item()
    layers = pd.read_csv(run / "layers.csv").query("arm == 'srste/1:8/s0'").set_index("layer")
    assert layers.pattern.to_dict() == {"hidden.0.weight": "1:8", "hidden.1.weight": "2:4", "out.weight": "dense"}
    assert (layers.nonzeros == (layers.target_density * layers.numel)).all()
    metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    sad = [r for r in metrics if r["variant"] in ("ste", "srste", "bdwp")]
    assert sad and all(r["sad"] >= 0 and r["sad_cum"] >= r["sad"] for r in sad)
    assert (run / "figures" / "nm_accuracy.png").stat().st_size > 10_000
    assert (run / "figures" / "nm_sad.png").stat().st_size > 10_000
    final = torch.load(run / "checkpoints" / "final.pt", weights_only=True)  # the SR-STE arm, exported
    for name, (n, m) in {"hidden.0.weight": (1, 8), "hidden.1.weight": (2, 4)}.items():
        w, mask = final["model"][name], final["masks"][name]
        assert (w[~mask] == 0).all() and (group_counts(w != 0, m) <= n).all() and (group_counts(mask, m) == n).all()


# -- issue 12: one N:M grouping for conv weights (selection, check, 2:4 codec, export) ----------

def test_nm_check_groups_conv_weights_along_input_channels_as_selection_does():
    w = torch.randn(6, 8, 3, 3, generator=torch.Generator().manual_seed(7))
    assert is_nm(nm_mask(w, 2, 4), 2, 4)  # an N:M-selected conv passes the check export uses
    flat = nm_mask(w.reshape(6, -1), 2, 4).reshape(w.shape)  # 2:4 along the flattened in·kh·kw only
    assert not is_nm(flat, 2, 4)
    stem = nm_mask(torch.randn(4, 1, 5, 5), 2, 4)  # C_in = 1: one partial group of one channel
    assert stem.all() and is_nm(stem, 2, 4) and not is_nm(stem, 2, 4, strict=True)


def test_2of4_codec_round_trips_a_conv_weight_with_a_partial_channel_group():
    w = torch.randn(5, 6, 3, 3, generator=torch.Generator().manual_seed(8))  # C_in = 6: groups of 4 + 2
    w = w * nm_mask(w, 2, 4)
    parts = encode_2of4(w)
    assert parts["values"].shape == (5 * 3 * 3, 4)  # two groups per (out, kh, kw) row, two values each
    assert torch.equal(decode_2of4(parts, tuple(w.shape)), w)


def test_nm_trained_lenet5_exports_to_2of4_and_round_trips(tmp_path):
    run_cli("method=nm", "model=lenet5", "dataset=mnist", "budget=smoke", "threads=1",
            f"paths.results_dir={tmp_path}", env={"OMP_NUM_THREADS": "1"})
    run = next(p for p in tmp_path.rglob("final.pt")).parents[1]
    out = export_mod.export(run, "2of4", tmp_path / "2of4")
    meta = json.loads((out / "model.json").read_text())
    assert meta["check"]["ok"] and {"convs.0.weight", "convs.1.weight", "fc.0.weight"} <= set(meta["masked"])
    _, model, masks, _, x = export_mod._final(run)
    with torch.no_grad():
        assert torch.equal(export_mod.load(out)(x[:32]), model(x[:32]))
    assert (group_counts(masks.masks["convs.1.weight"], 4) == 2).all()  # trained N:M along C_in (NHWC)


# -- issue 12: training-FLOPs ratios on one denominator ------------------------------------------

def test_train_flops_ratio_of_every_arm_is_over_one_dense_run_of_the_schedule():
    shapes = {"w": torch.Size([64, 128])}
    costs = [fl.LayerCost("w", 64 * 128, input_grad=True)]

    def ratio(variant: str, dense_steps: int = 0) -> float:
        return fl.arm_flops(costs, shapes, {"w": (2, 4)}, variant, 32, 10, dense_steps)["train_flops_ratio"]

    assert ratio("dense") == 1.0
    assert ratio("srste") == pytest.approx(2.5 / 3) and ratio("bdwp") == pytest.approx(2 / 3)
    assert ratio("oneshot", dense_steps=10) == pytest.approx(1 + 2.5 / 3)  # dense pre-training + fine-tune


# -- issue 12: BDWP's backward mask ----------------------------------------------------------------

def test_bdwp_backward_mask_re_prunes_the_forward_sparse_weights_along_outputs():
    w = torch.tensor([[9.0, 8, 7, 1], [7, 6, 1, 1], [6, 1, 5, 4], [1, 1, 3, 2]])
    e_in = nm_mask(w, 2, 4)
    assert e_in.int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1]]
    e_out = bdwp_backward_mask(w, e_in, 2, 4)
    # per input column, the 2 largest |w| among the forward-kept outputs: column 0 drops 6 (3 kept
    # in forward), column 3 keeps only its one forward weight; a dense-|W| mask would take 7 and 4
    assert e_out.int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    assert not (e_out & ~e_in).any()


@pytest.mark.parametrize("conv", [False, True])
def test_bdwp_backward_pass_uses_only_weights_of_the_forward_mask(conv):
    gen = torch.Generator().manual_seed(9)
    torch.manual_seed(9)
    layer = nn.Conv2d(8, 8, 3, padding=1, bias=False) if conv else nn.Linear(16, 8, bias=False)
    x = torch.randn((2, 8, 5, 5) if conv else (3, 16), generator=gen, requires_grad=True)
    ctl = NMTraining(layer, {"weight": (2, 4)}, "bdwp", 0.0, final_step=10)
    y = layer(x)
    r = torch.randn(y.shape, generator=gen)
    dx = torch.autograd.grad((y * r).sum(), x)[0]
    w = layer.weight.detach()
    e_in, e_out = ctl.layers[0].masks()
    assert torch.equal(e_out, bdwp_backward_mask(w, e_in, 2, 4)) and not (e_out & ~e_in).any()
    assert (group_counts(e_out, 4, dim=0) <= 2).all()
    ref = F.conv2d if conv else F.linear
    kw = {"padding": 1} if conv else {}
    x2 = x.detach().requires_grad_(True)
    want = torch.autograd.grad((ref(x2, w * e_out, **kw) * r).sum(), x2)[0]
    assert torch.allclose(dx, want, atol=1e-5)
