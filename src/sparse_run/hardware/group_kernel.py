"""A small C++ kernel for g×1 group-sparse × dense products, compiled on the machine that runs it.

Stock torch has no kernel for this pattern: CSR ignores the groups, and a gather + batched matmul writes the
gathered activations out once per group (memory traffic of nnz / g floats per column), which is why it loses to
dense GEMM at moderate sparsity. This kernel never materialises the gather: for every group r and tile of 16
output columns it keeps the g × 16 accumulators in registers while it streams the kept input rows
(``acc[i, :] += v[r, c, i] · x[c, tile]``), then stores them once; leftover columns (all of them at batch 1) are
vectorised along the group. Groups run in parallel on torch's thread pool. A streaming variant (axpy of each kept
input row into the group's rows, 256 columns at a time) is faster at large batches; the layer times both.

It is built by ``engine.cext`` (compiled where it runs, for the host's own instruction set; ``make install``
builds it once). Without a compiler the build fails once, is reported (``status()``), and the group layers use
their stock-torch variants — the layer's per-shape timing decides among
whatever is available, so this kernel is used only where it measures faster.
"""
from __future__ import annotations

from typing import Any

import torch

from sparse_run.engine import cext

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>

// One group's rows for columns [b0, B) of the output, g known at compile time: the g x W accumulators of a
// column tile live in registers across all kept input columns (loaded once, stored once).
template <int G>
void group_rows(const float* v, const int64_t* idx, int64_t cnt, const float* X, int64_t B, float* y) {
  constexpr int W = 16;
  int64_t b0 = 0;
  for (; b0 + W <= B; b0 += W) {
    float acc[G][W] = {};
    for (int64_t c = 0; c < cnt; ++c) {
      const float* x = X + idx[c] * B + b0;
      const float* vc = v + c * G;
      for (int i = 0; i < G; ++i) {
        const float w = vc[i];
#pragma omp simd
        for (int b = 0; b < W; ++b) acc[i][b] += w * x[b];
      }
    }
    for (int i = 0; i < G; ++i)
      for (int b = 0; b < W; ++b) y[i * B + b0 + b] = acc[i][b];
  }
  for (; b0 < B; ++b0) {  // leftover columns (all of them at batch 1): vectorised along the group
    float acc[G] = {};
    for (int64_t c = 0; c < cnt; ++c) {
      const float xv = X[idx[c] * B + b0];
      const float* vc = v + c * G;
#pragma omp simd
      for (int i = 0; i < G; ++i) acc[i] += vc[i] * xv;
    }
    for (int i = 0; i < G; ++i) y[i * B + b0] = acc[i];
  }
}

// values [R, n, g] (group-contiguous), index [R, n] int64, counts [R] int64, xt [D, B] -> out [R*g, B]
torch::Tensor group_mm(torch::Tensor values, torch::Tensor index, torch::Tensor counts, torch::Tensor xt) {
  TORCH_CHECK(values.is_contiguous() && index.is_contiguous() && counts.is_contiguous() && xt.is_contiguous());
  TORCH_CHECK(values.scalar_type() == torch::kFloat && xt.scalar_type() == torch::kFloat);
  const int64_t R = values.size(0), n = values.size(1), g = values.size(2), B = xt.size(1);
  TORCH_CHECK(g == 2 || g == 4 || g == 8 || g == 16, "group size must be 2, 4, 8 or 16");
  auto out = torch::empty({R * g, B}, xt.options());
  const float* V = values.data_ptr<float>();
  const int64_t* I = index.data_ptr<int64_t>();
  const int64_t* C = counts.data_ptr<int64_t>();
  const float* X = xt.data_ptr<float>();
  float* Y = out.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, n * g * B));  // >= ~32k FMAs a task
  at::parallel_for(0, R, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* v = V + r * n * g;
      const int64_t* idx = I + r * n;
      float* y = Y + r * g * B;
      switch (g) {
        case 2: group_rows<2>(v, idx, C[r], X, B, y); break;
        case 4: group_rows<4>(v, idx, C[r], X, B, y); break;
        case 8: group_rows<8>(v, idx, C[r], X, B, y); break;
        default: group_rows<16>(v, idx, C[r], X, B, y); break;
      }
    }
  });
  return out;
}

// The streaming variant: for each kept input row, axpy it into the group's g output rows over a block of 256
// columns. More memory traffic than group_mm, but a sequential pass over each input row: faster at large batches.
torch::Tensor group_mm_stream(torch::Tensor values, torch::Tensor index, torch::Tensor counts, torch::Tensor xt) {
  TORCH_CHECK(values.is_contiguous() && index.is_contiguous() && counts.is_contiguous() && xt.is_contiguous());
  TORCH_CHECK(values.scalar_type() == torch::kFloat && xt.scalar_type() == torch::kFloat);
  const int64_t R = values.size(0), n = values.size(1), g = values.size(2), B = xt.size(1);
  auto out = torch::zeros({R * g, B}, xt.options());
  const float* V = values.data_ptr<float>();
  const int64_t* I = index.data_ptr<int64_t>();
  const int64_t* C = counts.data_ptr<int64_t>();
  const float* X = xt.data_ptr<float>();
  float* Y = out.data_ptr<float>();
  constexpr int64_t BB = 256;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, n * g * B));
  at::parallel_for(0, R, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* v = V + r * n * g;
      const int64_t* idx = I + r * n;
      float* y = Y + r * g * B;
      for (int64_t b0 = 0; b0 < B; b0 += BB) {
        const int64_t b1 = std::min(B, b0 + BB);
        for (int64_t c = 0; c < C[r]; ++c) {
          const float* x = X + idx[c] * B;
          const float* vc = v + c * g;
          for (int64_t i = 0; i < g; ++i) {
            const float w = vc[i];
            float* yi = y + i * B;
#pragma omp simd
            for (int64_t b = b0; b < b1; ++b) yi[b] += w * x[b];
          }
        }
      }
    }
  });
  return out;
}
"""
_NAME = "sparse_run_group_mm"


def load() -> Any | None:
    """The compiled module, or None when it cannot be built here (the reason: ``status()``)."""
    return cext.load(_NAME, _SOURCE, ["group_mm", "group_mm_stream"])


def status() -> str:
    """``built`` or ``unavailable: <why>`` (after ``load()``)."""
    load()
    return cext.status(_NAME)


def group_mm(values: torch.Tensor, index: torch.Tensor, counts: torch.Tensor, xt: torch.Tensor, *,
             stream: bool = False) -> torch.Tensor:
    """``[R·g, B]`` product of the groups (``values [R, n, g]``, kept columns ``index [R, n]``, ``counts [R]``) with
    ``xt [D, B]`` (``stream``: the streaming variant); raises RuntimeError when the kernel is unavailable."""
    mod = load()
    if mod is None:
        raise RuntimeError(f"group kernel {status()}")
    return (mod.group_mm_stream if stream else mod.group_mm)(values, index, counts, xt.contiguous())


if __name__ == "__main__":  # `python -m sparse_run.hardware.group_kernel`: build once (make install)
    print(f"sparse-run: group kernel {status()}")
