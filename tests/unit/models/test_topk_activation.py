"""Top-k activation: exactly k kept per token (not a batch threshold), gradient only through the kept entries, and
k outside [1, width) refused in one line."""
from __future__ import annotations

import pytest
import torch

from sparse_run.config import ConfigError
from sparse_run.models.activations import TopK, activation


def test_top_k_keeps_exactly_k_per_token_and_the_largest_ones():
    x = torch.randn(8, 5, 32, generator=torch.Generator().manual_seed(0)) + 3  # all positive: k survive ReLU
    y = TopK(4)(x)
    kept = y != 0
    assert torch.equal(kept.sum(-1), torch.full((8, 5), 4))
    smallest_kept = torch.where(kept, x, torch.inf).amin(-1)
    largest_dropped = torch.where(kept, -torch.inf, x).amax(-1)
    assert (smallest_kept >= largest_dropped).all()
    assert torch.equal(y[kept], x[kept])


def test_top_k_is_per_token_not_a_threshold_over_the_batch():
    x = torch.tensor([[10.0, 9.0, 8.0], [0.3, 0.2, 0.1]])
    assert torch.equal(TopK(1)(x), torch.tensor([[10.0, 0.0, 0.0], [0.3, 0.0, 0.0]]))


def test_gradient_flows_only_through_kept_entries():
    x = torch.tensor([[3.0, -1.0, 2.0, 1.0]], requires_grad=True)
    TopK(2)(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[1.0, 0.0, 1.0, 0.0]]))


@pytest.mark.parametrize("k, message", [(0, r"got 0"), (256, r"got 256; must be in \[1, 255\]"),
                                        (None, r"topk needs k")])
def test_k_outside_one_to_width_is_a_one_line_error(k, message):
    with pytest.raises(ConfigError, match=r"^model.activation_k: " + message) as err:
        activation("topk", k, 256)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^model.activation: got 'swish'; allowed: relu, gelu, topk"):
        activation("swish")
