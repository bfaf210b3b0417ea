"""Hardware targets: verdict logic on synthetic timings, structured patterns, formats, converted
executions and the slim model reproduce the masked model, and target / method constraints."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import compose_cfg
from sparse_run import hardware, methods
from sparse_run.config import ConfigError
from sparse_run.execute import effective
from sparse_run.hardware import slim as slim_mod
from sparse_run.hardware.execute import convert
from sparse_run.hardware.formats import bytes_2of4, bytes_bsr, bytes_csr, decode_2of4, encode_2of4
from sparse_run.hardware.kernels import breakeven
from sparse_run.hardware.timing import PeakMemory, Protocol, speedup, verdict
from sparse_run.sparsity import MaskSet
from sparse_run.sparsity.patterns import is_block_shaped, is_nm, prune_fraction_pattern
from sparse_run.sparsity.selection import prune_fraction

PROTO = Protocol(rounds=15, bootstrap=2000, seed=0)


# -- verdicts from synthetic samples --------------------------------------------------------------

@pytest.mark.parametrize("ratio, expected", [(2.0, "faster"), (0.5, "slower"), (1.0, "no faster")])
def test_verdict_follows_the_interval(ratio, expected):
    rng = np.random.default_rng(0)
    dense = 1e-3 * (1 + 0.05 * rng.standard_normal(15))
    sparse = dense / ratio * (1 + 0.05 * rng.standard_normal(15))
    sp = speedup(dense, sparse, PROTO)
    assert sp.lo <= sp.median <= sp.hi
    assert sp.verdict == expected
    assert abs(sp.median - ratio) < 0.1 * ratio


def test_noisy_small_gain_is_no_faster_and_verdict_edges():
    rng = np.random.default_rng(1)
    dense = 1e-3 * (1 + 0.5 * rng.standard_normal(15)).clip(0.2)
    sparse = dense / 1.03 * (1 + 0.5 * rng.standard_normal(15)).clip(0.2)
    assert speedup(dense, sparse, PROTO).verdict == "no faster"
    assert verdict(1.0001, 3) == "faster" and verdict(0.5, 0.9999) == "slower" and verdict(1.0, 1.0) == "no faster"


def test_pairing_cancels_drift():
    """A machine that slows down 3× during the measurement must not bias the paired ratio."""
    drift = np.linspace(1, 3, 15)
    sp = speedup(1e-3 * drift, 0.5e-3 * drift, PROTO)
    assert sp.median == pytest.approx(2.0) and sp.verdict == "faster"


def test_peak_memory_counts_new_activations_not_weights():
    lin = nn.Linear(100, 1000)
    x = torch.randn(64, 100)
    with torch.no_grad(), PeakMemory() as mode:
        lin(x)
    assert mode.peak == 64 * 1000 * 4


# -- patterns -------------------------------------------------------------------------------------

def _maskset(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = {f"l{i}.weight": nn.Parameter(torch.randn(s, generator=gen)) for i, s in enumerate(shapes)}
    return MaskSet(params)


@pytest.mark.parametrize("scope", ["layerwise", "global"])
@pytest.mark.parametrize("block", [[4, 4], [1, 4], [4, 1]])
def test_block_masks_are_block_shaped_with_exact_block_counts(scope, block):
    masks = _maskset((32, 64), (16, 32))
    sel = OmegaConf.create({"pattern": "block", "block": block})
    scales = {n: 1.0 for n in masks.names()}
    r, c = block
    nblocks = {n: m.numel() // (r * c) for n, m in masks.masks.items()}
    for _ in range(3):  # iterative: never revives, stays block-shaped
        before = masks.clone_masks()
        scores = {n: p.detach().abs() for n, p, _ in masks}
        masks.set(prune_fraction(scores, masks, 0.3, scales, scope, sel))
        for n, m in masks.masks.items():
            assert is_block_shaped(m, r, c)
            assert not (m & ~before[n]).any()
    alive = {n: int(m.sum()) // (r * c) for n, m in masks.masks.items()}
    if scope == "layerwise":
        for n, total in nblocks.items():
            expected = total
            for _ in range(3):
                expected -= round(expected * 0.3)
            assert alive[n] == expected
    else:
        expected = sum(nblocks.values())
        for _ in range(3):
            expected -= round(expected * 0.3)
        assert sum(alive.values()) == expected


def test_block_selection_keeps_the_highest_pooled_blocks():
    w = torch.zeros(4, 8)
    w[:2, 4:6] = 5.0   # the strongest 2x2 block
    w[2:, :2] = 1.0
    masks = MaskSet({"w": nn.Parameter(w.clone())})
    kept = prune_fraction_pattern({"w": w.abs()}, masks, 0.75, {"w": 1.0}, "layerwise",
                                  OmegaConf.create({"pattern": "block", "block": [2, 2]}))["w"]
    assert kept.sum() == 8 and kept[:2, 4:6].all() and kept[2:, :2].all()


def test_channel_pattern_removes_whole_rows_and_unstructured_stays_default():
    masks = _maskset((10, 20, 3, 3))  # a conv: channel = whole filter
    scores = {n: p.detach().abs() for n, p, _ in masks}
    chan = prune_fraction(scores, masks, 0.3, {"l0.weight": 1.0}, "layerwise",
                          OmegaConf.create({"pattern": "channel"}))["l0.weight"]
    rows = chan.reshape(10, -1)
    assert (rows.all(1) | ~rows.any(1)).all() and int(rows.all(1).sum()) == 7
    plain = prune_fraction(scores, masks, 0.3, {"l0.weight": 1.0}, "layerwise")
    same = prune_fraction(scores, masks, 0.3, {"l0.weight": 1.0}, "layerwise",
                          OmegaConf.create({"pattern": "unstructured"}))
    assert torch.equal(plain["l0.weight"], same["l0.weight"]) and int(plain["l0.weight"].sum()) == 1260


# -- formats --------------------------------------------------------------------------------------

def test_2of4_codec_round_trips_exactly_and_rejects_other_masks():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 16, generator=gen)
    keep = torch.zeros(8, 4, 4, dtype=torch.bool)
    idx = torch.rand(8, 4, 4, generator=gen).argsort(-1)[..., :2]
    keep.scatter_(-1, idx, True)
    keep[0, 0] = False  # a group with no survivors
    w = w * keep.reshape(8, 16)
    assert is_nm(w != 0, 2, 4)
    parts = encode_2of4(w)
    assert parts["values"].shape == (8, 8) and parts["positions"].dtype == torch.uint8
    assert torch.equal(decode_2of4(parts, (8, 16)), w)
    w[0, :3] = 1.0
    with pytest.raises(ValueError):
        encode_2of4(w)


def test_byte_counts():
    assert bytes_csr(nnz=10, rows=4) == 10 * 8 + 5 * 4
    assert bytes_2of4(4096) == 2048 * 2 + 512
    m = torch.zeros(8, 8, dtype=torch.bool)
    m[:4, :4] = True
    m[7, 7] = True  # one entry still costs a whole 4x4 block
    assert bytes_bsr(m, (4, 4)) == 2 * (16 * 4 + 4) + 3 * 4


# -- executions reproduce the masked model --------------------------------------------------------

def _mlp_with(masks_fn, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    masks = {n: masks_fn(p) for n, p in model.named_parameters() if n.endswith("weight")}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    return model.eval(), masks


@pytest.mark.parametrize("execution", ["csr", "bsr"])
def test_sparse_executions_match_the_masked_model(execution):
    block = lambda p: (torch.rand(p.shape[0] // 2, p.shape[1] // 2) < 0.3).repeat_interleave(2, 0).repeat_interleave(2, 1)
    model, masks = _mlp_with(block)
    conv = convert(model, masks, execution, block=(2, 2))
    assert set(conv.status.values()) == {"ok"}
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.allclose(conv.model(x), model(x), atol=1e-5)


def test_pointwise_conv_runs_as_spmm():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 1, stride=2)
    mask = torch.rand(8, 16, 1, 1) < 0.3
    with torch.no_grad():
        conv.weight.mul_(mask)
    net = nn.Sequential(conv).eval()
    out = convert(net, {"0.weight": mask}, "csr")
    x = torch.randn(2, 16, 9, 9)
    assert out.status["0"] == "ok"
    with torch.no_grad():
        assert torch.allclose(out.model(x), net(x), atol=1e-5)


def test_slim_mlp_drops_dead_neurons_and_folds_their_bias():
    model, masks = _mlp_with(lambda p: torch.ones_like(p, dtype=torch.bool))
    masks["1.weight"][[0, 5, 9]] = False   # three dead neurons in the first hidden layer
    masks["3.weight"][[2]] = False
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n])
        model[1].bias.fill_(0.3)           # dead neurons emit relu(0.3): must be folded, not dropped
    x = torch.randn(20, 64)
    small, plan = slim_mod.slim(model, masks, x)
    assert small[1].out_features == 29 and small[3].in_features == 29 and small[3].out_features == 15
    assert small[5].in_features == 15 and small[5].out_features == 10  # the classes stay
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5)


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 6, 3, padding=0)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.c1(x)))
        x = torch.relu(self.c2(x))
        return self.fc(torch.flatten(x, 1))


def test_slim_conv_bn_flatten_chain_is_exact():
    torch.manual_seed(0)
    model = ConvBN().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.bias.fill_(-5.0)  # dead filters → BN → relu = 0: removable even before a padded conv
    masks = {"c1.weight": torch.ones(8, 3, 3, 3, dtype=torch.bool), "c2.weight": torch.ones(6, 8, 3, 3, dtype=torch.bool)}
    masks["c1.weight"][[1, 4]] = False
    masks["c2.weight"][[0]] = False
    with torch.no_grad():
        model.c1.weight.mul_(masks["c1.weight"])
        model.c2.weight.mul_(masks["c2.weight"])
    x = torch.randn(4, 3, 6, 6)
    small, plan = slim_mod.slim(model, masks, x)
    assert small.c1.out_channels == 6 and small.bn.num_features == 6 and small.c2.in_channels == 6
    assert small.c2.out_channels == 5 and small.fc.in_features == 5 * 16
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(torch.relu(self.a(x)) + self.b(x))


def test_slim_keeps_channels_it_cannot_remove_exactly():
    model = Residual().eval()
    masks = {"a.weight": torch.ones(8, 8, dtype=torch.bool)}
    masks["a.weight"][3] = False
    with torch.no_grad():
        model.a.weight.mul_(masks["a.weight"])
    x = torch.randn(4, 8)
    small, plan = slim_mod.slim(model, masks, x)
    assert "a" in plan.kept_reason and small.a.out_features == 8
    with torch.no_grad():
        assert torch.allclose(small(x), model(x))


# -- target / method constraints ------------------------------------------------------------------

def _checked(*overrides):
    cfg = effective(compose_cfg(*overrides))
    hardware.check(cfg, methods.selects(cfg))
    return cfg


def test_cuda_2of4_with_an_unstructured_method_is_rejected():
    with pytest.raises(ConfigError) as e:
        _checked("experiment=lottery_mnist", "hardware=cuda_2of4")
    msg = str(e.value)
    assert msg.startswith("method.selection.pattern:") and "allowed: nm with n=2, m=4" in msg and "\n" not in msg


def test_block_and_slim_targets_switch_the_pattern_and_say_so(capsys):
    cfg = _checked("experiment=lottery_mnist", "hardware=cpu_block", "hardware.block=[8,8]")
    assert cfg.method.selection.pattern == "block" and list(cfg.method.selection.block) == [8, 8]
    cfg = _checked("experiment=lottery_mnist", "hardware=slim")
    assert cfg.method.selection.pattern == "channel" and cfg.method.policy.prune_last is False
    err = capsys.readouterr().err
    assert "unstructured -> block 8x8" in err and "unstructured -> channel" in err


@pytest.mark.parametrize("overrides, field", [
    (["hardware=cpu_block", "hardware.block=[4,1]"], "hardware.block"),
    (["hardware=cpu_block", "+method.selection.block=[2,2]", "method.selection.pattern=block"],
     "method.selection.block"),
    (["hardware=cpu_sparse", "hardware.rounds=1"], "hardware.rounds"),
    (["hardware=cpu_sparse", "hardware.index_dtype=int16"], "hardware.index_dtype"),
    (["method.selection.pattern=channel"], "method.policy.prune_last"),
])
def test_bad_hardware_settings_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as e:
        _checked("experiment=lottery_mnist", *overrides)
    assert e.value.field == field


def test_breakeven_interpolates_the_crossing():
    import pandas as pd

    df = pd.DataFrame({"shape_label": "s", "pattern": "unstructured", "backend": "torch_csr", "status": "ok",
                       "sparsity": [0.5, 0.7, 0.9], "speedup": [0.5, 0.9, 1.9],
                       "verdict": ["slower", "slower", "faster"], "c_in": 1, "c_out": 1, "hw": 1})
    be = breakeven(df).iloc[0]
    assert be.breakeven_sparsity == pytest.approx(0.72) and be.first_faster_sparsity == 0.9
    never = breakeven(df.assign(speedup=[0.1, 0.2, 0.3])).iloc[0]
    assert math.isnan(never.breakeven_sparsity) and "never" in never.note


def test_submodules_do_not_shadow_the_entry_points():
    import sparse_run.hardware.measurement  # noqa: F401  (a submodule named `measure` once replaced the function)

    assert callable(hardware.measure) and callable(hardware.check)
