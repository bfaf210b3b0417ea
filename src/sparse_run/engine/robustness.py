"""Test-time measures beyond clean accuracy, for the Lazy Neuron study's Top-k comparison (Li et al. 2023,
``../shared/papers.md`` §12): expected calibration error and accuracy on noise-corrupted inputs. They read the test
split once, after training; nothing is ever selected on them.
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """The model's outputs on ``x`` in evaluation mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])
    model.train(was_training)
    return out


def expected_calibration_error(logits: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """ECE = Σ_b (n_b / N) · |accuracy_b − mean confidence_b| over ``bins`` equal-width confidence bins on [0, 1]
    (confidence: the top softmax probability; a bin holds c with lo < c <= hi, the first also c = 0)."""
    conf, pred = torch.softmax(logits.double(), dim=1).max(dim=1)
    correct = (pred == y).double()
    which = torch.clamp(torch.ceil(conf * bins).long() - 1, 0, bins - 1)
    gap = torch.bincount(which, weights=correct, minlength=bins) - torch.bincount(which, weights=conf, minlength=bins)
    return float(gap.abs().sum() / y.numel())  # Σ_b |Σ_{i∈b} (correct_i − conf_i)| / N


def corrupted(x: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    """``x`` plus i.i.d. Gaussian noise of standard deviation ``std`` in the inputs' (normalised) units."""
    gen = torch.Generator().manual_seed(int(seed))
    return x + float(std) * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)


def robustness(model: nn.Module, test_x: torch.Tensor, test_y: torch.Tensor, *, bins: int,
               corruption_stds: list[float], seed: int) -> dict[str, float]:
    """``test_ece`` on the clean test split and ``test_acc_noise_<std>`` on it corrupted at each std (the same noise
    draw for every model of a seed, so arms pair)."""
    out = {"test_ece": expected_calibration_error(logits(model, test_x), test_y, bins)}
    for std in corruption_stds:
        pred = logits(model, corrupted(test_x, std, seed)).argmax(1)
        out[f"test_acc_noise_{float(std):g}"] = float((pred == test_y).double().mean())
    return out
