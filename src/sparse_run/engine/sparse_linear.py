"""A masked ``nn.Linear`` computed with sparse kernels: forward, input gradient and the weight gradient
on the mask only.

Why this shape: the optimizer, checkpoints, masks and exports all hold dense weights, so the sparse
path reads them where they are. A ``Plan`` holds the mask's CSR structure for W and for Wᵀ (int32
indices, built once per mask). Pruned positions get exactly zero gradient by construction, the same
as the dense path followed by the gradient mask.

Two implementations of the same three products:

- ``csr`` (stock torch): the kept values gathered into CSR tensors each step, ``sparse.mm`` for the
  forward and input gradient on ``xᵀ`` (sparse on the left: the fast CPU layout), ``sparse.sampled_addmm``
  for the weight gradient at the kept positions.
- ``cpp`` (a C++ kernel compiled on the host, ``engine.cext``): one call forward (transpose and pad the
  batch, multiply, write ``y`` in torch's [B, out] layout) and one backward (transpose the output gradient
  once, input gradient, weight gradient on the mask). Rows run in parallel on torch's thread pool, each with
  a fixed summation order, so results do not depend on the thread count.

While an optimizer steps a layer packed (``train.LeanStep``, fixed masks) the kept weights live in
``Plan.values`` and the kernels read them there, contiguous; ``flush`` writes them back into the dense
weight. A training step may also ask for the weight gradient packed (``packed_grad``): only the kept
values, left in ``plan.grad``, so no dense gradient is written or read. ``engine.kernels`` measures which
kernel, if any, beats the dense layer. Same float32 arithmetic as the dense layer, another summation
order: outputs agree with ``F.linear`` to ~1e-6 relative (tested).
"""
from __future__ import annotations

