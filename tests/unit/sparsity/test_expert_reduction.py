"""Expert reduction (DERN and its baselines) on hand-built experts: every reduction returns exactly the kept experts
in their original shapes; a dropped expert that is a neuron permutation of a kept one merges back into it exactly
after matching (matched average, DERN) but not when averaged naively — DERN's core argument; frequency keeping and
one-line errors."""
from __future__ import annotations

import pytest
import torch

from sparse_run.config import ConfigError
from sparse_run.sparsity import experts as ex

D, H = 6, 5


def _expert(seed: int) -> ex.Expert:
    g = torch.Generator().manual_seed(seed)
    return {"gate_w": torch.randn(H, D, generator=g), "gate_b": torch.randn(H, generator=g),
            "up_w": torch.randn(H, D, generator=g), "up_b": torch.randn(H, generator=g),
            "down_w": torch.randn(D, H, generator=g), "down_b": torch.randn(D, generator=g)}


def _permuted(e: ex.Expert, perm: torch.Tensor) -> ex.Expert:
    return {"gate_w": e["gate_w"][perm], "gate_b": e["gate_b"][perm], "up_w": e["up_w"][perm],
            "up_b": e["up_b"][perm], "down_w": e["down_w"][:, perm], "down_b": e["down_b"].clone()}


def _same(a: ex.Expert, b: ex.Expert) -> bool:
    return all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_segments_round_trip():
    e = _expert(0)
    assert _same(ex.from_segments(ex.segments(e), D, e["down_b"]), e)


@pytest.mark.parametrize("how", ex.REDUCTIONS)
def test_every_reduction_keeps_exactly_the_kept_experts_in_their_shapes(how):
    experts = [_expert(s) for s in range(8)]
    out = ex.reduce(experts, torch.full((8,), 1 / 8), [0, 2, 5, 7], how)
    assert sorted(out) == [0, 2, 5, 7]
    for k, e in out.items():
        assert {n: t.shape for n, t in e.items()} == {n: t.shape for n, t in experts[k].items()}
    if how == "drop":
        assert all(_same(out[k], experts[k]) for k in out)


def test_a_permuted_twin_merges_back_exactly_after_matching_but_not_naively():
    base, other = _expert(1), _expert(2)
    twin = _permuted(base, torch.tensor([3, 0, 4, 1, 2]))
    experts, freq = [base, other, twin], torch.tensor([0.5, 0.3, 0.2])
    for how in ("matched_average", "dern"):
        out = ex.reduce(experts, freq, [0, 1], how)
        assert _same(out[0], base), how          # the twin's neurons found their counterparts
        assert _same(out[1], other), how         # nothing of the twin went to the unrelated expert
    naive = ex.reduce(experts, freq, [0, 1], "average")
    assert not _same(naive[0], base)             # averaging unmatched neurons mixes different units
    assert _same(naive[1], other)


def test_frequency_keeps_the_most_routed_experts_and_bad_input_is_refused():
    assert ex.keep_by_frequency(torch.tensor([0.1, 0.4, 0.05, 0.3, 0.15]), 2) == [1, 3]
    assert ex.keep_random(8, 4, torch.Generator().manual_seed(0)) == ex.keep_random(8, 4, torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match=r"^method.experts_kept: got 9; must be in \[1, 8\]"):
        ex.keep_by_frequency(torch.full((8,), 0.125), 9)
    with pytest.raises(ConfigError, match=r"^method.reduction: got 'prune'; allowed: drop, average"):
        ex.reduce([_expert(0)], torch.ones(1), [0], "prune")
