"""The Top-K gating MoE of the theory study on known configurations: the data generator, top-K gates, the Voronoi
loss (zero at the truth, invariant to gating translations, merging split atoms), the Hellinger distance, the exact
top-1 MLE, and the bootstrap slopes."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from sparse_run.config import ConfigError
from sparse_run.studies import topk_moe as tm
from sparse_run.studies.topk_theory import parse_fit, slopes


def test_gates_keep_exactly_k_experts_and_sum_to_one():
    m = dataclasses.replace(tm.truth(), top_k=1)
    x = torch.linspace(-1, 1, 101, dtype=torch.float64)
    g = tm.gates(m, x)[0]
    assert torch.allclose(g.sum(1), torch.ones(101, dtype=torch.float64))
    assert set(g.flatten().tolist()) <= {0.0, 1.0, 0.5}  # 0.5 only at the exact switch x = 0.2
    three = tm.Mixture(*(torch.randn(1, 3, dtype=torch.float64) for _ in range(5)), top_k=2)
    g3 = tm.gates(three, x)[0]
    assert ((g3 > 0).sum(1) == 2).all() and torch.allclose(g3.sum(1), torch.ones(101, dtype=torch.float64))


def test_the_generator_follows_the_truth():
    x, y = tm.sample(tm.truth(), 40000, torch.Generator().manual_seed(0))
    assert x.min() >= -1 and x.max() <= 1
    right = x > 0.2  # expert 2 (a = 2, b = −0.5, σ = 0.5) owns x > 0.2
    res_r, res_l = y[right] - (2 * x[right] - 0.5), y[~right] - (-1.5 * x[~right] + 0.5)
    assert res_r.mean().abs() < 0.02 and res_r.std() == pytest.approx(0.5, abs=0.01)
    assert res_l.mean().abs() < 0.02 and res_l.std() == pytest.approx(0.3, abs=0.01)
    assert right.double().mean() == pytest.approx(0.4, abs=0.01)


def test_voronoi_loss_zero_at_truth_translation_invariant_and_linear_in_a_shift():
    t = tm.truth()
    assert tm.voronoi_loss(t, t) == pytest.approx(0, abs=1e-12)
    moved = dataclasses.replace(t, beta0=t.beta0 + 3.0, beta1=t.beta1 - 1.0)  # same argmax everywhere
    assert tm.voronoi_loss(moved, t) == pytest.approx(0, abs=1e-12)
    shifted = dataclasses.replace(t, b=t.b + torch.tensor([[0.1, 0.0]], dtype=torch.float64))
    assert tm.voronoi_loss(shifted, t) == pytest.approx(0.6 * 0.1)  # expert 1 routes 60 % of x
    # expert 1 split into two identical copies owning [−1, −0.4] and (−0.4, 0.2]: the cell's mass adds up, loss 0
    split = tm.Mixture(torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64),
                       torch.tensor([[0.0, 0.4, 0.4 - 0.2]], dtype=torch.float64),
                       t.a[:, [0, 0, 1]], t.b[:, [0, 0, 1]], t.log_sigma[:, [0, 0, 1]], top_k=1)
    assert tm.routing_mass(split).tolist() == pytest.approx([0.3, 0.3, 0.4], abs=1e-3)
    assert tm.voronoi_loss(split, t) == pytest.approx(0, abs=2e-3)
    assert tm.hellinger(split, t) == pytest.approx(0, abs=1e-4)


def test_hellinger_is_zero_for_the_truth_and_near_one_far_away():
    t = tm.truth()
    assert tm.hellinger(t, t) == pytest.approx(0, abs=1e-6)
    far = dataclasses.replace(t, b=t.b + 8.0)
    assert tm.hellinger(far, t) == pytest.approx(1, abs=1e-3)
    near = dataclasses.replace(t, b=t.b + 0.01)
    assert 0 < tm.hellinger(near, t) < 0.02


def test_exact_top1_mle_recovers_the_truth():
    x, y = tm.sample(tm.truth(), 20000, torch.Generator().manual_seed(1))
    m, ll = tm.fit(x, y, 2, 1, restarts=0, iterations=1, gen=torch.Generator().manual_seed(0))
    assert ll >= float(tm.log_likelihood(tm.truth(), x, y)[0]) / 20000  # the MLE beats the truth on its sample
    assert m.a[0].tolist() == pytest.approx([-1.5, 2.0], abs=0.05)
    assert m.b[0].tolist() == pytest.approx([0.5, -0.5], abs=0.05)
    assert tm.voronoi_loss(m, tm.truth()) < 0.05 and tm.hellinger(m, tm.truth()) < 0.02


def test_slopes_recover_a_known_rate_and_pair_the_difference():
    rng = np.random.default_rng(0)
    rows = []
    for n in (1e3, 1e4, 1e5):
        for rep in range(8):
            noise = rng.lognormal(0, 0.1)
            rows += [{"fit": "k2_K1", "n": n, "rep": rep, "voronoi": n ** -0.5 * noise, "hellinger": n ** -0.5 * noise},
                     {"fit": "k3_K2", "n": n, "rep": rep, "voronoi": n ** -0.25 * noise, "hellinger": n ** -0.5 * noise}]
    out = pd.DataFrame(slopes(pd.DataFrame(rows), "k2_K1", seed=0)).set_index(["fit", "loss"])
    exact = out.loc[("k2_K1", "voronoi")]
    assert exact.slope == pytest.approx(-0.5, abs=0.03) and exact.slope_lo < -0.5 < exact.slope_hi
    over = out.loc[("k3_K2", "voronoi")]
    assert over.slope_vs_exact == pytest.approx(0.25, abs=1e-9)  # the shared noise cancels in the paired difference
    assert over.slope_vs_exact_hi - over.slope_vs_exact_lo < 1e-9


def test_fit_names_parse_or_fail_in_one_line():
    assert parse_fit("k3_K2") == (3, 2)
    with pytest.raises(ConfigError, match=r"^method.schedule.fits: got 'three'; allowed: k<experts>_K<top_k>"):
        parse_fit("three")
