"""Parameter sharing's index maps (issue 16 groundwork): RandomFold bijective at m ≥ n and load-balanced below,
HashedNet's ≈1/e unused slots at m = n, ROAST's tiles reading consecutive slots, signs, seeding, errors."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from sparse_run.config import ConfigError
from sparse_run.sparsity import sharing


@pytest.mark.parametrize("n, m", [(1000, 1000), (1000, 1500), (1, 7)])
def test_random_fold_is_injective_when_there_are_enough_slots(n, m):
    h = sharing.random_fold(n, m, seed=0)
    assert h.shape == (n,) and h.unique().numel() == n and int(h.max()) < m


@pytest.mark.parametrize("n, m", [(1000, 300), (266_200, 2662), (10, 3), (1001, 1000)])
def test_random_fold_gives_every_slot_floor_or_ceil_of_n_over_m(n, m):
    load = sharing.slot_load(sharing.random_fold(n, m, seed=3), m)
    assert int(load.sum()) == n
    assert set(load.unique().tolist()) <= {n // m, -(-n // m)}


def test_random_fold_partitions_are_cyclic_shifts():
    n, m = 50, 10
    h = sharing.random_fold(n, m, seed=1)
    for p in range(n // m):
        part = h[p * m:(p + 1) * m]
        assert sorted(part.tolist()) == list(range(m))
        assert torch.equal((part - part[0]) % m, torch.arange(m))


def test_hashed_net_leaves_about_one_over_e_of_the_slots_unused_at_m_equal_n():
    n = 200_000
    h = sharing.hashed_net(n, n, seed=0)
    assert int(h.min()) >= 0 and int(h.max()) < n
    assert sharing.unused_fraction(h, n) == pytest.approx(1 / math.e, abs=0.01)
    assert sharing.unused_fraction(sharing.random_fold(n, n, seed=0), n) == 0.0


def test_hashed_net_does_not_overflow_for_large_indices():
    h = sharing.hashed_net(3_000_000, 1000, seed=2)
    assert int(h.min()) >= 0 and int(h.max()) < 1000


def test_roast_tiles_read_consecutive_slots_from_a_hashed_start():
    m = 10_000
    h = sharing.roast((40, 35), m, seed=0)
    assert h.shape == (40, 35) and int(h.max()) < m
    tile = h[16:32, 0:16]
    assert torch.equal((tile.flatten() - tile[0, 0]) % m, torch.arange(256))
    edge = h[32:40, 32:35]  # a partial tile keeps its in-tile offsets r·16 + c
    assert int((edge[1, 2] - edge[0, 0]) % m) == 16 + 2


def test_signs_are_plus_minus_one_and_balanced():
    g = sharing.signs(100_000, seed=0)
    assert set(g.unique().tolist()) == {-1.0, 1.0} and abs(float(g.mean())) < 0.02


def test_maps_are_reproducible_across_processes_and_differ_by_seed():
    code = ("from sparse_run.sparsity import sharing as s; "
            "print(s.hashed_net(50, 7, 5).tolist(), s.random_fold(50, 7, 5).tolist(), s.signs(9, 5).tolist())")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(runs) == 1
    assert not torch.equal(sharing.hashed_net(50, 7, 5), sharing.hashed_net(50, 7, 6))


def test_bad_sizes_and_mappers_are_one_line_errors():
    with pytest.raises(ConfigError, match="shared slots m: got 0"):
        sharing.random_fold(10, 0, seed=0)
    with pytest.raises(ConfigError, match=r"^method.sharing.mapper: got 'lsh'; allowed: random_fold, hashed_net, roast$"):
        sharing.mapper("lsh")


# -- the shared array: W = s·G·z[h], gradient scaling, accounting ---------------------------------------------

SHAPES = {"fc1.weight": (30, 20), "fc2.weight": (10, 30)}


def _array(kind="random_fold", m=300, grad_scale=True, cache=False, std=0.04):
    return sharing.SharedArray(SHAPES, m, kind, seed=7, init_std=std, scales={"fc1.weight": 0.2, "fc2.weight": 0.1},
                               grad_scale=grad_scale, cache=cache)


@pytest.mark.parametrize("kind", sharing.MAPPERS)
def test_materialised_weight_is_s_times_sign_times_the_slot_it_reads(kind):
    arr = _array(kind)
    for s in arr.slices:
        h, g, w = arr.index(s), arr.sign(s), arr.weight(s).detach()
        assert torch.equal(w, arr.z.detach()[h] * g * s.scale)
        assert set(g.unique().tolist()) <= {-1.0, 1.0}
    assert arr.slices[0].scale == pytest.approx(0.2 / 0.04) and arr.slices[1].scale == pytest.approx(0.1 / 0.04)
    fold = torch.cat([arr.index(s).flatten() for s in arr.slices]) if kind == "random_fold" else None
    if fold is not None:  # the layers' slices of one global RandomFold
        assert torch.equal(fold, sharing.random_fold(900, 300, seed=7))


@pytest.mark.parametrize("kind", sharing.MAPPERS)
def test_cached_maps_give_the_same_weights_as_computed_ones(kind):
    a, b = _array(kind, cache=False), _array(kind, cache=True)
    for s in a.slices:
        assert torch.equal(a.weight(s), b.weight(s))
    assert b.counts()["buffer_bytes"] - a.counts()["buffer_bytes"] == 900 * 5


def test_scaled_gradient_matches_the_analytic_value():
    """L = Σ_i W_i, so ∂L/∂z_j = Σ_{i→j} s_i G_i; scaled: that ÷ (1e-6 + Σ_{i→j} s_i²)."""
    arr = _array("hashed_net", m=50)
    h = torch.cat([arr.index(s).flatten() for s in arr.slices])
    g = torch.cat([arr.sign(s).flatten() for s in arr.slices])
    s = torch.cat([torch.full((sl.numel,), sl.scale) for sl in arr.slices])
    sum(arr.weight(sl).sum() for sl in arr.slices).backward()
    raw = torch.zeros(50).index_add_(0, h, s * g)
    c = torch.zeros(50).index_add_(0, h, s * s)
    assert torch.allclose(arr.z.grad, raw / (1e-6 + c), rtol=1e-5)
    plain = _array("hashed_net", m=50, grad_scale=False)
    sum(plain.weight(sl).sum() for sl in plain.slices).backward()
    assert torch.allclose(plain.z.grad, raw, rtol=1e-5)


def test_sgd_on_scaled_z_at_one_x_is_sgd_on_w_whatever_the_init_std():
    """RandomFold at m = n with gradient scaling: one SGD step moves every W_i by −lr·∂L/∂W_i (times
    s²/(1e-6 + s²), the guard's only trace)."""
    for std in (0.004, 4.0):
        arr = _array("random_fold", m=900, std=std)
        target = torch.randn(900, generator=torch.Generator().manual_seed(0))
        w0 = torch.cat([arr.weight(s).detach().flatten() for s in arr.slices])
        loss = (torch.cat([arr.weight(s).flatten() for s in arr.slices]) * target).sum()
        loss.backward()
        with torch.no_grad():
            arr.z -= 0.01 * arr.z.grad
        w1 = torch.cat([arr.weight(s).detach().flatten() for s in arr.slices])
        s2 = torch.cat([torch.full((sl.numel,), sl.scale ** 2) for sl in arr.slices])
        assert torch.allclose(w1 - w0, -0.01 * target * s2 / (1e-6 + s2), atol=1e-6)  # the 1e-6 guard aside: −lr·t


def test_attached_model_trains_only_z_and_biases_and_counts_are_exact():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(20, 30), torch.nn.Linear(30, 10)

        def forward(self, x):
            return self.fc2(self.fc1(x).relu())

    model = Net()
    arr = _array("roast", m=90)
    arr.attach(model)
    names = {n for n, _ in model.named_parameters()}
    assert names == {"shared.z", "fc1.bias", "fc2.bias"}
    assert sum(p.numel() for p in model.parameters()) == 90 + 30 + 10
    out = model(torch.randn(4, 20))
    out.sum().backward()
    assert model.shared.z.grad is not None and out.shape == (4, 10)
    counts = arr.counts()
    assert counts["shared_params"] == 90 and counts["shareable"] == 900
    assert counts["buffer_bytes"] == sum(b.numel() * b.element_size() for b in arr.buffers())


def test_bad_shared_arrays_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"^method.schedule.compressions: m = 1000 shared slots for n = 900"):
        _array(m=1000)
    with pytest.raises(ConfigError, match=r"^method.sharing.mapper: got 'cuckoo'; allowed: random_fold"):
        _array("cuckoo")
    with pytest.raises(ConfigError, match=r"^method.sharing.init_std: got 0"):
        _array(std=0)
    rnn = torch.nn.Module()
    rnn.add_module("cell", torch.nn.GRU(4, 4))
    arr = sharing.SharedArray({"cell.weight_ih_l0": (12, 4)}, 10, "roast", 0, 0.04, {"cell.weight_ih_l0": 0.1}, True)
    with pytest.raises(ConfigError, match=r"^method.policy.layers: cell.weight_ih_l0 is no Linear"):
        arr.attach(rnn)
