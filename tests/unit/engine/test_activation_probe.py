"""The activation-sparsity probe on hand-made activations: per-token non-zero fraction, dead units apart, tokens of
3-D inputs, GELU's |a| <= tau, hooks gone after the block, and a negative tau refused."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sparse_run.config import ConfigError
from sparse_run.engine.probe import ActivationProbe
from sparse_run.models.activations import TopK


class Net(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act

    def forward(self, x):
        return self.act(x)


def test_probe_counts_zeros_per_token_and_dead_units_apart():
    net = Net(nn.ReLU())
    x = torch.tensor([[1.0, -1.0, 0.0, 2.0], [-1.0, -1.0, -1.0, 3.0]])
    with ActivationProbe(net) as probe:
        net(x)
    (row,) = probe.report()
    assert row.name == "act" and row.tokens == 2 and row.zero_means == "== 0" and row.units == 4
    assert row.nonzero == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert row.dead == pytest.approx(2 / 4)  # units 1 and 2 are zero on both tokens


def test_tokens_are_rows_of_the_last_dimension_and_batches_accumulate():
    net = Net(nn.ReLU())
    with ActivationProbe(net) as probe:
        net(torch.tensor([[[1.0, 1.0], [-1.0, 1.0]], [[-1.0, -1.0], [1.0, -1.0]]]))  # [batch 2, tokens 2, d 2]
        net(torch.tensor([[1.0, 1.0]]))
    (row,) = probe.report()
    assert row.tokens == 5
    assert row.nonzero == pytest.approx((1 + 0.5 + 0 + 0.5 + 1) / 5)
    assert row.dead == 0.0
    net(torch.tensor([[5.0, 5.0]]))  # after the block: no hook, no count
    assert probe.report()[0].tokens == 5


def test_gelu_counts_small_magnitudes_as_zero_and_says_so():
    net = Net(nn.GELU())
    x = torch.tensor([[-10.0, 0.0, 1.0, 0.001]])  # GELU: ≈-7.7e-23, 0, 0.841, ≈0.0005
    with ActivationProbe(net, tau=0.01) as probe:
        net(x)
    (row,) = probe.report()
    assert row.nonzero == pytest.approx(1 / 4) and row.zero_means == "|a| <= 0.01"
    with pytest.raises(ConfigError, match=r"^probe.tau: got -1"):
        ActivationProbe(net, tau=-1)


def test_top_k_layers_are_probed_and_hit_k_over_width():
    net = Net(TopK(2))
    with ActivationProbe(net) as probe:
        net(torch.randn(64, 16, generator=torch.Generator().manual_seed(0)).abs() + 0.1)
    assert probe.report()[0].nonzero == pytest.approx(2 / 16)


def test_probe_hook_measures_only_at_evaluations_and_restores_training_mode():
    from sparse_run.engine.probe import ProbeHook

    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    g = torch.Generator().manual_seed(0)
    hook = ProbeHook(net, torch.randn(50, 4, generator=g), torch.randn(30, 4, generator=g), examples=20)
    net.train()
    assert hook(1, net, None) is None  # a training step: nothing measured
    m = hook.eval_metrics(10)
    assert net.training
    assert set(m) == {"act_nonzero_train", "act_dead_train", "act_nonzero_val", "act_dead_val", "act_nonzero_val_1"}
    with ActivationProbe(net) as probe:
        net.eval()
        net(hook.inputs["val"])
    assert m["act_nonzero_val"] == pytest.approx(probe.report()[0].nonzero)
    assert hook.inputs["train"].shape == (20, 4) and hook.inputs["val"].shape == (20, 4)


def test_probe_settings_are_checked_in_one_line():
    from conftest import compose_cfg
    from sparse_run.execute import effective

    for over, msg in (("train.probe_activations=-1", r"^train.probe_activations: got -1"),
                      ("train.probe_tau=-0.1", r"^train.probe_tau: got -0.1")):
        with pytest.raises(ConfigError, match=msg):
            effective(compose_cfg("experiment=lottery_mnist", over), explicit=[over.split("=")[0]])
    with pytest.raises(ConfigError, match=r"^train.probe_activations: got 100 with train.replicates = 2"):
        effective(compose_cfg("experiment=lottery_mnist", "train.probe_activations=100", "train.replicates=2"),
                  explicit=["train.probe_activations", "train.replicates"])
