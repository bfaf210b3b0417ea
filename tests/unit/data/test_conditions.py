"""Training-data conditions of the Lazy Neuron study: symmetric label noise makes exactly the asked share wrong,
uniformly over the other classes; random labels and noise inputs replace only the training split; all seeded."""
from __future__ import annotations

import pytest
import torch

from sparse_run.config import ConfigError
from sparse_run.data.conditions import apply_condition
from sparse_run.data.spec import DataBundle, DataSpec


def bundle(n: int = 20000, classes: int = 10) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.rand(n, 1, 4, 4, generator=g)
    return DataBundle(DataSpec("toy", (1, 4, 4), classes), x, y, x[:100], y[:100], x[100:200], y[100:200])


def test_label_noise_flips_exactly_the_share_to_other_classes_uniformly():
    d = bundle()
    noisy = apply_condition(d, "label_noise", seed=1, label_noise=0.4)
    wrong = noisy.train_y != d.train_y
    assert int(wrong.sum()) == 8000
    shift = (noisy.train_y[wrong] - d.train_y[wrong]) % 10
    counts = torch.bincount(shift, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 0.8 * 8000 / 9 and counts[1:].max() < 1.2 * 8000 / 9
    assert torch.equal(noisy.train_x, d.train_x) and torch.equal(noisy.val_y, d.val_y)
    assert torch.equal(noisy.test_y, d.test_y)
    assert torch.equal(apply_condition(d, "label_noise", seed=1, label_noise=0.4).train_y, noisy.train_y)
    assert not torch.equal(apply_condition(d, "label_noise", seed=2, label_noise=0.4).train_y, noisy.train_y)


def test_random_labels_and_noise_inputs_touch_only_the_training_split():
    d = bundle()
    r = apply_condition(d, "random_labels", seed=5)
    assert (r.train_y != d.train_y).float().mean() == pytest.approx(0.9, abs=0.02)  # a random label is right 1/10
    assert torch.equal(r.train_x, d.train_x) and torch.equal(r.val_y, d.val_y)
    z = apply_condition(d, "noise_inputs", seed=0)
    assert z.train_x.shape == d.train_x.shape and torch.equal(z.train_y, d.train_y)
    assert z.train_x.mean().abs() < 0.02 and z.train_x.std() == pytest.approx(1.0, abs=0.02)
    assert torch.equal(z.val_x, d.val_x) and torch.equal(z.test_x, d.test_x)
    assert apply_condition(d, "clean", seed=0) is d


def test_unknown_condition_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"^condition: got 'shuffled'; allowed: clean"):
        apply_condition(bundle(100), "shuffled", seed=0)
