#!/usr/bin/env python
"""Seconds per epoch of sparse-run's training loop vs a minimal hand-written PyTorch loop.

Same model (LeNet-300-100), data (MNIST, 55k training examples resident as tensors), batch size
(60) and optimizer (Adam 1.2e-3), measured side by side in one process, in alternating rounds,
reporting medians. sparse-run's loop runs with a 20 %-density mask (the LTH case), so its mask
enforcement is part of what is timed; both loops evaluate once per epoch.

    python scripts/bench_train.py --json results/bench_train.json [--epochs 1 --rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from sparse_run import data as data_mod
from sparse_run import models
from sparse_run.config import effective
from sparse_run.sparsity import MaskSet, prunable
from sparse_run.train import train


def load_cfg():
    with initialize_config_module(version_base="1.3", config_module="sparse_run.conf"):
        return effective(compose(config_name="config", overrides=["experiment=lottery_mnist"]))


def sparse_run_epoch(cfg, data, epochs: int) -> float:
    model = models.build(cfg.model, data.spec, seed=0)
    masks = MaskSet(prunable(model, cfg.method.policy))
    gen = torch.Generator().manual_seed(0)
    masks.set({n: torch.rand(m.shape, generator=gen) < 0.2 for n, m in masks.masks.items()})
    steps = epochs * (data.train_x.shape[0] // cfg.train.batch_size)
    t0 = time.perf_counter()
    train(model, masks, data, cfg.train, steps=steps, eval_every=steps // epochs, seed=0, desc="bench")
    return (time.perf_counter() - t0) / epochs


def lean_epoch(cfg, data, epochs: int) -> float:
    """What a researcher writes by hand: tensors in memory, randperm, slice, step."""
    model = models.build(cfg.model, data.spec, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    x, y, bs = data.train_x, data.train_y, int(cfg.train.batch_size)
    n = x.shape[0]
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n - bs + 1, bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            (model(data.test_x).argmax(1) == data.test_y).float().mean().item()
    return (time.perf_counter() - t0) / epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("results/bench_train.json"))
    ap.add_argument("--epochs", type=int, default=1, help="epochs per timed round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians are reported)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_cfg()
    data = data_mod.load(cfg.dataset, cfg.paths.data_dir, "cpu")
    sparse_run_epoch(cfg, data, 1) if args.rounds > 1 else None  # warm-up
    ours, lean = [], []
    for r in range(args.rounds):  # alternate which goes first
        pair = [("ours", sparse_run_epoch), ("lean", lean_epoch)]
        for name, fn in (pair if r % 2 == 0 else pair[::-1]):
            (ours if name == "ours" else lean).append(fn(cfg, data, args.epochs))
    out = {"sparse_run_s_per_epoch": statistics.median(ours), "lean_s_per_epoch": statistics.median(lean),
           "ratio_sparse_run_over_lean": statistics.median(ours) / statistics.median(lean),
           "rounds": {"sparse_run": ours, "lean": lean}, "threads": torch.get_num_threads(),
           "torch": torch.__version__, "train_examples": int(data.train_x.shape[0]), "batch_size": 60}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, args.json)
    print(f"sparse-run loop: {out['sparse_run_s_per_epoch']:.2f} s/epoch | hand-written loop: "
          f"{out['lean_s_per_epoch']:.2f} s/epoch | ratio {out['ratio_sparse_run_over_lean']:.3f} (target <= 1.15)")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
