"""The DASS pieces on tiny shapes: SparseConv's exact top-k and straight-through gradients, the sparsified
supernet, DARTS's derivation rule, the search loop, HYDRA's global score learning and the derived / hand-made nets."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparse_run.config.errors import ConfigError
from sparse_run.models import darts as d
from sparse_run.studies import darts_search as ds

RATIOS = (0.0, 0.25, 0.5, 0.9, 0.99)


def _top_set(scores: torch.Tensor, k: int) -> set[int]:
    """The k largest |scores| by an independent route (distinct random values, so no ties)."""
    return set(torch.argsort(scores.abs().flatten(), descending=True)[:k].tolist())


def _data(n: int = 32, c: int = 1, side: int = 8, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, side, side, generator=g), torch.randint(classes, (n,), generator=g)


# -- 1. SparseConv: exact top-(1-p) and straight-through gradients ------------------------------------------------


@pytest.mark.parametrize("p", RATIOS)
def test_sparse_conv_keeps_exactly_the_top_scores(p):
    torch.manual_seed(0)
    conv = d.SparseConv2d(4, 4, 3, ratio=p)
    conv.scores.data = torch.randn_like(conv.scores)  # negatives too: ranking is by |score|
    k = conv.scores.numel() - round(p * conv.scores.numel())
    mask = conv.mask()
    assert mask.dtype == torch.bool and int(mask.sum()) == k
    assert set(mask.flatten().nonzero().flatten().tolist()) == _top_set(conv.scores, k)
    assert torch.equal(conv.effective_weight() != 0, mask)
    assert torch.equal(d.topk_mask(conv.scores, p), mask.float())


def test_sparse_conv_init_scores_follow_weight_magnitude():
    conv = d.SparseConv2d(3, 5, 3, ratio=0.5)
    assert torch.allclose(conv.scores, conv.weight.abs() / (3 * 9) ** 0.5)
    conv.freeze_weight = True
    assert conv.freeze_weight and not conv.weight.requires_grad and conv.scores.requires_grad


def test_topk_mask_ties_go_to_the_earliest_and_backward_is_the_identity_on_magnitudes():
    assert d.topk_mask(torch.ones(10), 0.5).tolist() == [1.0] * 5 + [0.0] * 5
    s = torch.randn(3, 7, requires_grad=True)
    r = torch.randn(3, 7)
    (d.topk_mask(s, 0.6) * r).sum().backward()
    assert torch.equal(s.grad, r * s.detach().sign())  # identity to |s|; exactly r for positive scores
    pos = torch.rand(3, 7).add(0.1).requires_grad_(True)
    (d.topk_mask(pos, 0.6) * r).sum().backward()
    assert torch.equal(pos.grad, r)


@pytest.mark.parametrize("p", (0.0, 0.5, 0.9))
@pytest.mark.parametrize("signed", (False, True))
def test_sparse_conv_straight_through_gradient(p, signed):
    """forward w⊙m(|s|): dL/ds = dL/d(w⊙m) ⊙ w ⊙ sign(s) (= dL/d(w⊙m) ⊙ w for the positive init scores) and
    dL/dw = dL/d(w⊙m) ⊙ m, computed here without the STE."""
    torch.manual_seed(1)
    conv = d.SparseConv2d(3, 4, 3, ratio=p)
    if signed:
        conv.scores.data = torch.randn_like(conv.scores)
    x, r = torch.randn(2, 3, 6, 6), torch.randn(2, 4, 6, 6)
    (conv(x) * r).sum().backward()
    m = conv.mask().float()
    w_eff = (conv.weight.detach() * m).requires_grad_(True)
    (F.conv2d(x, w_eff, padding=1) * r).sum().backward()
    assert torch.allclose(conv.scores.grad, w_eff.grad * conv.weight.detach() * conv.scores.detach().sign(),
                          atol=1e-6)
    assert torch.allclose(conv.weight.grad, w_eff.grad * m, atol=1e-6)


# -- 2. one-line errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", (1.0, -0.1, 1.5, float("nan")))
def test_ratio_outside_zero_one_is_a_value_error_naming_p(p):
    for make in (lambda: d.topk_mask(torch.ones(4), p), lambda: d.SparseConv2d(2, 2, ratio=p),
                 lambda: d.Supernet(1, 3, C=2, ratio=p)):
        with pytest.raises(ValueError, match=r"\bp\b.*\[0, 1\)"):
            make()


def test_unknown_op_names_the_field_and_the_allowed_ops():
    with pytest.raises(ConfigError, match="allowed: skip, conv3, sepconv3, maxpool, sparseconv3") as e:
        d.Supernet(1, 3, C=2, ops=("skip", "zero"))
    assert e.value.field == "method.schedule.ops" and "'zero'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        d.Supernet(1, 3, C=2, ops=("conv5",), field="method.schedule.dass_ops")
    assert e.value.field == "method.schedule.dass_ops"


@pytest.mark.parametrize("kw, field", [({"cells": 3}, "cells"), ({"cells": 0}, "cells"), ({"C": 0}, "C"),
                                       ({"nodes": 1}, "nodes")])
def test_bad_shape_settings_are_config_errors(kw, field):
    with pytest.raises(ConfigError) as e:
        d.Supernet(1, 3, **kw)
    assert e.value.field == f"method.schedule.{field}"


# -- 3. derive ------------------------------------------------------------------------------------------------------


def test_derive_is_deterministic_and_well_formed():
    def genotype(seed):
        torch.manual_seed(seed)
        return d.derive(d.Supernet(1, 3, C=2).alphas, d.OPS)

    g = genotype(3)
    assert g == genotype(3) and len(g.edges) == g.nodes == 4 and g.ops == d.OPS
    for i, node in enumerate(g.edges):
        inputs = [j for _, j in node]
        assert len(node) == 2 and len(set(inputs)) == 2 and all(0 <= j < 2 + i for j in inputs)
        assert all(name in d.OPS for name, _ in node)


def test_derive_picks_the_dominant_ops_and_edges():
    a = torch.zeros(d.num_edges(4), len(d.OPS))
    o = d.OPS.index
    starts = [0, 2, 5, 9]  # first edge of each node
    strong = {(0, 1): ("conv3", 5), (0, 0): ("maxpool", 3), (1, 2): ("sepconv3", 4), (1, 0): ("skip", 2),
              (2, 3): ("sparseconv3", 6), (2, 1): ("conv3", 1), (3, 4): ("skip", 2), (3, 2): ("maxpool", 1)}
    for (node, j), (name, value) in strong.items():
        a[starts[node] + j, o(name)] = value
    a[starts[3] + 0, o("conv3")] = 0.5  # weaker than the two chosen edges of node 3
    g = d.derive(a, d.OPS)
    assert g.edges == ((("maxpool", 0), ("conv3", 1)), (("skip", 0), ("sepconv3", 2)),
                       (("conv3", 1), ("sparseconv3", 3)), (("maxpool", 2), ("skip", 4)))
    flat = d.derive(torch.zeros(d.num_edges(3), 2), ("conv3", "maxpool"), nodes=3)  # all ties: lowest indices
    assert flat.edges == ((("conv3", 0), ("conv3", 1)),) * 3
    with pytest.raises(ValueError, match="shape"):
        d.derive(torch.zeros(5, 5), d.OPS)


# -- 4. sparsified supernet -------------------------------------------------------------------------------------------


def _op_convs(net: d.Supernet, name: str) -> list[nn.Module]:
    op = net.cells[0].edges[0].ops[net.ops.index(name)]
    return [m for m in op.modules() if isinstance(m, (d.MaskableConv2d, d.SparseConv2d))]


@pytest.mark.parametrize("p", (0.0, 0.5, 0.9))
def test_sparsified_mode_masks_every_parametric_op_at_p(p):
    torch.manual_seed(0)
    net = d.Supernet(1, 3, C=4, ratio=p)
    convs = {name: _op_convs(net, name) for name in ("conv3", "sepconv3", "sparseconv3")}
    assert len(convs["sepconv3"]) == 2

    def zeros():
        return {name: [int((c.effective_weight() == 0).sum()) for c in cs] for name, cs in convs.items()}

    pruned = {name: [round(p * c.weight.numel()) for c in cs] for name, cs in convs.items()}
    dense = {"conv3": [0], "sepconv3": [0, 0], "sparseconv3": pruned["sparseconv3"]}  # sparseconv3 always sparse
    assert zeros() == dense and not net.is_sparsified
    with net.sparsified():
        assert zeros() == pruned and net.is_sparsified
        out = net(torch.randn(2, 1, 28, 28))
        out.sum().backward()
    assert zeros() == dense and out.shape == (2, 3)
    conv = convs["conv3"][0]  # the mask is a constant: kept weights get gradients, pruned ones none
    kept = conv.weight.detach().abs() >= conv.weight.detach().abs().flatten().sort().values[round(p * 144)]
    assert (conv.weight.grad[~kept] == 0).all() and (conv.weight.grad[kept] != 0).any()


def test_supernet_shapes_and_parameter_split():
    torch.manual_seed(0)
    for cells in (1, 2):
        net = d.Supernet(3, 5, C=2, cells=cells, ops=("skip", "sparseconv3"))
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 5)
        assert net.arch_parameters() == [net.alphas] and net.alphas.shape == (14, 2)
        names = {n for n, p in net.named_parameters()}
        assert len(net.weight_parameters()) == len(names) - 1 and any(n.endswith("scores") for n in names)
        assert net.alphas.abs().max() < 0.01


# -- 5. search --------------------------------------------------------------------------------------------------------


def _search(sparse: bool, steps: int = 3):
    torch.manual_seed(0)
    net = d.Supernet(1, 3, C=4, ratio=0.5)
    init = net.alphas.detach().clone()
    (tx, ty), (vx, vy) = _data(seed=1), _data(seed=2)
    hist = ds.search(net, tx, ty, vx, vy, steps=steps, batch_size=8, sparse_alpha=sparse,
                     generator=torch.Generator().manual_seed(0))
    return net, init, hist


def test_search_moves_alpha_deterministically_in_both_modes():
    dense, init, hist = _search(False)
    sparse, init2, _ = _search(True)
    again, _, hist2 = _search(False)
    assert torch.equal(init, init2) and not torch.equal(dense.alphas, init) and not torch.equal(sparse.alphas, init)
    assert not torch.equal(dense.alphas, sparse.alphas)  # the sparsified α step sees a different loss
    assert torch.equal(dense.alphas, again.alphas) and hist == hist2
    assert [h["step"] for h in hist] == [1, 2, 3] and set(hist[0]) == {"step", "train_loss", "val_loss", "val_acc"}
    assert not dense.is_sparsified and not sparse.is_sparsified
    with pytest.raises(ValueError, match="steps"):
        ds.search(dense, *_data(), *_data(), steps=0, batch_size=4, sparse_alpha=False,
                  generator=torch.Generator())


# -- 6. HYDRA score learning ------------------------------------------------------------------------------------------


def test_global_topk_mask_is_exact_with_identity_backward():
    torch.manual_seed(0)
    scores = {"a": torch.randn(4, 5, requires_grad=True), "b": torch.randn(7, requires_grad=True)}
    flat = torch.cat([scores["a"].flatten(), scores["b"]])
    for k in (0, 1, 13, 27):
        masks = ds.global_topk_mask(scores, k)
        kept = torch.cat([masks["a"].flatten(), masks["b"]])
        assert int(kept.sum()) == k and set(kept.nonzero().flatten().tolist()) == _top_set(flat, k)
    r = {"a": torch.randn(4, 5), "b": torch.randn(7)}
    w = {"a": torch.randn(4, 5), "b": torch.randn(7)}
    sum((w[n] * masks[n] * r[n]).sum() for n in masks).backward()
    assert all(torch.allclose(scores[n].grad, r[n] * w[n] * scores[n].detach().sign()) for n in scores)


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))


@pytest.mark.parametrize("density", (0.3, 0.5, 1.0))
def test_learn_scores_keeps_exact_count_and_leaves_the_model_alone(density):
    model = _cnn()
    model[5].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    x, y = _data(16)
    masks = ds.learn_scores(model, ["0.weight", "5.weight"], density, x, y, steps=3, batch_size=8, lr=0.1,
                            generator=torch.Generator().manual_seed(0))
    assert sum(int(m.sum()) for m in masks.values()) == round(density * (36 + 12))
    assert masks["0.weight"].shape == (4, 1, 3, 3) and masks["5.weight"].dtype == torch.bool
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert grads == {n: p.requires_grad for n, p in model.named_parameters()}


def test_learn_scores_without_steps_is_scaled_magnitude():
    model = _cnn()
    masks = ds.learn_scores(model, ["0.weight", "5.weight"], 0.5, *_data(8), steps=0, batch_size=4, lr=0.1,
                            generator=torch.Generator())
    w0, w5 = model[0].weight.detach(), model[5].weight.detach()
    flat = torch.cat([(w0.abs() / 3).flatten(), (w5.abs() / 2).flatten()])
    got = torch.cat([masks["0.weight"].flatten(), masks["5.weight"].flatten()])
    assert set(got.nonzero().flatten().tolist()) == _top_set(flat, 24)


def test_learned_scores_drop_large_harmful_weights_magnitude_keeps():
    """Class = sign of feature 0; the large weights read pure noise (feature 1). Magnitude keeps them; score
    learning should swap them for the small informative ones (and keep them swapped at any of these rates: a
    score pushed through zero must not come back, see ``topk_mask``)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=g)
    y = (x[:, 0] > 0).long()
    model = nn.Linear(2, 2, bias=False)
    model.weight.data = torch.tensor([[-0.1, 2.0], [0.1, -2.0]])
    for lr in (0.01, 0.1, 0.5):
        masks = ds.learn_scores(model, ["weight"], 0.5, x, y, steps=60, batch_size=64, lr=lr, generator=g)
        assert masks["weight"].tolist() == [[True, False], [True, False]], lr


