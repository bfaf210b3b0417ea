"""A masked ``nn.Linear`` computed with sparse kernels: forward, input gradient and the weight gradient
on the mask only, from the dense weight the rest of sparse-run keeps.

Why this shape: the optimizer, checkpoints, masks and exports all hold dense weights, so the sparse
path is a view of them, not a second copy. A ``Plan`` holds the mask's CSR structure for W and for
Wᵀ (int32 indices, built once per mask); each step gathers the surviving weights' values into that
structure (O(nnz)), multiplies with ``torch.sparse.mm`` (sparse on the left: the fast CPU layout),
and computes the weight gradient only at the kept positions with ``torch.sparse.sampled_addmm``,
scattered into a dense zero gradient. Pruned positions therefore get exactly zero gradient by
construction, the same as the dense path followed by the gradient mask.

Two implementations of the same three products: ``csr`` (stock torch: the values gathered into CSR tensors each
step, ``sparse.mm`` and ``sparse.sampled_addmm``) and ``cpp`` (a C++ kernel compiled on the host, ``engine.cext``,
that reads the kept weights straight from the dense tensor through the plan's positions, so nothing is gathered
or scattered; rows run in parallel on torch's thread pool, each with a fixed summation order, so its results do
not depend on the thread count). ``engine.kernels`` measures which one, if any, beats the dense layer.

Activations are kept transposed between layers: the forward returns ``(W xᵀ)ᵀ`` as a view, so the next
sparse layer reads its ``xᵀ`` without a copy. Same float32 arithmetic as the dense layer, another
summation order: outputs agree with ``F.linear`` to ~1e-6 relative (tested).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from . import cext

# torch warns once per process that CSR support is "beta"; the kernels used here are tested below and in tests/
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


@dataclass
class Plan:
    """The CSR structure of one layer's mask: for W (``crow``, ``col``, flat positions ``pos``) and for Wᵀ
    (``crow_t``, ``col_t``, ``pos_t``: Wᵀ's entries in its CSR order, as positions in W)."""

    shape: tuple[int, int]
    crow: torch.Tensor
    col: torch.Tensor
    pos: torch.Tensor
    crow_t: torch.Tensor
    col_t: torch.Tensor
    pos_t: torch.Tensor
    pattern: torch.Tensor  # the mask as a CSR tensor (values unused): sampled_addmm's output pattern

    @property
    def nnz(self) -> int:
        return int(self.pos.numel())

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.shape[0] * self.shape[1])

    @classmethod
    def of(cls, mask: torch.Tensor) -> "Plan":
        out, inp = mask.shape
        rows, cols = mask.nonzero(as_tuple=True)  # row-major order: W's CSR order
        crow = torch.zeros(out + 1, dtype=torch.int32, device=mask.device)
        crow[1:] = torch.bincount(rows, minlength=out).cumsum(0)
        cols_t, rows_t = mask.t().nonzero(as_tuple=True)  # Wᵀ's CSR order (by input, then output)
        crow_t = torch.zeros(inp + 1, dtype=torch.int32, device=mask.device)
        crow_t[1:] = torch.bincount(cols_t, minlength=inp).cumsum(0)
        col32 = cols.to(torch.int32)
        pattern = _csr(crow, col32, torch.zeros(rows.numel(), device=mask.device), (out, inp))
        return cls((out, inp), crow, col32, rows * inp + cols, crow_t, rows_t.to(torch.int32), rows_t * inp + cols_t,
                   pattern)

    def w(self, weight: torch.Tensor) -> torch.Tensor:
        """W on the mask as a CSR tensor (values gathered from the dense weight)."""
        return _csr(self.crow, self.col, weight.reshape(-1).index_select(0, self.pos), self.shape)

    def wt(self, weight: torch.Tensor) -> torch.Tensor:
        """Wᵀ on the mask as a CSR tensor."""
        return _csr(self.crow_t, self.col_t, weight.reshape(-1).index_select(0, self.pos_t),
                    (self.shape[1], self.shape[0]))


def _transposed(x: torch.Tensor) -> torch.Tensor:
    """``xᵀ`` contiguous: free when ``x`` is the transposed view a previous sparse layer returned."""
    return x.t().contiguous()


