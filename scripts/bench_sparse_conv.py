#!/usr/bin/env python
"""Does a sparse conv pay on this CPU? One conv layer's forward + input gradient + weight gradient (on the mask,
packed), batch 60: dense ``F.conv2d`` on the masked weight against im2col (``F.unfold``) into the C++ sparse linear
kernel of ``engine.sparse_linear``: the smallest sparse conv built from what sparse-run has. LTH Conv-6 shapes on
CIFAR-10, densities 50 / 20 / 10 / 5 / 2 %, interleaved rounds, medians (``engine.timing.median_s``); also checks
the outputs agree. Why it exists: ``train.sparse_kernel`` leaves conv layers dense, and this is the measurement
behind that (docs/performance.md).

    python scripts/bench_sparse_conv.py [threads]
"""
import sys

import torch
import torch.nn.functional as F

from sparse_run.engine import sparse_linear as sl
from sparse_run.engine.timing import median_s

B = 60
LAYERS = {  # name: (C_in, C_out, H, k) -- LTH Conv-6 on CIFAR-10 (padding 1)
    "conv6.2 64->64 32x32": (64, 64, 32, 3),
    "conv6.4 128->128 16x16": (128, 128, 16, 3),
    "conv6.6 256->256 8x8": (256, 256, 8, 3),
}
DENS = [0.5, 0.2, 0.1, 0.05, 0.02]


def sparse_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, plan: sl.Plan, k: int,
                packed_grad: bool = False) -> torch.Tensor:
    """``F.conv2d(x, w, b, padding=1)`` for a square input: the unfolded patches through the sparse linear kernel."""
    n, c, h = x.shape[0], x.shape[1], x.shape[2]
    rows = F.unfold(x, k, padding=1).transpose(1, 2).reshape(-1, c * k * k)  # [B H H, C k k]
    y = sl.linear_cpp(rows, w.view(w.shape[0], -1), b, plan, packed_grad)
    return y.view(n, h * h, -1).transpose(1, 2).reshape(n, -1, h, h)


def main(threads: int) -> None:
    torch.set_num_threads(threads)
    for name, (ci, co, h, k) in LAYERS.items():
        for d in DENS:
            g = torch.Generator().manual_seed(0)
            mask = torch.rand(co, ci, k, k, generator=g) < d
            w = (torch.randn(co, ci, k, k, generator=g) * 0.05 * mask).requires_grad_()
            b = torch.zeros(co, requires_grad=True)
            x = torch.randn(B, ci, h, h, generator=g, requires_grad=True)
            gy = torch.randn(B, co, h, h, generator=g)
            plan = sl.Plan.of(mask.view(co, -1))
            with torch.no_grad():
                ref = F.conv2d(x, w, b, padding=1)
                err = float((ref - sparse_conv(x, w, b, plan, k)).abs().max() / ref.abs().max())

            def dense() -> None:
                torch.autograd.grad(F.conv2d(x, w, b, padding=1), [x, w], gy)

            def sparse() -> None:
                torch.autograd.grad(sparse_conv(x, w, b, plan, k, packed_grad=True), [x], gy)
                plan.grad = None

            t = median_s({"dense": dense, "sparse": sparse}, rounds=7, min_round_s=0.15)
            print(f"{threads}t {name:24s} d={d:5.2f} dense {t['dense'] * 1e3:7.2f} ms  sparse(unfold+cpp) "
                  f"{t['sparse'] * 1e3:7.2f} ms  speedup {t['dense'] / t['sparse']:5.2f}x  relerr {err:.1e}",
                  flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
