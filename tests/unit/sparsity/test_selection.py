"""Selection scopes (exact counts, ERK) and schedules (cubic, SynFlow's exponential, levels)."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from sparse_run.config import ConfigError
from sparse_run.config.method_schema import ScheduleConfig
from sparse_run.sparsity import cubic_sparsity, gradual_events, levels, select
from sparse_run.sparsity.schedules import exponential_densities
from sparse_run.sparsity.selection import erk_densities, layer_counts

SHAPES = {"l0": (300, 784), "l1": (100, 300), "l2": (10, 100)}


def rand_scores(seed: int = 0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(s, generator=g) for n, s in shapes.items()}


def full(shapes=SHAPES):
    return {n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()}


@pytest.mark.parametrize("scope", ["global", "layerwise", "erk"])
@pytest.mark.parametrize("density", [0.5, 0.1, 0.0123, 0.00316228])
def test_every_scope_keeps_exactly_the_requested_count(scope, density):
    new = select(rand_scores(), full(), density, scope=scope)
    total = sum(math.prod(s) for s in SHAPES.values())
    assert sum(int(m.sum()) for m in new.values()) == round(density * total)
    if scope == "layerwise":  # each layer within one weight of its own fraction
        for n, m in new.items():
            assert abs(int(m.sum()) - density * m.numel()) <= 1


def test_global_keeps_the_highest_scores_across_layers():
    scores = rand_scores()
    new = select(scores, full(), 0.05, scope="global")
    kept = torch.cat([scores[n][new[n]] for n in scores])
    dropped = torch.cat([scores[n][~new[n]] for n in scores])
    assert kept.min() > dropped.max()


def test_layerwise_rate_scales_meet_the_total_and_scale_sparsity():
    counts = layer_counts({n: math.prod(s) for n, s in SHAPES.items()}, SHAPES, 0.2, "layerwise",
                          scales={"l2": 0.5})
    total = sum(math.prod(s) for s in SHAPES.values())
    assert sum(counts.values()) == round(0.2 * total)
    s0, s2 = 1 - counts["l0"] / 235_200, 1 - counts["l2"] / 1_000
    assert s2 == pytest.approx(s0 / 2, abs=2e-3)


def test_erk_follows_the_erdos_renyi_kernel_formula_and_meets_the_target():
    d = erk_densities(SHAPES, 0.1)
    sizes = {n: math.prod(s) for n, s in SHAPES.items()}
    assert sum(d[n] * sizes[n] for n in d) == pytest.approx(0.1 * sum(sizes.values()))
    raw = {n: sum(s) / math.prod(s) for n, s in SHAPES.items()}  # (n_in + n_out) / (n_in n_out)
    free = [n for n in d if d[n] < 1]
    eps = d[free[0]] / raw[free[0]]
    for n in free:
        assert d[n] == pytest.approx(eps * raw[n])
    assert d["l2"] == 1.0  # the small output layer would exceed 1: capped, excess redistributed
    assert all(0 < v <= 1 for v in d.values())


def test_erk_conv_kernel_term():
    shapes = {"c1": (16, 3, 3, 3), "c2": (32, 16, 3, 3), "fc": (10, 512)}
    d = erk_densities(shapes, 0.3)
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    free = [n for n in d if d[n] < 1]
    assert len(free) >= 2
    assert d[free[0]] / raw[free[0]] == pytest.approx(d[free[1]] / raw[free[1]])


def test_selection_never_revives_and_breaks_ties_by_position():
    masks = full()
    masks["l1"][:, :150] = False  # already pruned
    scores = {n: torch.zeros(s) for n, s in SHAPES.items()}
    scores["l1"][:, :150] = 10.0  # high scores on pruned weights must not bring them back
    for scope in ("global", "layerwise", "erk"):
        new = select(scores, masks, 0.3, scope=scope)
        assert not (new["l1"] & ~masks["l1"]).any(), scope
        again = select(scores, masks, 0.3, scope=scope)
        assert all(torch.equal(new[n], again[n]) for n in new)
    tied = select({"l2": torch.zeros(10, 100)}, {"l2": torch.ones(10, 100, dtype=torch.bool)}, 0.05, scope="global")
    assert tied["l2"].flatten().nonzero().flatten().tolist() == list(range(50))  # earliest positions win


def test_density_above_the_alive_count_keeps_all_alive_and_revives_nothing():
    masks = full()
    masks["l0"][:] = False
    new = select(rand_scores(), masks, 0.9, scope="layerwise")
    assert not new["l0"].any() and new["l1"].all() and new["l2"].all()


def test_unknown_pattern_is_rejected():
    with pytest.raises(ConfigError, match="method.selection.pattern"):
        select(rand_scores(), full(), 0.5, scope="global", pattern="2:4")


# -- schedules -------------------------------------------------------------------------------

def test_cubic_schedule_endpoints_monotone_and_front_loaded():
    s_i, s_f, t0, t_end = 0.0, 0.9, 100, 1100
    assert cubic_sparsity(0, s_i, s_f, t0, t_end) == s_i
    assert cubic_sparsity(t0, s_i, s_f, t0, t_end) == s_i
    assert cubic_sparsity(t_end, s_i, s_f, t0, t_end) == pytest.approx(s_f)
    assert cubic_sparsity(5000, s_i, s_f, t0, t_end) == s_f  # frozen after
    ts = list(range(t0, t_end + 1, 10))
    s = [cubic_sparsity(t, s_i, s_f, t0, t_end) for t in ts]
    assert all(b >= a for a, b in zip(s, s[1:]))
    # front-loaded: half the time in, 1 − (1/2)³ = 7/8 of the pruning is done
    assert cubic_sparsity(600, s_i, s_f, t0, t_end) == pytest.approx(s_i + (s_f - s_i) * 7 / 8)
    steps = [b - a for a, b in zip(s, s[1:])]
    assert all(x >= y - 1e-12 for x, y in zip(steps, steps[1:]))  # increments shrink


def test_gradual_events_every_dt_and_end():
    assert gradual_events(0, 100, 25) == [0, 25, 50, 75, 100]
    assert gradual_events(10, 95, 40) == [10, 50, 90, 95]


def test_exponential_densities_reach_the_target():
    d = exponential_densities(0.01, 100)
    assert len(d) == 100 and d[-1] == pytest.approx(0.01) and d[49] == pytest.approx(0.1)
    ratios = [b / a for a, b in zip(d, d[1:])]
    assert max(ratios) - min(ratios) < 1e-12  # geometric


def test_levels_from_densities_sparsities_or_final_sparsity():
    def sched(**keys):  # a method.schedule node as the schema composes it (absent keys: null)
        return OmegaConf.structured(ScheduleConfig(kind="at_init", **keys))

    assert levels(sched(densities=[0.1, 0.01])) == [0.1, 0.01]
    assert levels(sched(densities=None, sparsities=[0.9])) == pytest.approx([0.1])
    assert levels(sched(final_sparsity=0.98)) == pytest.approx([0.02])