def forward_t(plan: Plan, weight: torch.Tensor, bias: torch.Tensor | None, xt: torch.Tensor) -> torch.Tensor:
    """``W xᵀ + b`` ([out, B]) for a contiguous ``xt`` = xᵀ."""
    yt = torch.sparse.mm(plan.w(weight), xt)
    if bias is not None:
        yt.add_(bias.unsqueeze(1))
    return yt


def grad_input(plan: Plan, weight: torch.Tensor, gyt: torch.Tensor) -> torch.Tensor:
    """``dL/dx`` = (Wᵀ gyᵀ)ᵀ, as a [B, in] view."""
    return torch.sparse.mm(plan.wt(weight), gyt).t()


def grad_weight(plan: Plan, gyt: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``dL/dW`` = gyᵀ x at the kept positions, zero elsewhere (dense, W's shape)."""
    vals = torch.sparse.sampled_addmm(plan.pattern, gyt, x.contiguous(), beta=0.0).values()
    out = torch.zeros(plan.shape[0] * plan.shape[1], dtype=vals.dtype, device=vals.device)
    return out.scatter_(0, plan.pos, vals).view(plan.shape)


class CsrLinearFn(torch.autograd.Function):
    """``F.linear(x, W ⊙ mask, b)`` for a 2-D ``x`` with sparse kernels; W's gradient lives on the mask only."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: Plan) -> torch.Tensor:
        xt = _transposed(x)
        if ctx is not None:  # None: evaluation, no graph
            ctx.save_for_backward(xt, weight)
            ctx.plan, ctx.has_bias = plan, bias is not None
        return forward_t(plan, weight, bias, xt).t()

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xt, weight = ctx.saved_tensors
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        gyt = _transposed(gy)
        gx = grad_input(ctx.plan, weight, gyt) if need_x else None
        gw = grad_weight(ctx.plan, gyt, xt.t()) if need_w else None
        gb = gyt.sum(1) if need_b and ctx.has_bias else None
        return gx, gw, gb, None


def _apply(fn: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: Plan) -> torch.Tensor:
    """``fn`` (an autograd Function) for any leading shape of ``x``; without autograd (evaluation) its forward
    alone, on detached tensors."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        out = fn.apply(x2, weight, bias, plan)
    else:
        with torch.no_grad():
            out = fn.forward(None, x2, weight.detach(), bias.detach() if bias is not None else None, plan)
    return out.reshape(*lead, out.shape[-1]) if len(lead) != 1 else out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: Plan) -> torch.Tensor:
    """The stock-torch sparse path (``CsrLinearFn``)."""
    return _apply(CsrLinearFn, x, weight, bias, plan)


_CPP = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstring>

// Eight floats: GCC/Clang vector extensions, lowered to the host's AVX2 / AVX-512 (or NEON) by -march=native.
typedef float v8 __attribute__((vector_size(32)));
static inline v8 ld(const float* p) { v8 v; std::memcpy(&v, p, sizeof v); return v; }
static inline void st(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }

// x [D, B] with B rounded up to a multiple of 8 (zero columns added): every tile is whole vectors.
static torch::Tensor pad8(const torch::Tensor& x) {
  const int64_t B = x.size(1), Bp = (B + 7) / 8 * 8;
  if (Bp == B) return x;
  auto xp = torch::zeros({x.size(0), Bp}, x.options());
  xp.narrow(1, 0, B).copy_(x);
  return xp;
}

// One output row over columns [t0, t0 + 8 NV): NV vector accumulators in registers, one pass over the row's weights.
template <int NV>
static inline void row_tile(const float* W, const int* I, const int64_t* P, int k0, int k1, const float* X,
                            int64_t B, int64_t t0, float b0, float* y) {
  v8 acc[NV];
  for (int j = 0; j < NV; ++j) acc[j] = v8{} + b0;
  for (int k = k0; k < k1; ++k) {
    const float wv = W[P[k]];
    const float* xr = X + (int64_t)I[k] * B + t0;
    for (int j = 0; j < NV; ++j) acc[j] += wv * ld(xr + 8 * j);
  }
  for (int j = 0; j < NV; ++j) st(y + t0 + 8 * j, acc[j]);
}

// out[r, :] = bias[r] + sum_k w[pos[k]] * x[idx[k], :] over k in [crow[r], crow[r+1]), for x [D, B] row-major.
// The forward (CSR of W: idx = columns) and the input gradient (CSR of W^T: idx = rows) are both this product;
// the weights are read from the dense tensor at their flat positions, so nothing is gathered beforehand.
torch::Tensor spmm(torch::Tensor w, torch::Tensor crow, torch::Tensor idx, torch::Tensor pos,
                   c10::optional<torch::Tensor> bias, torch::Tensor x) {
  TORCH_CHECK(w.is_contiguous() && x.is_contiguous() && crow.is_contiguous() && idx.is_contiguous() && pos.is_contiguous());
  TORCH_CHECK(w.scalar_type() == torch::kFloat && x.scalar_type() == torch::kFloat);
  TORCH_CHECK(crow.scalar_type() == torch::kInt && idx.scalar_type() == torch::kInt && pos.scalar_type() == torch::kLong);
  const int64_t rows = crow.size(0) - 1, B = x.size(1);
  auto xp = pad8(x);
  const int64_t Bp = xp.size(1);
  auto out = torch::empty({rows, Bp}, x.options());
  const float* W = w.data_ptr<float>();
  const int* R = crow.data_ptr<int>();
  const int* I = idx.data_ptr<int>();
  const int64_t* P = pos.data_ptr<int64_t>();
  const float* X = xp.data_ptr<float>();
  float* Y = out.data_ptr<float>();
  const float* bp = nullptr;
  if (bias.has_value()) { TORCH_CHECK(bias->is_contiguous()); bp = bias->data_ptr<float>(); }
  auto row = [&](int64_t r, int64_t c0, int64_t c1) {  // columns [c0, c1) of row r, c1 - c0 a multiple of 8
    const float b0 = bp ? bp[r] : 0.f;
    float* y = Y + r * Bp;
    const int k0 = R[r], k1 = R[r + 1];
    for (int64_t t = c0; t < c1; t += 64) {
      switch (std::min<int64_t>(8, (c1 - t) / 8)) {
        case 1: row_tile<1>(W, I, P, k0, k1, X, Bp, t, b0, y); break;
        case 2: row_tile<2>(W, I, P, k0, k1, X, Bp, t, b0, y); break;
        case 3: row_tile<3>(W, I, P, k0, k1, X, Bp, t, b0, y); break;
        case 4: row_tile<4>(W, I, P, k0, k1, X, Bp, t, b0, y); break;
        case 5: row_tile<5>(W, I, P, k0, k1, X, Bp, t, b0, y); break;
        case 6: row_tile<6>(W, I, P, k0, k1, X, Bp, t, b0, y); break;
        case 7: row_tile<7>(W, I, P, k0, k1, X, Bp, t, b0, y); break;
        default: row_tile<8>(W, I, P, k0, k1, X, Bp, t, b0, y); break;
      }
    }
  };
  constexpr int64_t T = 512;  // the wide case's column block: its slice of x stays in cache across all rows
  const int64_t blocks = (Bp + T - 1) / T;
  const int64_t nnz = std::max<int64_t>(1, R[rows]);
  if (blocks >= 2 * at::get_num_threads()) {  // wide (evaluation): column blocks in parallel
    at::parallel_for(0, blocks, 1, [&](int64_t a, int64_t e) {
      for (int64_t t = a; t < e; ++t) for (int64_t r = 0; r < rows; ++r) row(r, t * T, std::min(Bp, (t + 1) * T));
    });
  } else {                                    // narrow (training batches): rows in parallel
    const int64_t grain = std::max<int64_t>(1, 32768 * rows / (nnz * Bp));  // >= ~32k FMAs a task
    at::parallel_for(0, rows, grain, [&](int64_t a, int64_t e) {
      for (int64_t r = a; r < e; ++r) row(r, 0, Bp);
    });
  }
  return Bp == B ? out : out.narrow(1, 0, B);
}

// dW [out, in], zero except at the kept positions, where dW[o, c] = gy[o, :] . x[c, :] (gy [out, B], x [in, B]).
torch::Tensor sddmm(torch::Tensor crow, torch::Tensor col, torch::Tensor gy, torch::Tensor x, int64_t in) {
  TORCH_CHECK(gy.is_contiguous() && x.is_contiguous() && crow.is_contiguous() && col.is_contiguous());
  TORCH_CHECK(gy.scalar_type() == torch::kFloat && x.scalar_type() == torch::kFloat && crow.scalar_type() == torch::kInt);
  const int64_t out = crow.size(0) - 1;
  auto gp = pad8(gy), xp = pad8(x);  // zero columns add nothing to the dot products
  const int64_t Bp = gp.size(1);
  auto gw = torch::empty({out, in}, gy.options());
  const int* R = crow.data_ptr<int>();
  const int* C = col.data_ptr<int>();
  const float* G = gp.data_ptr<float>();
  const float* X = xp.data_ptr<float>();
  float* D = gw.data_ptr<float>();
  const int64_t nnz = std::max<int64_t>(1, R[out]);
  const int64_t grain = std::max<int64_t>(1, 32768 * out / (nnz * Bp + out * in / 8));
  at::parallel_for(0, out, grain, [&](int64_t a, int64_t e) {
    for (int64_t o = a; o < e; ++o) {
      float* d = D + o * in;
      std::memset(d, 0, in * sizeof(float));
      const float* g = G + o * Bp;
      for (int k = R[o]; k < R[o + 1]; ++k) {
        const float* xr = X + (int64_t)C[k] * Bp;
        v8 s0 = v8{}, s1 = v8{};
        int64_t b = 0;
        for (; b + 16 <= Bp; b += 16) { s0 += ld(g + b) * ld(xr + b); s1 += ld(g + b + 8) * ld(xr + b + 8); }
        if (b < Bp) s0 += ld(g + b) * ld(xr + b);
        s0 += s1;
        d[C[k]] = ((s0[0] + s0[4]) + (s0[1] + s0[5])) + ((s0[2] + s0[6]) + (s0[3] + s0[7]));
      }
    }
  });
  return gw;
}
"""
_CPP_NAME = "sparse_run_masked_linear"


def cpp_module() -> Any | None:
    """The compiled C++ kernels, or None where they cannot be built (``cpp_status``)."""
    return cext.load(_CPP_NAME, _CPP, ["spmm", "sddmm"])


def cpp_status() -> str:
    cpp_module()
    return cext.status(_CPP_NAME)


class CppLinearFn(torch.autograd.Function):
    """``CsrLinearFn`` through the C++ kernels: the weights read in place, the gradient written whole."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: Plan) -> torch.Tensor:
        xt = _transposed(x)
        if ctx is not None:  # None: evaluation, no graph
            ctx.save_for_backward(xt, weight)
            ctx.plan, ctx.has_bias = plan, bias is not None
        b = bias.detach() if bias is not None else None
        return cpp_module().spmm(weight.detach(), plan.crow, plan.col, plan.pos, b, xt).t()

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        mod, plan = cpp_module(), ctx.plan
        xt, weight = ctx.saved_tensors
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        gyt = _transposed(gy)
        gx = mod.spmm(weight, plan.crow_t, plan.col_t, plan.pos_t, None, gyt).t() if need_x else None
        gw = mod.sddmm(plan.crow, plan.col, gyt, xt, plan.shape[1]) if need_w else None
        gb = gyt.sum(1) if need_b and ctx.has_bias else None
        return gx, gw, gb, None


def linear_cpp(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: Plan) -> torch.Tensor:
    """The C++ sparse path (``CppLinearFn``; ``cpp_module()`` must be available)."""
    return _apply(CppLinearFn, x, weight, bias, plan)


if __name__ == "__main__":  # `python -m sparse_run.engine.sparse_linear`: build the C++ kernel once (make install)
    print(f"sparse-run: masked-linear kernel {cpp_status()}")