import hashlib
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
    ident: torch.Tensor    # 0 .. nnz-1: the kept weights read in order from ``values``
    perm_t: torch.Tensor   # Wᵀ's entries as indices into ``values`` (W's CSR order)
    # the weight gradient at the kept positions (``pos`` order), when a training step asked for it packed
    # (``packed_grad``): the optimizer steps these values and W.grad stays None (``train.LeanStep``)
    grad: torch.Tensor | None = None
    # the kept weights themselves while an optimizer steps them packed (``train.LeanStep``): the kernels read
    # them here, contiguous, and the dense weight is brought up to date by ``flush`` (``dirty``: it is not)
    values: torch.Tensor | None = None
    dirty: bool = False

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
        pos, pos_t = rows * inp + cols, rows_t * inp + cols_t
        return cls((out, inp), crow, col32, pos, crow_t, rows_t.to(torch.int32), pos_t, pattern,
                   torch.arange(pos.numel(), device=mask.device), torch.searchsorted(pos, pos_t))

    def w(self, weight: torch.Tensor) -> torch.Tensor:
        """W on the mask as a CSR tensor (values gathered from the dense weight unless held packed)."""
        vals = self.values if self.values is not None else weight.reshape(-1).index_select(0, self.pos)
        return _csr(self.crow, self.col, vals, self.shape)

    def wt(self, weight: torch.Tensor) -> torch.Tensor:
        """Wᵀ on the mask as a CSR tensor."""
        vals = (self.values.index_select(0, self.perm_t) if self.values is not None
                else weight.reshape(-1).index_select(0, self.pos_t))
        return _csr(self.crow_t, self.col_t, vals, (self.shape[1], self.shape[0]))

    def read(self, weight: torch.Tensor, transposed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """What the C++ kernel reads the kept weights from, in W's (or Wᵀ's) CSR order: the packed values and
        their order, or the dense weight and the flat positions."""
        if self.values is not None:
            return self.values, self.perm_t if transposed else self.ident
        return weight.detach(), self.pos_t if transposed else self.pos

    @torch.no_grad()
    def flush(self, weight: torch.Tensor) -> None:
        """Write the packed values into the dense weight, if they moved since."""
        if self.values is not None and self.dirty:
            weight.detach().view(-1).scatter_(0, self.pos, self.values)
            self.dirty = False

    def release(self, weight: torch.Tensor) -> None:
        """``flush``, then the dense weight is the one to read again."""
        self.flush(weight)
        self.values = None


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
    vals = grad_values(plan, gyt, x)
    out = torch.zeros(plan.shape[0] * plan.shape[1], dtype=vals.dtype, device=vals.device)
    return out.scatter_(0, plan.pos, vals).view(plan.shape)


def grad_values(plan: Plan, gyt: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``dL/dW`` at the kept positions alone, in ``plan.pos`` order."""
    return torch.sparse.sampled_addmm(plan.pattern, gyt, x.contiguous(), beta=0.0).values()


def _to_plan(plan: Plan, vals: torch.Tensor) -> None:
    """Add a packed weight gradient to ``plan.grad`` (a layer applied twice in one step accumulates)."""
    plan.grad = vals if plan.grad is None else plan.grad + vals


class CsrLinearFn(torch.autograd.Function):
    """``F.linear(x, W ⊙ mask, b)`` for a 2-D ``x`` with sparse kernels; W's gradient lives on the mask only."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: Plan,
                packed_grad: bool = False) -> torch.Tensor:
        xt = _transposed(x)
        if ctx is not None:  # None: evaluation, no graph
            ctx.save_for_backward(xt, weight)
            ctx.plan, ctx.has_bias, ctx.packed_grad = plan, bias is not None, packed_grad
        return forward_t(plan, weight, bias, xt).t()

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xt, weight = ctx.saved_tensors
        need_x, need_w, need_b, _, _ = ctx.needs_input_grad
        gyt = _transposed(gy)
        gx = grad_input(ctx.plan, weight, gyt) if need_x else None
        gw = None
        if need_w and ctx.packed_grad:
            _to_plan(ctx.plan, grad_values(ctx.plan, gyt, xt.t()))
        elif need_w:
            gw = grad_weight(ctx.plan, gyt, xt.t())
        gb = gyt.sum(1) if need_b and ctx.has_bias else None
        return gx, gw, gb, None, None


def _apply(fn: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: Plan,
           packed_grad: bool) -> torch.Tensor:
    """``fn`` (an autograd Function) for any leading shape of ``x``; without autograd (evaluation) its forward
    alone, on detached tensors. ``packed_grad``: W's gradient goes to ``plan.grad`` (kept values only), not to
    autograd."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        out = fn.apply(x2, weight, bias, plan, packed_grad)
    else:
        with torch.no_grad():
            out = fn.forward(None, x2, weight.detach(), bias.detach() if bias is not None else None, plan)
    return out.reshape(*lead, out.shape[-1]) if len(lead) != 1 else out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: Plan,
           packed_grad: bool = False) -> torch.Tensor:
    """The stock-torch sparse path (``CsrLinearFn``)."""
    return _apply(CsrLinearFn, x, weight, bias, plan, packed_grad)


_CPP = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstring>
#include <vector>

// Eight floats: GCC/Clang vector extensions, lowered to the host's AVX2 / AVX-512 (or NEON) by -march=native.
typedef float v8 __attribute__((vector_size(32)));
static inline v8 ld(const float* p) { v8 v; std::memcpy(&v, p, sizeof v); return v; }

// x [B, D] -> x^T [D, Bp], Bp = B rounded up to a multiple of 8, the added columns zero: every tile is whole vectors.
static torch::Tensor transpose_pad(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat);
  auto xc = x.contiguous();
  const int64_t B = xc.size(0), D = xc.size(1), Bp = (B + 7) / 8 * 8;
  auto xt = torch::empty({D, Bp}, xc.options());
  const float* X = xc.data_ptr<float>();
  float* T = xt.data_ptr<float>();
  at::parallel_for(0, D, std::max<int64_t>(1, 65536 / Bp), [&](int64_t a, int64_t e) {
    for (int64_t d0 = a; d0 < e; d0 += 16) {  // 16 features at a time: the 16 x B block of x stays in L1
      const int64_t d1 = std::min(e, d0 + 16);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t d = d0; d < d1; ++d) T[d * Bp + b] = X[b * D + d];
      for (int64_t d = d0; d < d1; ++d) for (int64_t b = B; b < Bp; ++b) T[d * Bp + b] = 0.f;
    }
  });
  return xt;
}

// One output row r over batch columns [t0, t0 + 8 NV): NV vector accumulators in registers, one pass over the row's
// weights; written to y [B, rows] (row-major, the layout torch's next layer expects), the padding left out.
template <int NV>
static inline void row_tile(const float* W, const int* I, const int64_t* P, int k0, int k1, const float* X,
                            int64_t Bp, int64_t B, int64_t rows, int64_t r, int64_t t0, float b0, float* y) {
  v8 acc[NV];
  for (int j = 0; j < NV; ++j) acc[j] = v8{} + b0;
  for (int k = k0; k < k1; ++k) {
    const float wv = W[P[k]];
    const float* xr = X + (int64_t)I[k] * Bp + t0;
    for (int j = 0; j < NV; ++j) acc[j] += wv * ld(xr + 8 * j);
  }
  for (int j = 0; j < NV; ++j)
    for (int l = 0; l < 8; ++l) {
      const int64_t b = t0 + 8 * j + l;
      if (b < B) y[b * rows + r] = acc[j][l];
    }
}

// y[b, r] = bias[r] + sum_k w[at[k]] * xt[idx[k], b] over k in [crow[r], crow[r+1]), for xt [D, Bp].
// The forward (CSR of W: idx = columns) and the input gradient (CSR of W^T: idx = rows) are both this product. The
// weights are read at ``at``: flat positions in the dense weight, or indices into the packed kept values.
static torch::Tensor spmm(const torch::Tensor& w, const torch::Tensor& crow, const torch::Tensor& idx,
                          const torch::Tensor& at, const float* bp, const torch::Tensor& xt, int64_t B) {
  TORCH_CHECK(w.is_contiguous() && xt.is_contiguous() && crow.is_contiguous() && idx.is_contiguous() && at.is_contiguous());
  TORCH_CHECK(w.scalar_type() == torch::kFloat && xt.scalar_type() == torch::kFloat);
  TORCH_CHECK(crow.scalar_type() == torch::kInt && idx.scalar_type() == torch::kInt && at.scalar_type() == torch::kLong);
  const int64_t rows = crow.size(0) - 1, Bp = xt.size(1);
  auto out = torch::empty({B, rows}, xt.options());
  const float* W = w.data_ptr<float>();
  const int* R = crow.data_ptr<int>();
  const int* I = idx.data_ptr<int>();
  const int64_t* P = at.data_ptr<int64_t>();
  const float* X = xt.data_ptr<float>();
  float* Y = out.data_ptr<float>();
  auto row = [&](int64_t r, int64_t c0, int64_t c1) {  // columns [c0, c1) of row r, c1 - c0 a multiple of 8
    const float b0 = bp ? bp[r] : 0.f;
    const int k0 = R[r], k1 = R[r + 1];
    for (int64_t t = c0; t < c1; t += 64) {
      switch (std::min<int64_t>(8, (c1 - t) / 8)) {
        case 1: row_tile<1>(W, I, P, k0, k1, X, Bp, B, rows, r, t, b0, Y); break;
        case 2: row_tile<2>(W, I, P, k0, k1, X, Bp, B, rows, r, t, b0, Y); break;
        case 3: row_tile<3>(W, I, P, k0, k1, X, Bp, B, rows, r, t, b0, Y); break;
        case 4: row_tile<4>(W, I, P, k0, k1, X, Bp, B, rows, r, t, b0, Y); break;
        case 5: row_tile<5>(W, I, P, k0, k1, X, Bp, B, rows, r, t, b0, Y); break;
        case 6: row_tile<6>(W, I, P, k0, k1, X, Bp, B, rows, r, t, b0, Y); break;
        case 7: row_tile<7>(W, I, P, k0, k1, X, Bp, B, rows, r, t, b0, Y); break;
        default: row_tile<8>(W, I, P, k0, k1, X, Bp, B, rows, r, t, b0, Y); break;
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
    const int64_t grain = std::max<int64_t>(1, 65536 * rows / (nnz * Bp));  // >= ~64k FMAs a task
    at::parallel_for(0, rows, grain, [&](int64_t a, int64_t e) {
      for (int64_t r = a; r < e; ++r) row(r, 0, Bp);
    });
  }
  return out;
}

// The weight gradient on the mask: dW[o, c] = gyt[o, :] . xt[c, :] (both [*, Bp], zero padded) at the kept positions.
// packed: their values alone, in the CSR order of W (the plan's positions); else dense [out, in], zero elsewhere.
static torch::Tensor sddmm(const torch::Tensor& crow, const torch::Tensor& col, const torch::Tensor& gyt,
                           const torch::Tensor& xt, int64_t in, bool packed) {
  TORCH_CHECK(crow.scalar_type() == torch::kInt && col.scalar_type() == torch::kInt && gyt.size(1) == xt.size(1));
  const int64_t out = crow.size(0) - 1, Bp = gyt.size(1);
  const int* R = crow.data_ptr<int>();
  const int* C = col.data_ptr<int>();
  const int64_t nnz = std::max<int64_t>(1, R[out]);
  auto gw = packed ? torch::empty({R[out]}, gyt.options()) : torch::empty({out, in}, gyt.options());
  const float* G = gyt.data_ptr<float>();
  const float* X = xt.data_ptr<float>();
  float* D = gw.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 65536 * out / (nnz * Bp + (packed ? 0 : out * in / 8)));
  at::parallel_for(0, out, grain, [&](int64_t a, int64_t e) {
    for (int64_t o = a; o < e; ++o) {
      float* d = packed ? D : D + o * in;
      if (!packed) std::memset(d, 0, in * sizeof(float));
      const float* g = G + o * Bp;
      for (int k = R[o]; k < R[o + 1]; ++k) {
        const float* xr = X + (int64_t)C[k] * Bp;
        v8 s0 = v8{}, s1 = v8{};
        int64_t b = 0;
        for (; b + 16 <= Bp; b += 16) { s0 += ld(g + b) * ld(xr + b); s1 += ld(g + b + 8) * ld(xr + b + 8); }
        if (b < Bp) s0 += ld(g + b) * ld(xr + b);
        s0 += s1;
        d[packed ? k : C[k]] = ((s0[0] + s0[4]) + (s0[1] + s0[5])) + ((s0[2] + s0[6]) + (s0[3] + s0[7]));
      }
    }
  });
  return gw;
}

// Forward: y = x W^T + b for x [B, in]; also returns x^T padded, which the backward needs.
std::vector<torch::Tensor> forward(torch::Tensor w, torch::Tensor crow, torch::Tensor col, torch::Tensor at,
                                   c10::optional<torch::Tensor> bias, torch::Tensor x) {
  auto xt = transpose_pad(x);
  const float* bp = nullptr;
  if (bias.has_value()) { TORCH_CHECK(bias->is_contiguous()); bp = bias->data_ptr<float>(); }
  return {spmm(w, crow, col, at, bp, xt, x.size(0)), xt};
}

// Backward from gy [B, out]: the input gradient gy W [B, in] (need_x) and the weight gradient on the mask (need_w;
// packed or dense, see sddmm), from one transposed copy of gy. An output not asked for is an empty tensor.
std::vector<torch::Tensor> backward(torch::Tensor w, torch::Tensor crow_t, torch::Tensor col_t, torch::Tensor at_t,
                                    torch::Tensor crow, torch::Tensor col, torch::Tensor gy, torch::Tensor xt,
                                    bool need_x, bool need_w, bool packed) {
  auto gyt = transpose_pad(gy);
  torch::Tensor gx, gw;
  if (need_x) gx = spmm(w, crow_t, col_t, at_t, nullptr, gyt, gy.size(0));
  if (need_w) gw = sddmm(crow, col, gyt, xt, crow_t.size(0) - 1, packed);
  return {need_x ? gx : torch::Tensor(), need_w ? gw : torch::Tensor()};
}
"""
_CPP_NAME = "sparse_run_masked_linear"
SOURCE_HASH = hashlib.sha1(_CPP.encode()).hexdigest()[:8]  # a remembered kernel choice holds for this source only


def cpp_module() -> Any | None:
    """The compiled C++ kernels, or None where they cannot be built (``cpp_status``)."""
    return cext.load(_CPP_NAME, _CPP, ["forward", "backward"])


def cpp_status() -> str:
    cpp_module()
    return cext.status(_CPP_NAME)


class CppLinearFn(torch.autograd.Function):
    """``CsrLinearFn`` through the C++ kernels: one call forward (transpose, product) and one backward (transpose,
    input gradient, weight gradient on the mask), the weights read where they are."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: Plan,
                packed_grad: bool = False) -> torch.Tensor:
        w, at = plan.read(weight)
        y, xt = cpp_module().forward(w, plan.crow, plan.col, at, bias.detach() if bias is not None else None, x)
        if ctx is not None:  # None: evaluation, no graph
            ctx.save_for_backward(xt, weight)
            ctx.plan, ctx.has_bias, ctx.packed_grad = plan, bias is not None, packed_grad
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        plan = ctx.plan
        xt, weight = ctx.saved_tensors
        need_x, need_w, need_b, _, _ = ctx.needs_input_grad
        w, at = plan.read(weight, transposed=True)
        gx, gw = cpp_module().backward(w, plan.crow_t, plan.col_t, at, plan.crow, plan.col, gy, xt,
                                       need_x, need_w, bool(need_w and ctx.packed_grad))
        if need_w and ctx.packed_grad:
            _to_plan(plan, gw)
        gb = gy.sum(0) if need_b and ctx.has_bias else None
        return gx if need_x else None, gw if need_w and not ctx.packed_grad else None, gb, None, None


def linear_cpp(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: Plan,
               packed_grad: bool = False) -> torch.Tensor:
    """The C++ sparse path (``CppLinearFn``; ``cpp_module()`` must be available)."""
    return _apply(CppLinearFn, x, weight, bias, plan, packed_grad)


if __name__ == "__main__":  # `python -m sparse_run.engine.sparse_linear`: build the C++ kernel once (make install)
    print(f"sparse-run: masked-linear kernel {cpp_status()}")
