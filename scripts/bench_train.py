#!/usr/bin/env python
"""Seconds per epoch of sparse-run's training loop vs a hand-written loop vs a DataLoader loop,
and K = 1 vs K = 5 replicates.

Same model (LeNet-300-100), data (MNIST, 55k training examples), batch size (60) and optimizer
(Adam 1.2e-3) throughout, measured side by side in one process, in interleaved rounds (the order
rotates every round), reporting medians:

(a) sparse-run's loop (``train.train``) with a 20 %-density mask (the LTH case), so its mask
    enforcement is part of what is timed; also with ``train.linear_kernel=aten`` (PyTorch's own
    CPU matmuls instead of oneDNN), to separate the loop from the kernel;
(b) a minimal hand-written loop: tensors in memory, randperm, slice, step (the textbook: unfused Adam);
(b') the loop an expert writes for the same sparse training: (b) plus fused Adam and the masks on the gradients;
(c) the loop older runners use: a torchvision-style ``Dataset`` that turns each sample into a PIL
    image and runs ``ToTensor`` + ``Normalize`` on it (what ``torchvision.datasets.MNIST`` does),
    batched by a ``DataLoader`` (shuffle, ``--workers`` processes); built from the prepared
    tensors, no download;
(d) ``train.replicates``: the same number of steps for one seed through ``train()`` and for five
    seeds through the vectorised ``replicates.train_replicates`` (both at 20 % density).

Each loop evaluates once per timed round, as ``train()`` does: validation loss and accuracy plus
test accuracy. ``--quick`` times a quarter of an epoch per round.

    python scripts/bench_train.py --json results/bench_train.json [--epochs 1 --rounds 3 --quick]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sparse_run import data as data_mod
from sparse_run import models
from sparse_run.engine.replicates import Lane, train_replicates
from sparse_run.engine.train import train
from sparse_run.execute import effective
from sparse_run.sparsity import MaskSet, prunable
from sparse_run.store.files import load_state


def load_cfg():
    with initialize_config_module(version_base="1.3", config_module="sparse_run.conf"):
        return effective(compose(config_name="config", overrides=["experiment=lottery_mnist"]))


def _sparse_lane(cfg, data, seed: int) -> tuple[torch.nn.Module, MaskSet]:
    model = models.build(cfg.model, data.spec, seed=seed).to(data.train_x.device)
    masks = MaskSet(prunable(model, cfg.method.policy))
    gen = torch.Generator().manual_seed(seed)
    masks.set({n: torch.rand(m.shape, generator=gen) < 0.2 for n, m in masks.masks.items()})
    return model, masks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def sparse_run_loop(cfg, data, steps: int, linear_kernel: str | None = None) -> float:
    """(a) seconds for ``steps`` steps of ``train.train`` (one evaluation at the end); ``linear_kernel``
    overrides ``train.linear_kernel`` (the default config's is ``auto``)."""
    model, masks = _sparse_lane(cfg, data, 0)
    tcfg = cfg.train if linear_kernel is None else OmegaConf.merge(cfg.train, {"linear_kernel": linear_kernel})
    t0 = time.perf_counter()
    train(model, masks, data, tcfg, steps=steps, eval_every=steps, seed=0, desc="bench")
    _sync(data.train_x.device)
    return time.perf_counter() - t0


@torch.no_grad()
def _evaluate_like_train(model: torch.nn.Module, data) -> list[float]:
    """The references evaluate what ``train()`` evaluates: validation loss and accuracy (early
    stopping needs them) and test accuracy, read back in one sync."""
    out_v, out_t = model(data.val_x), model(data.test_x)
    return torch.stack([F.cross_entropy(out_v, data.val_y), (out_v.argmax(1) == data.val_y).float().mean(),
                        (out_t.argmax(1) == data.test_y).float().mean()]).tolist()


def _plain_step(model: torch.nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> None:
    """The textbook step both reference loops take (unfused Adam, as written by hand)."""
    loss = F.cross_entropy(model(xb), yb)
    opt.zero_grad()
    loss.backward()
    opt.step()


def _hand_batches(data, bs: int, steps: int) -> Iterator[torch.Tensor]:
    """The hand-written loops' data order: a fresh ``randperm`` per epoch, sliced into batches."""
    n, done = data.train_x.shape[0], 0
    while True:
        perm = torch.randperm(n, device=data.train_x.device)
        for i in range(0, n - bs + 1, bs):
            yield perm[i:i + bs]
            done += 1
            if done == steps:
                return


def lean_loop(cfg, data, steps: int) -> float:
    """(b) What a researcher writes by hand: tensors in memory, randperm, slice, step."""
    model = models.build(cfg.model, data.spec, seed=0).to(data.train_x.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    x, y = data.train_x, data.train_y
    t0 = time.perf_counter()
    for idx in _hand_batches(data, int(cfg.train.batch_size), steps):
        _plain_step(model, opt, x[idx], y[idx])
    _evaluate_like_train(model, data)
    return time.perf_counter() - t0


def expert_loop(cfg, data, steps: int) -> float:
    """(b') What an expert writes by hand for the same sparse training: tensors in memory, randperm, slice,
    fused Adam, ``zero_grad(set_to_none=True)``, the 20 %-density masks applied to the gradients with one
    ``_foreach_mul_`` per step, no host sync until the evaluation."""
    model, masks = _sparse_lane(cfg, data, 0)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=True)
    params = [p for _, p, _ in masks]
    fmasks = [m.float() for _, _, m in masks]
    x, y = data.train_x, data.train_y
    t0 = time.perf_counter()
    for idx in _hand_batches(data, int(cfg.train.batch_size), steps):
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch._foreach_mul_([p.grad for p in params], fmasks)
        opt.step()
    _evaluate_like_train(model, data)
    return time.perf_counter() - t0


class TorchvisionStyleMNIST(torch.utils.data.Dataset):
    """``torchvision.datasets.MNIST.__getitem__`` over our prepared uint8 tensors: each sample
    becomes a PIL image and goes through the transform (``ToTensor`` + ``Normalize``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable[[Any], torch.Tensor]):
        self.data, self.targets, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        img = Image.fromarray(self.data[i].numpy(), mode="L")
        return self.transform(img), int(self.targets[i])


def make_dataloader(cfg, n: int, workers: int) -> torch.utils.data.DataLoader:
    from torchvision import transforms

    blob = load_state(data_mod.prepare(cfg.dataset, cfg.paths.data_dir))
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((cfg.dataset.mean,), (cfg.dataset.std,))])
    ds = TorchvisionStyleMNIST(blob["train_x"][:n], blob["train_y"][:n], tf)
    return torch.utils.data.DataLoader(ds, batch_size=int(cfg.train.batch_size), shuffle=True, drop_last=True,
                                       num_workers=workers, generator=torch.Generator().manual_seed(0))


def dataloader_loop(cfg, data, steps: int, loader: torch.utils.data.DataLoader) -> float:
    """(c) the same model and optimizer fed by the DataLoader (per-sample PIL transforms)."""
    device = data.train_x.device
    model = models.build(cfg.model, data.spec, seed=0).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    t0 = time.perf_counter()
    done = 0
    while done < steps:
        for xb, yb in loader:
            _plain_step(model, opt, xb.to(device), yb.to(device))
            done += 1
            if done == steps:
                break
    _evaluate_like_train(model, data)
    return time.perf_counter() - t0


def replicates_loop(cfg, data, steps: int, k: int) -> float:
    """(d) ``steps`` steps for ``k`` seeds: ``train()`` for one, the vectorised path for several."""
    if k == 1:
        return sparse_run_loop(cfg, data, steps)
    lanes = [Lane(*_sparse_lane(cfg, data, s), seed=s) for s in range(k)]
    t0 = time.perf_counter()
    train_replicates(lanes, data, cfg.train, steps=steps, eval_every=steps, desc="bench")
    _sync(data.train_x.device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("results/bench_train.json"))
    ap.add_argument("--epochs", type=float, default=1, help="epochs per timed round for (a)-(c)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    ap.add_argument("--replicate-steps", type=int, default=300, help="steps per timed round for K = 1 vs 5")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for (c)")
    ap.add_argument("--quick", action="store_true", help="a quarter epoch and 60 replicate steps per round")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.replicate_steps = min(args.epochs, 0.25), min(args.replicate_steps, 60)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_cfg()
    device = torch.device(args.device)
    data = data_mod.load(cfg.dataset, cfg.paths.data_dir, device)
    n, bs = int(data.train_x.shape[0]), int(cfg.train.batch_size)
    per_epoch = n // bs
    steps = max(1, int(round(args.epochs * per_epoch)))
    loader = make_dataloader(cfg, n, args.workers)
    k_steps = args.replicate_steps
    jobs: dict[str, Callable[[], float]] = {
        "sparse_run": lambda: sparse_run_loop(cfg, data, steps) * per_epoch / steps,
        "sparse_run_aten": lambda: sparse_run_loop(cfg, data, steps, "aten") * per_epoch / steps,
        "lean": lambda: lean_loop(cfg, data, steps) * per_epoch / steps,
        "expert": lambda: expert_loop(cfg, data, steps) * per_epoch / steps,
        "dataloader": lambda: dataloader_loop(cfg, data, steps, loader) * per_epoch / steps,
        "replicates_1": lambda: replicates_loop(cfg, data, k_steps, 1),
        "replicates_5": lambda: replicates_loop(cfg, data, k_steps, 5),
    }
    # warm-up: first-use costs (lazy imports, allocator, thread pools) stay out of the medians
    sparse_run_loop(cfg, data, 20), lean_loop(cfg, data, 20), expert_loop(cfg, data, 20)
    dataloader_loop(cfg, data, 5, loader)
    replicates_loop(cfg, data, 10, 5)
    times: dict[str, list[float]] = {name: [] for name in jobs}
    names = list(jobs)
    for r in range(args.rounds):  # rotate the order so no loop always runs first (or last)
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            times[name].append(jobs[name]())
            print(f"round {r}: {name} {times[name][-1]:.3f} s", file=sys.stderr)
    med = {name: statistics.median(v) for name, v in times.items()}
    out = {
        "sparse_run_s_per_epoch": med["sparse_run"], "lean_s_per_epoch": med["lean"],
        "dataloader_s_per_epoch": med["dataloader"], "sparse_run_aten_s_per_epoch": med["sparse_run_aten"],
        "replicates_1_s": med["replicates_1"], "replicates_5_s": med["replicates_5"],
        "expert_s_per_epoch": med["expert"],
        "ratio_sparse_run_over_lean": med["sparse_run"] / med["lean"],
        "ratio_sparse_run_over_expert": med["sparse_run"] / med["expert"],
        "ratio_dataloader_over_sparse_run": med["dataloader"] / med["sparse_run"],
        "ratio_replicates_5_over_1": med["replicates_5"] / med["replicates_1"],
        "ratio_sparse_run_aten_over_lean": med["sparse_run_aten"] / med["lean"],
        "ratio_dataloader_over_sparse_run_aten": med["dataloader"] / med["sparse_run_aten"],
        "replicates_5_speedup_vs_5_runs": 5 * med["replicates_1"] / med["replicates_5"],
        "targets": {"ratio_sparse_run_over_lean": "<= 1.15", "ratio_dataloader_over_sparse_run": ">= 5",
                    "ratio_replicates_5_over_1": "<= 2 (GPU)"},
        "rounds": times, "steps_per_round": steps, "replicate_steps": k_steps, "epochs_per_round": steps / per_epoch,
        "quick": args.quick, "dataloader_workers": args.workers, "device": str(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "train_examples": n, "batch_size": bs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, args.json)
    print(f"(a) sparse-run loop: {med['sparse_run']:.2f} s/epoch | (b) hand-written: {med['lean']:.2f} s/epoch | "
          f"(b') expert hand-written: {med['expert']:.2f} s/epoch (a)/(b') {out['ratio_sparse_run_over_expert']:.3f} | "
          f"(c) DataLoader: {med['dataloader']:.2f} s/epoch | (a) with train.linear_kernel=aten: "
          f"{med['sparse_run_aten']:.2f} s/epoch\n"
          f"(a)/(b) {out['ratio_sparse_run_over_lean']:.3f} (target <= 1.15) | "
          f"(c)/(a) {out['ratio_dataloader_over_sparse_run']:.2f} (target >= 5) | with aten: "
          f"(a)/(b) {out['ratio_sparse_run_aten_over_lean']:.3f}, (c)/(a) {out['ratio_dataloader_over_sparse_run_aten']:.2f}\n"
          f"replicates, {k_steps} steps: K=1 {med['replicates_1']:.2f} s | K=5 {med['replicates_5']:.2f} s | "
          f"K=5/K=1 {out['ratio_replicates_5_over_1']:.2f} (GPU target <= 2) | "
          f"{out['replicates_5_speedup_vs_5_runs']:.2f}x the throughput of 5 separate runs")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
