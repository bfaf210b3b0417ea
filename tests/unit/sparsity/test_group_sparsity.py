"""g×1 group sparsity (SparseByteNN): exact group counts, the channel permutation preserves the network's function
and never keeps less magnitude than the identity, and the group kernel computes the masked dense product."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from sparse_run.config import ConfigError
from sparse_run.data.spec import DataSpec
from sparse_run.hardware import group_kernel
from sparse_run.hardware.execute import GroupSparseLayer, convert
from sparse_run.models import build
from sparse_run.sparsity.patterns import is_block_shaped
from sparse_run.sparsity.permute import apply, group_permutation, links_of, permute_for_groups, retained
from sparse_run.sparsity.selection import select


def _sel(g: int, **kw):
    return OmegaConf.create({"pattern": "group", "group": g, "block": None, "permute": False, **kw})


@pytest.mark.parametrize("scope", ["layerwise", "global"])
@pytest.mark.parametrize("g", [2, 4, 8, 16])
def test_group_selection_keeps_exact_whole_groups(scope, g):
    torch.manual_seed(0)
    shapes = {"a": (32, 20), "b": (64, 8, 3, 3)}  # a Linear and a conv: groups run along output channels
    scores = {n: torch.rand(s) for n, s in shapes.items()}
    masks = {n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()}
    for density in (0.7, 0.5, 0.3):
        got = select(scores, masks, density, scope=scope, pattern="group", selection=_sel(g))
        groups = {n: s[0] // g * (s[1] * (s[2] * s[3] if len(s) == 4 else 1)) for n, s in shapes.items()}
        kept = {n: int(m.sum()) // g for n, m in got.items()}
        if scope == "layerwise":
            assert kept == {n: round(density * c) for n, c in groups.items()}
        assert sum(kept.values()) == round(density * sum(groups.values()))
        assert all(is_block_shaped(m, g, 1) for m in got.values())


def test_group_selection_keeps_the_groups_with_the_largest_sum():
    w = torch.tensor([[1.0, 9.0], [1.0, 0.0], [5.0, 0.0], [5.0, 0.0]])  # groups of 2: sums [2, 9], [10, 0]
    got = select({"w": w}, {"w": torch.ones(4, 2, dtype=torch.bool)}, 0.5, scope="layerwise", pattern="group",
                 selection=_sel(2))
    assert got["w"].tolist() == [[False, True], [False, True], [True, False], [True, False]]


def test_group_size_must_divide_every_prunable_layer():
    masks = {"hidden.0.weight": torch.ones(300, 784, dtype=torch.bool)}
    with pytest.raises(ConfigError, match=r"^method.selection.group: got 8; layer hidden.0.weight has 300 output "
                                          r"channels, not a multiple of 8") as err:
        select({"hidden.0.weight": torch.rand(300, 784)}, masks, 0.5, scope="layerwise", pattern="group",
               selection=_sel(8))
    assert "\n" not in str(err.value)


def _image_spec(c: int = 3, side: int = 16) -> DataSpec:
    return DataSpec(name="synthetic", kind="image", input_shape=(c, side, side), num_classes=10)


MODELS = {
    "mlp": ({"name": "m", "arch": "mlp", "hidden": [32, 16], "width": 1.0, "init": "kaiming_normal",
             "activation": "relu", "activation_k": None}, DataSpec(name="s", kind="image", input_shape=(1, 8, 8),
                                                                  num_classes=10)),
    "convfc": ({"name": "c", "arch": "convfc", "blocks": [[8, 8], [16]], "hidden": [32], "kernel": 3,
                "padding": "same", "width": 1.0, "init": "kaiming_normal"}, _image_spec()),
    "mobilenet_v1": ({"name": "mb", "arch": "mobilenet_v1", "widths": [8, 16, 32, 32], "stem_stride": 1,
                      "width": 1.0, "init": "kaiming_normal"}, _image_spec()),
}


def _model(name: str) -> nn.Module:
    from sparse_run.config.schema import ModelConfig

    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), MODELS[name][0])
    model = build(cfg, MODELS[name][1], seed=0)
    for m in model.modules():  # non-trivial BatchNorm statistics, so a permutation that forgot them would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_every_declared_permutation_preserves_the_function(name):
    model = _model(name)
    x = torch.randn(4, *MODELS[name][1].input_shape)
    before = model(x)
    gen = torch.Generator().manual_seed(1)
    links = links_of(model)
    assert links
    for link in links.values():
        n = model.get_submodule(link.producer).weight.shape[0]
        apply(model, link, torch.randperm(n, generator=gen))
    assert torch.allclose(model(x), before, atol=1e-5)


def test_permutation_for_groups_preserves_the_function_and_moves_masks_along():
    model = _model("convfc")
    x = torch.randn(4, 3, 16, 16)
    before = model(x)
    names = ["convs.0.weight", "convs.1.weight", "convs.2.weight", "fc.0.weight"]
    masks = {n: torch.rand_like(model.get_parameter(n)) > 0.5 for n in names}
    marked = {n: model.get_parameter(n).detach() * masks[n] for n in names}
    stats = permute_for_groups(model, names, 4, 0.5, masks)
    assert torch.allclose(model(x), before, atol=1e-5)
    assert all(after >= before_ - 1e-12 for before_, after in stats.values())
    for n in names:  # each weight still carries its own mask entry: the kept multiset of values is unchanged
        kept = (model.get_parameter(n).detach() * masks[n]).flatten().sort().values
        assert torch.equal(kept, marked[n].flatten().sort().values)


def test_group_permutation_packs_interleaved_rows_and_never_loses_to_identity():
    torch.manual_seed(0)
    base = torch.randn(8, 16).abs() * 0.01
    w = base.clone()
    w[0::2, :8] += 1.0  # even rows are large in the left half, odd rows in the right half
    w[1::2, 8:] += 1.0
    perm, before, after = group_permutation(w, 2, 0.5)
    assert after > before + 0.2 and after == pytest.approx(retained(w[perm], 2, 0.5))
    for seed in range(5):
        w = torch.randn(32, 24, generator=torch.Generator().manual_seed(seed))
        _, b, a = group_permutation(w, 4, 0.3)
        assert a >= b


def test_permutation_refuses_a_layer_without_a_permutable_successor():
    model = _model("mlp")
    with pytest.raises(ConfigError, match=r"^method.selection.permute: got true; layer out.weight of MLP cannot be "
                                          r"permuted \(its successor cannot follow a permutation\)"):
        permute_for_groups(model, ["hidden.0.weight", "out.weight"], 2, 0.5)


def _group_masked(layer: nn.Module, g: int, density: float) -> torch.Tensor:
    w = layer.weight.detach()
    m = select({"w": w.abs()}, {"w": torch.ones_like(w, dtype=torch.bool)}, density, scope="layerwise",
               pattern="group", selection=_sel(g))["w"]
    with torch.no_grad():
        layer.weight.mul_(m)
    return m


@pytest.mark.parametrize("kernel", ["gather_bmm", "gather_bmm_chunked", "csr", "cpp", "cpp_stream"])
@pytest.mark.parametrize("layer, x", [
    (nn.Linear(40, 32), torch.randn(150, 40)),  # more columns than one chunk
    (nn.Linear(40, 16, bias=False), torch.randn(1, 40)),
    (nn.Conv2d(12, 16, 1), torch.randn(2, 12, 9, 9)),
    (nn.Conv2d(12, 16, 1, stride=2, bias=False), torch.randn(3, 12, 9, 9)),
], ids=["linear", "linear_batch1", "pointwise", "pointwise_stride2"])
def test_group_kernel_equals_the_masked_dense_layer(kernel, layer, x):
    if kernel not in GroupSparseLayer.kernels():
        pytest.skip(f"the C++ group kernel is {group_kernel.status()} here")
    torch.manual_seed(0)
    m = _group_masked(layer, 4, 0.4)
    fast = GroupSparseLayer(layer, m, 4)
    fast._pick = lambda xt: kernel  # force the variant under test
    with torch.no_grad():
        assert torch.allclose(fast(x), layer(x), atol=1e-5)


def test_group_execution_picks_a_kernel_by_timing_and_falls_back_on_other_masks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 8))
    m0 = _group_masked(model[0], 4, 0.5)
    m2 = torch.rand(8, 16) > 0.5  # not group-shaped
    with torch.no_grad():
        model[2].weight.mul_(m2)
    conv = convert(model, {"0.weight": m0, "2.weight": m2}, "group", group=4)
    assert conv.status["0"] == "ok" and conv.status["2"].startswith("dense_fallback")
    x = torch.randn(5, 24)
    with torch.no_grad():
        assert torch.allclose(conv.model(x), model(x), atol=1e-5)
    assert conv.model[0].chosen[5] in GroupSparseLayer.kernels()
