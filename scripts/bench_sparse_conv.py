#!/usr/bin/env python
"""Does a sparse conv pay on this CPU? One conv layer's forward + input gradient + weight gradient (on the mask,
packed), batch 60: dense ``F.conv2d`` on the masked weight against im2col (``F.unfold``) into the C++ sparse linear
kernel of ``engine.sparse_linear``: the smallest sparse conv built from what sparse-run has. LTH Conv-6 shapes on
CIFAR-10, densities 50 / 20 / 10 / 5 / 2 %, interleaved rounds, medians; also checks the outputs agree.
Why it exists: ``train.sparse_kernel`` leaves conv layers dense, and this is the measurement behind that
(docs/performance.md).

    python scripts/bench_sparse_conv.py [threads]
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from sparse_run.engine import sparse_linear as sl

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)
B = 60
LAYERS = {  # name: (C_in, C_out, H, k) -- LTH Conv-6 on CIFAR-10 (padding 1)
    "conv6.2 64->64 32x32": (64, 64, 32, 3),
    "conv6.4 128->128 16x16": (128, 128, 16, 3),
    "conv6.6 256->256 8x8": (256, 256, 8, 3),
}
DENS = [0.5, 0.2, 0.1, 0.05, 0.02]


def dense_step(x, w, b, gy):
    torch.autograd.grad(F.conv2d(x, w, b, padding=1), [x, w], gy)


def sparse_step(x, w, b, gy, plan, k):
    C, H = x.shape[1], x.shape[2]
    cols = F.unfold(x, k, padding=1)  # [B, C k k, L]
    rows = cols.transpose(1, 2).reshape(-1, C * k * k)
    y = sl.linear_cpp(rows, w.view(w.shape[0], -1), b, plan, packed_grad=True)
    y = y.view(x.shape[0], H * H, -1).transpose(1, 2).reshape(x.shape[0], -1, H, H)
    torch.autograd.grad(y, [x], gy)
    plan.grad = None


def timeit(f, n):
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t0) / n * 1e3


for name, (ci, co, h, k) in LAYERS.items():
    for d in DENS:
        g = torch.Generator().manual_seed(0)
        mask = torch.rand(co, ci, k, k, generator=g) < d
        w = (torch.randn(co, ci, k, k, generator=g) * 0.05 * mask).requires_grad_()
        b = torch.zeros(co, requires_grad=True)
        x = torch.randn(B, ci, h, h, generator=g, requires_grad=True)
        gy = torch.randn(B, co, h, h, generator=g)
        plan = sl.Plan.of(mask.view(co, -1))
        # correctness: same output
        with torch.no_grad():
            ref = F.conv2d(x, w, b, padding=1)
            cols = F.unfold(x, k, padding=1).transpose(1, 2).reshape(-1, ci * k * k)
            got = sl.linear_cpp(cols, w.view(co, -1), b, plan).view(B, h * h, co).transpose(1, 2).reshape(B, co, h, h)
            err = float((ref - got).abs().max() / ref.abs().max())
        fd = lambda: dense_step(x, w, b, gy)  # noqa: E731
        fs = lambda: sparse_step(x, w, b, gy, plan, k)  # noqa: E731
        for f in (fd, fs, fd, fs):
            f()
        n = max(2, int(0.15 / max(1e-4, timeit(fd, 1) / 1e3)))
        td, ts = [], []
        for r in range(7):
            for f, acc in ((fd, td), (fs, ts)) if r % 2 == 0 else ((fs, ts), (fd, td)):
                acc.append(timeit(f, n))
        md, ms = statistics.median(td), statistics.median(ts)
        print(f"{threads}t {name:24s} d={d:5.2f} dense {md:7.2f} ms  sparse(unfold+cpp) {ms:7.2f} ms  "
              f"speedup {md / ms:5.2f}x  relerr {err:.1e}", flush=True)
