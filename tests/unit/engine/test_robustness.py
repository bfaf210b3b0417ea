"""Expected calibration error and corrupted-input accuracy on hand-made logits: the defining formula, bin edges,
perfect calibration, and the same corruption draw for every model of a seed."""
from __future__ import annotations


import pytest
import torch
from torch import nn

from sparse_run.engine.robustness import corrupted, expected_calibration_error, robustness


def logits_with_confidence(p: float, n: int, classes: int = 2) -> torch.Tensor:
    """Logits whose softmax puts ``p`` on class 0 and the rest spread evenly."""
    rest = (1 - p) / (classes - 1)
    return torch.log(torch.tensor([[p] + [rest] * (classes - 1)] * n))


def test_ece_is_the_gap_between_confidence_and_accuracy_weighted_by_bin_size():
    # 10 examples at confidence 0.8 of which 5 are right: one bin, |0.5 − 0.8| = 0.3
    y = torch.tensor([0] * 5 + [1] * 5)
    assert expected_calibration_error(logits_with_confidence(0.8, 10), y, bins=15) == pytest.approx(0.3)
    # two bins: 4 at 0.9 all right (gap 0.1), 6 at 0.6 with 3 right (gap 0.1) → 0.4·0.1 + 0.6·0.1
    logits = torch.cat([logits_with_confidence(0.9, 4), logits_with_confidence(0.6, 6)])
    y = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    assert expected_calibration_error(logits, y, bins=15) == pytest.approx(0.1)


def test_ece_is_zero_when_confidence_matches_accuracy_and_bins_do_not_pool_across_edges():
    y = torch.tensor([0, 0, 0, 1])  # confidence 0.75, 3 of 4 right
    assert expected_calibration_error(logits_with_confidence(0.75, 4), y, bins=10) == pytest.approx(0.0, abs=1e-7)
    # over-confident at 0.95 (all wrong) and under-confident at 0.55 (all right) must not cancel: separate bins
    logits = torch.cat([logits_with_confidence(0.95, 2), logits_with_confidence(0.55, 2)])
    y = torch.tensor([1, 1, 0, 0])
    assert expected_calibration_error(logits, y, bins=15) == pytest.approx(0.5 * 0.95 + 0.5 * 0.45)
    # one bin pools them: |2/4 − 0.75| = 0.25
    assert expected_calibration_error(logits, y, bins=1) == pytest.approx(0.25)


def test_corruption_is_seeded_and_scaled():
    x = torch.zeros(2000, 5)
    a, b = corrupted(x, 0.5, seed=3), corrupted(x, 0.5, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, corrupted(x, 0.5, seed=4))
    assert a.std().item() == pytest.approx(0.5, rel=0.05)


def test_robustness_columns_for_a_model_that_ignores_its_input():
    class Constant(nn.Module):
        def forward(self, x):
            return logits_with_confidence(0.9, x.shape[0], classes=3)

    y = torch.tensor([0, 0, 1, 2])
    out = robustness(Constant(), torch.zeros(4, 3), y, bins=15, corruption_stds=[0.5, 2.0], seed=0)
    assert set(out) == {"test_ece", "test_acc_noise_0.5", "test_acc_noise_2"}
    assert out["test_acc_noise_0.5"] == out["test_acc_noise_2"] == 0.5
    assert out["test_ece"] == pytest.approx(0.4)
