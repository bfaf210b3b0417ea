#!/usr/bin/env python
"""Per-step training time on sparse kernels vs dense, per density, and the crossover (``train.sparse_kernel``).

For LeNet-300-100 at 100 / 51 / 21 / 7 / 3.6 / 1.9 % density and 784-1024-1024-10 at 10 / 2 / 1 %, at 1 and 2
threads: seconds per step of ``train()``'s loop (forward, backward, gradient masking, fused Adam; batch 60; MNIST-shaped
synthetic data, a 60-example validation / test set so evaluation does not weigh in) with every masked layer
dense, under ``auto`` (the measured per-layer choice), and forced ``cpp`` / ``csr``. Side by side in one
process, interleaved rounds with the order rotating, medians. Every layer's mask is uniformly random at the
stated density. ``auto``'s measurements happen in the warm-up (they are remembered), so rounds time steady
training. The crossover is the density below which the best sparse kernel beats dense (log-linear interpolation
between the two measured densities around the change of sign).

    python scripts/bench_sparse.py --json results/bench_sparse.json [--rounds 5 --quick]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sparse_run import models
from sparse_run.data.spec import DataBundle, DataSpec
from sparse_run.engine import kernels, timing
from sparse_run.engine import sparse_linear as sl
from sparse_run.engine.train import train
from sparse_run.sparsity import MaskSet, prunable

SPEC = DataSpec("mnist_shaped", (1, 28, 28), 10)
MODELS = {"lenet_300_100": ([300, 100], [1.0, 0.51, 0.21, 0.07, 0.036, 0.019]),
          "mlp_1024_1024": ([1024, 1024], [0.10, 0.02, 0.01])}
TARGETS = {("lenet_300_100", 0.036): 1.5, ("mlp_1024_1024", 0.02): 3.0}  # issue 20: auto vs dense, 2-core x86


def _cfg():
    with initialize_config_module(version_base="1.3", config_module="sparse_run.conf"):
        return compose(config_name="config", overrides=["experiment=lottery_mnist"])


def _data(n: int = 6000) -> DataBundle:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, *SPEC.input_shape, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return DataBundle(SPEC, x, y, x[:60], y[:60], x[60:120], y[60:120])


def _step_s(cfg, hidden: list[int], density: float, kind: str, data: DataBundle, steps: int) -> float:
    model = models.build(OmegaConf.merge(cfg.model, {"hidden": hidden}), SPEC, seed=0)
    masks = MaskSet(prunable(model, cfg.method.policy))
    gen = torch.Generator().manual_seed(1)
    masks.set({n: torch.rand(m.shape, generator=gen) < density for n, m in masks.masks.items()})
    tcfg = OmegaConf.merge(cfg.train, {"sparse_kernel": kind, "chance_check": False, "checkpoint_every": 0})
    res = train(model, masks, data, tcfg, steps=steps, eval_every=steps, seed=0, desc="bench")
    _step_s.last_kernels = res.extra.get("kernels")  # type: ignore[attr-defined]
    return res.wall_s / steps  # the loop's own time: building the model and its masks is not a training step


def _crossover(points: list[tuple[float, float]]) -> dict[str, object]:
    """Where dense-time / sparse-time crosses 1, from (density, ratio) pairs (log-linear between the two measured
    densities around the change of sign); a bound when every measured density is on one side."""
    pts = sorted(points, reverse=True)
    for (d1, r1), (d2, r2) in zip(pts, pts[1:]):
        if r1 < 1 <= r2:
            a, b = math.log(r1), math.log(r2)
            f = (0 - a) / (b - a)
            return {"crossover_density": float(math.exp(math.log(d1) + f * (math.log(d2) - math.log(d1)))),
                    "kind": "interpolated"}
    if pts and pts[0][1] >= 1:  # sparse already wins at the highest density measured
        return {"crossover_density": pts[0][0], "kind": "at least (sparse wins at every density measured)"}
    return {"crossover_density": pts[-1][0] if pts else None, "kind": "below (dense wins at every density measured)"}


def _trains_sparse(summary: str | None) -> bool:
    """Whether ``auto`` trained any layer on a sparse kernel (``Kernels.summary``: ``name=train/eval ...``)."""
    return any(part.split("=", 1)[1].split("/")[0] != "dense" for part in (summary or "dense").split() if "=" in part)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("results/bench_sparse.json"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--quick", action="store_true", help="fewer steps per round")
    args = ap.parse_args()
    rounds = args.rounds
    cfg, data = _cfg(), _data()
    kinds = ["dense", "auto", "csr"] + (["cpp"] if sl.cpp_module() is not None else [])
    rows, summary = [], {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for model, (hidden, densities) in MODELS.items():
            steps = (40 if args.quick else 100) if model == "lenet_300_100" else (20 if args.quick else 50)
            for d in densities:
                for k in kinds:  # warm-up; auto measures its choices here (remembered for the rounds)
                    _step_s(cfg, hidden, d, k, data, 5)
                times: dict[str, list[float]] = {k: [] for k in kinds}
                chosen = None
                for r in range(rounds):
                    for k in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
                        times[k].append(_step_s(cfg, hidden, d, k, data, steps))
                        if k == "auto":
                            chosen = _step_s.last_kernels  # type: ignore[attr-defined]
                med = {k: statistics.median(v) for k, v in times.items()}
                best_sparse = min((k for k in kinds if k in ("csr", "cpp")), key=med.__getitem__)
                row = {"model": model, "threads": threads, "density": d, "steps_per_round": steps,
                       **{f"{k}_ms_per_step": round(v * 1e3, 4) for k, v in med.items()},
                       "speedup_auto": med["dense"] / med["auto"], "speedup_best_sparse": med["dense"] / med[best_sparse],
                       "best_sparse": best_sparse, "auto_kernels": chosen,
                       "rounds_ms": {k: [round(t * 1e3, 4) for t in v] for k, v in times.items()}}
                rows.append(row)
                print(f"{model} t={threads} d={d:.3f}: " + " ".join(f"{k} {v * 1e3:.3f}" for k, v in med.items())
                      + f" ms/step | auto {row['speedup_auto']:.2f}x ({chosen}) | best sparse {best_sparse} "
                      f"{row['speedup_best_sparse']:.2f}x", file=sys.stderr)
            pts = [(r["density"], r["speedup_best_sparse"]) for r in rows if r["model"] == model and r["threads"] == threads]
            summary[f"{model}/t{threads}"] = _crossover(pts)
    checks = {}
    for (model, d), want in TARGETS.items():
        for threads in args.threads:
            got = next((r["speedup_auto"] for r in rows if (r["model"], r["density"], r["threads"]) == (model, d, threads)), None)
            checks[f"{model}@{d}/t{threads}"] = {"speedup_auto": got, "target": f">= {want}",
                                                  "met": got is not None and got >= want}
    # auto falls back to dense; where it trains every layer dense it *is* the dense loop, so its ratio there is
    # timing noise and says nothing about the choice (reported as min_speedup_auto_all_rows all the same)
    chose_sparse = [r for r in rows if _trains_sparse(r["auto_kernels"])]
    never_slower = all(r["speedup_auto"] >= 0.95 for r in chose_sparse)  # 5 %: timing noise
    out = {"rows": rows, "crossover": summary, "targets": checks, "auto_never_slower_than_dense_within_5pct": never_slower,
           "min_speedup_auto_where_sparse_chosen": min((r["speedup_auto"] for r in chose_sparse), default=None),
           "min_speedup_auto_all_rows": min(r["speedup_auto"] for r in rows),
           "rounds": rounds, "batch_size": int(cfg.train.batch_size), "optimizer": str(cfg.train.optimizer),
           "cpp_kernel": sl.cpp_status(), "torch": torch.__version__, "cpu": timing.fingerprint(),
           "margin": kernels.MARGIN, "max_density": kernels.MAX_DENSITY}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, args.json)
    for key, c in checks.items():
        print(f"target {key}: auto {c['speedup_auto']:.2f}x vs dense ({c['target']}): {'met' if c['met'] else 'NOT met'}")
    for key, c in summary.items():
        print(f"crossover {key}: {c['crossover_density']} density ({c['kind']})")
    print(f"auto never slower than dense where it trained on a sparse kernel (within 5 %): {never_slower}; lowest ratio "
          f"over all rows {out['min_speedup_auto_all_rows']:.2f} (rows where it chose dense are dense-vs-dense noise)")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
