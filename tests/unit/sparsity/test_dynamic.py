"""Dynamic sparse training's mask update (sparsity/dynamic.py): the drop-fraction schedule, exact counts, which
weights move on a hand-made layer, zero weights and optimizer state for grown weights, stable seeding."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from sparse_run.config import ConfigError
from sparse_run.sparsity import dynamic
from sparse_run.sparsity.selection import erk_densities


def test_drop_fraction_is_a_cosine_decay_to_zero_at_t_end():
    assert dynamic.drop_fraction(0, 0.3, 1000) == pytest.approx(0.3)
    assert dynamic.drop_fraction(500, 0.3, 1000) == pytest.approx(0.15)
    assert dynamic.drop_fraction(250, 0.3, 1000) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert dynamic.drop_fraction(1000, 0.3, 1000) == 0.0


@pytest.mark.parametrize("zeta0", [0.0, 1.5, -0.1])
def test_drop_fraction_outside_zero_one_is_a_one_line_error(zeta0):
    with pytest.raises(ConfigError) as e:
        dynamic.drop_fraction(0, zeta0, 100)
    assert e.value.field == "method.schedule.zeta0"


def test_update_steps_every_delta_t_before_t_end():
    assert [t for t in range(0, 501) if dynamic.is_update_step(t, 100, 450)] == [100, 200, 300, 400]
    with pytest.raises(ConfigError):
        dynamic.is_update_step(5, 0, 100)


def test_hand_made_layer_drops_smallest_and_grows_largest_gradients():
    w = torch.tensor([[0.9, -0.1, 0.0, 0.5], [0.0, 0.3, -0.7, 0.0]])
    mask = w != 0  # 5 active
    grads = torch.tensor([[0.0, 0.0, 2.0, 0.0], [0.1, 0.0, 0.0, 3.0]])
    up = dynamic.drop_grow(w, mask, grads, 0.4, dynamic.generator(0, "fc", 100))  # k = round(2.0) = 2
    # drops -0.1 and 0.3 (smallest |w|), grows (1, 3) and (0, 2) (largest |grad| among the inactive)
    expected = torch.tensor([[True, False, True, True], [False, False, True, True]])
    assert torch.equal(up.mask, expected)
    assert torch.equal(up.grown, expected & ~mask) and up.swapped == 2
    assert int(up.mask.sum()) == int(mask.sum())


def test_a_dropped_weight_can_be_regrown_and_keeps_its_value():
    w = torch.tensor([0.5, 0.1, 0.0, 0.0])
    mask = w != 0
    grads = torch.tensor([0.0, 9.0, 1.0, 0.0])  # the dropped 0.1 has the largest gradient
    up = dynamic.drop_grow(w, mask, grads, 0.5, dynamic.generator(0, "fc", 1))
    assert torch.equal(up.mask, mask) and up.swapped == 0 and not up.grown.any()


@pytest.mark.parametrize("fraction", [0.05, 0.3, 1.0])
def test_counts_stay_exact_under_random_growth_and_ties(fraction):
    torch.manual_seed(0)
    w = torch.randn(64, 32).round(decimals=1)  # many ties in |w|
    mask = torch.rand(64, 32) < 0.1
    count = int(mask.sum())
    for step in range(1, 6):
        scores = torch.rand(64, 32, generator=dynamic.generator(3, "layer", step))  # SET: random growth
        up = dynamic.drop_grow(w, mask, scores, fraction, dynamic.generator(3, "layer", step))
        assert int(up.mask.sum()) == count
        assert not (up.grown & mask).any() and (up.grown <= up.mask).all()
        mask = up.mask


@pytest.mark.parametrize("make", [lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9),
                                  lambda p: torch.optim.Adam([p], lr=0.1)])
def test_grown_weights_and_their_optimizer_state_start_at_zero(make):
    p = torch.nn.Parameter(torch.randn(6, 5))
    opt = make(p)
    for _ in range(3):
        opt.zero_grad()
        (p ** 2).sum().backward()
        opt.step()
    grown = torch.zeros(6, 5, dtype=torch.bool)
    grown[1, 2] = grown[4, 0] = True
    dynamic.zero_grown(p, grown, opt)
    assert (p[grown] == 0).all() and (p[~grown] != 0).all()
    states = [v for v in opt.state[p].values() if torch.is_tensor(v) and v.shape == p.shape]
    assert states and all((s[grown] == 0).all() and (s[~grown] != 0).any() for s in states)


def test_generator_is_stable_across_processes_and_distinct_per_layer_and_step():
    here = torch.rand(4, generator=dynamic.generator(7, "fc1.weight", 300))
    code = ("import torch; from sparse_run.sparsity import dynamic; "
            "print(torch.rand(4, generator=dynamic.generator(7, 'fc1.weight', 300)).tolist())")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout
    assert json.loads(there) == here.tolist()
    assert not torch.equal(here, torch.rand(4, generator=dynamic.generator(7, "fc2.weight", 300)))
    assert not torch.equal(here, torch.rand(4, generator=dynamic.generator(7, "fc1.weight", 400)))


def test_itop_rate_counts_every_weight_ever_active():
    union = torch.zeros(10, dtype=torch.bool)
    union, r = dynamic.itop_rate(union, torch.arange(10) < 2)
    union, r = dynamic.itop_rate(union, (torch.arange(10) >= 1) & (torch.arange(10) < 4))
    assert r == pytest.approx(0.4)


def test_erk_densities_of_lenet_300_100_match_rigl():
    """RigL's convention with the output layer ERK'd too: [0.080, 0.230, 1.0] at 90 %, [0.0154, 0.0445, 0.367]
    at 98 % (the values issue 15 gives to check against)."""
    shapes = {"fc1": (300, 784), "fc2": (100, 300), "fc3": (10, 100)}
    assert list(erk_densities(shapes, 0.1).values()) == pytest.approx([0.0796, 0.2302, 1.0], abs=6e-4)
    assert list(erk_densities(shapes, 0.02).values()) == pytest.approx([0.0154, 0.0445, 0.3674], abs=6e-4)
