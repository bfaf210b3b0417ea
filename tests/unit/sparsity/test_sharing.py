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