@pytest.mark.parametrize("density", (0, -0.5, 1.5))
def test_learn_scores_rejects_density_outside_zero_one(density):
    with pytest.raises(ValueError, match="density"):
        ds.learn_scores(_cnn(), ["0.weight"], density, *_data(4), steps=1, batch_size=2, lr=0.1,
                        generator=torch.Generator())


# -- 7. derived and hand-made nets ------------------------------------------------------------------------------------


GENOTYPE = d.Genotype(((("sparseconv3", 0), ("conv3", 1)), (("sepconv3", 2), ("skip", 0)),
                       (("maxpool", 3), ("sparseconv3", 1)), (("skip", 4), ("conv3", 2))), 4, d.OPS)


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 32, 32)])
@pytest.mark.parametrize("cells", (1, 2))
def test_derived_and_hand_nets_forward_both_image_shapes(shape, cells):
    torch.manual_seed(0)
    net = d.DerivedNet(GENOTYPE, shape[1], 10, C=4, cells=cells)
    assert net(torch.randn(shape)).shape == (2, 10)
    assert not any(isinstance(m, (d.SparseConv2d, d.MaskableConv2d)) for m in net.modules())
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in net.modules() if hasattr(m, "weight")
               and not isinstance(m, nn.BatchNorm2d))
    hand = d.hand_cnn_like(net, shape[1], 10, C=4)
    assert hand(torch.randn(shape)).shape == (2, 10)
    assert abs(d.param_count(hand) - d.param_count(net)) < 0.2 * d.param_count(net)
    assert d.HandCNN(shape[1], 10, C=4)(torch.randn(shape)).shape == (2, 10)


def test_derived_net_turns_sparseconv_into_dense_conv3_and_checks_the_genotype():
    net = d.DerivedNet(GENOTYPE, 1, 3, C=2)
    convs = [m for m in net.cells[0].ops.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6  # 2 sparseconv3 → conv3, 2 conv3, sepconv3's depthwise + pointwise
    bad = d.Genotype(((("conv3", 0), ("conv3", 2)),) + GENOTYPE.edges[1:], 4, d.OPS)  # node 0 cannot read state 2
    with pytest.raises(ValueError, match="node 0"):
        d.DerivedNet(bad, 1, 3, C=2)
