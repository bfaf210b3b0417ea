"""Random Search's masks: a unit mask removes whole units (rows of a layer, columns of the next) at the asked
fraction; the weight space keeps exactly its per-layer counts; candidates are reproducible from the run seed and
differ between draws; the TOST p-value matches the formula."""
from __future__ import annotations

import math
import types

import pytest
import torch

from sparse_run.methods import random_search as rs
from sparse_run.models.build import MLP
from sparse_run.report.random_search import tost
from sparse_run.sparsity import MaskSet


def _net():
    model = MLP(784, [300, 100], 10)
    masks = MaskSet({n: p for n, p in model.named_parameters() if n.endswith("weight")})
    return model, masks


@pytest.mark.parametrize("removed", [0.5, 0.9, 0.95])
def test_unit_masks_remove_whole_units_at_the_asked_fraction(removed):
    model, masks = _net()
    m = rs.node_masks(model, masks, removed, torch.Generator().manual_seed(0))
    h1 = m["hidden.0.weight"].any(1)
    h2 = m["hidden.1.weight"].any(1)
    assert int(h1.sum()) == round((1 - removed) * 300) and int(h2.sum()) == round((1 - removed) * 100)
    assert torch.equal(m["hidden.0.weight"], h1[:, None].expand(300, 784))           # kept rows are whole rows
    assert torch.equal(m["hidden.1.weight"], h2[:, None] & h1[None, :])              # columns follow layer 1
    assert torch.equal(m["out.weight"], torch.ones(10, 1, dtype=torch.bool) & h2[None, :])
    w = rs.weight_masks(m, torch.Generator().manual_seed(1))
    assert {n: int(v.sum()) for n, v in w.items()} == {n: int(v.sum()) for n, v in m.items()}
    assert not torch.equal(w["hidden.0.weight"], m["hidden.0.weight"])


def test_candidates_are_reproducible_from_the_seed_and_differ_between_draws():
    model, masks = _net()
    run = types.SimpleNamespace(seed=3)
    a = rs.candidate(run, model, masks, "node", 0.9, 4)
    b = rs.candidate(run, model, masks, "node", 0.9, 4)
    c = rs.candidate(run, model, masks, "node", 0.9, 5)
    r = rs.candidate(run, model, masks, "node", 0.9, "random")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["hidden.0.weight"], c["hidden.0.weight"])
    assert not torch.equal(a["hidden.0.weight"], r["hidden.0.weight"])
    other = rs.candidate(types.SimpleNamespace(seed=4), model, masks, "node", 0.9, 4)
    assert not torch.equal(a["hidden.0.weight"], other["hidden.0.weight"])
    assert rs.retrain_seed(0, 0) != 0 and rs.retrain_seed(0, 4) != rs.retrain_seed(1, 4)


def test_tost_p_value_is_the_larger_one_sided_p():
    from scipy import stats

    d = [0.1, -0.2, 0.3, 0.0, 0.15]
    n, mean = len(d), sum(d) / len(d)
    se = torch.tensor(d).std().item() / math.sqrt(n)
    want = max(1 - stats.t.cdf((mean + 0.5) / se, n - 1), stats.t.cdf((mean - 0.5) / se, n - 1))
    assert tost(d, 0.5) == pytest.approx(want)
    assert tost(d, 0.5) < 0.05 < tost(d, 0.05)
    assert math.isnan(tost([0.1], 0.5))


def test_a_non_mlp_model_is_refused():
    from sparse_run.config import ConfigError

    cfg = types.SimpleNamespace(model=types.SimpleNamespace(arch="convfc"), method=None)
    with pytest.raises(ConfigError, match=r"^model.arch: got 'convfc'; random_search removes hidden units"):
        rs.validate(cfg)
