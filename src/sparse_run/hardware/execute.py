"""Executing a masked model the way a target would: layers swapped for sparse-kernel versions.

``torch.sparse.mm(W, xᵀ)`` with the sparse weight on the left and activations as
features × batch is torch's fast CPU path (``F.linear(x, W_csr)`` and dense @ sparse take 3–6×
slower routes; see docs/hardware.md). Torch has no sparse convolution, so only Linear
layers and 1×1 convolutions (a matrix product in CHW layout) get sparse kernels; other layers
run dense and are reported as ``dense_fallback``.

``group`` execution runs g×1 group-sparse weights (``GroupSparseLayer``, docs/hardware.md): every group of g
output rows keeps the same input columns. Variants: our C++ kernel (``group_kernel.py``: each kept input row
loaded once and applied to the group's g outputs), a gather + batched matmul over groups (all columns at once,
or in cache-sized column chunks) and plain CSR. Which is fastest depends on the CPU, the shape and the batch,
so the layer times every available variant on the first input of each size and keeps the winner: measured at
run time, never assumed.
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..sparsity.patterns import as_matrix, is_block_shaped, is_nm
from . import group_kernel
from .formats import to_csr


def _is_pointwise(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
            and m.padding in ((0, 0), "valid") and m.dilation == (1, 1))


class SparseMatmulLayer(nn.Module):
    """A Linear or pointwise-conv layer whose weight is a CSR / BSR tensor on the left of the product."""

    def __init__(self, layer: nn.Module, weight: torch.Tensor):
        super().__init__()
        self.weight = weight
        self.bias = None if layer.bias is None else layer.bias.detach().clone()
        self.conv_stride = layer.stride if isinstance(layer, nn.Conv2d) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_stride is None:  # Linear: y = (W · xᵀ)ᵀ
            flat = x.reshape(-1, x.shape[-1])
            y = torch.sparse.mm(self.weight, flat.t()).t()
            y = y.reshape(*x.shape[:-1], y.shape[-1])
        else:  # 1×1 conv in CHW layout: [C_out, C_in] · [C_in, N·H·W]
            if self.conv_stride != (1, 1):
                x = x[:, :, ::self.conv_stride[0], ::self.conv_stride[1]]
            n, c, h, w = x.shape
            y = torch.sparse.mm(self.weight, x.transpose(0, 1).reshape(c, -1))
            y = y.reshape(-1, n, h, w).transpose(0, 1)
            if self.bias is not None:
                return y + self.bias.view(1, -1, 1, 1)
            return y
        return y if self.bias is None else y + self.bias


class SemiStructuredLinear(nn.Module):
    """Linear layer with a 2:4 weight on sparse tensor cores (cuSPARSELt / CUTLASS; CUDA only)."""

    def __init__(self, layer: nn.Linear, dtype: torch.dtype):
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        self.weight = nn.Parameter(to_sparse_semi_structured(layer.weight.detach().to(dtype)), requires_grad=False)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().to(dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class GroupSparseLayer(nn.Module):
    """A Linear or pointwise-conv layer whose weight is g×1 group-sparse: ``values [R, g, n]`` and the kept input
    columns ``index [R, n]`` of each of the R = C_out / g groups (padded with zero values to the longest group)."""

    CHUNK = 64  # columns gathered at a time by the chunked variant: the gathered block stays in cache

    def __init__(self, layer: nn.Module, mask: torch.Tensor, g: int):
        super().__init__()
        w = as_matrix(layer.weight.detach())
        m = as_matrix(mask).bool()
        rows, d = w.shape
        r = rows // g
        kept = m.view(r, g, d).any(1)  # [R, d]: the group's columns
        counts = kept.sum(1)
        n = max(1, int(counts.max()))
        order = torch.sort((~kept).to(torch.int8), dim=1, stable=True).indices[:, :n]  # kept columns first
        valid = torch.arange(n)[None] < counts[:, None]
        self.index = torch.where(valid, order, torch.zeros_like(order)).flatten().contiguous()
        vals = torch.gather((w * m).view(r, g, d), 2, order[:, None, :].expand(r, g, n)) * valid[:, None, :]
        self.values = vals.contiguous()
        self.values_t = vals.permute(0, 2, 1).contiguous()  # [R, n, g]: the C++ kernel's group-contiguous layout
        self.counts = counts.to(torch.int64).contiguous()
        self.csr = to_csr(w * m)
        self.bias = None if layer.bias is None else layer.bias.detach().clone()
        self.pointwise = isinstance(layer, nn.Conv2d)
        self.stride = layer.stride if self.pointwise else None
        self.padding_waste = 1.0 - float(counts.sum()) / (r * n)
        self.chosen: dict[int, str] = {}  # columns -> kernel that won for that input size
        self.last = ""  # the kernel of the latest call

    def _gather_bmm(self, xt: torch.Tensor, chunk: int | None) -> torch.Tensor:
        r, g, n = self.values.shape
        if chunk is None or xt.shape[1] <= chunk:
            return torch.bmm(self.values, xt.index_select(0, self.index).view(r, n, -1)).view(r * g, -1)
        parts = [torch.bmm(self.values, xt[:, c:c + chunk].index_select(0, self.index).view(r, n, -1))
                 for c in range(0, xt.shape[1], chunk)]
        return torch.cat(parts, 2).view(r * g, -1)

    def _run(self, kernel: str, xt: torch.Tensor) -> torch.Tensor:
        if kernel == "csr":
            return torch.sparse.mm(self.csr, xt)
        if kernel in ("cpp", "cpp_stream"):
            return group_kernel.group_mm(self.values_t, self.index.view(self.values_t.shape[:2]), self.counts, xt,
                                         stream=kernel == "cpp_stream")
        return self._gather_bmm(xt.contiguous(), self.CHUNK if kernel == "gather_bmm_chunked" else None)

    def _pick(self, xt: torch.Tensor) -> str:
        best, name = float("inf"), "gather_bmm"
        for kernel in self.kernels():
            self._run(kernel, xt)  # warm-up
            t = min(_seconds(lambda: self._run(kernel, xt)) for _ in range(3))
            if t < best:
                best, name = t, kernel
        return name

    @staticmethod
    def kernels() -> tuple[str, ...]:
        """The variants this machine can run (the C++ kernel only where it was built)."""
        return ("gather_bmm", "gather_bmm_chunked", "csr") + (("cpp", "cpp_stream") if group_kernel.load() is not None else ())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pointwise and self.stride != (1, 1):
            x = x[:, :, ::self.stride[0], ::self.stride[1]]
        # activations as [features, columns]: a Linear's batch rows, a 1×1 conv's pixels (CHW layout)
        xt = x.transpose(0, 1).reshape(x.shape[1], -1) if self.pointwise else x.reshape(-1, x.shape[-1]).t()
        cols = xt.shape[1]
        kernel = self.chosen.get(cols)
        if kernel is None:
            kernel = self.chosen[cols] = self._pick(xt)
        self.last = kernel
        y = self._run(kernel, xt)  # [C_out, columns]
        if self.pointwise:
            n, _, h, w = x.shape
            y = y.reshape(-1, n, h, w).transpose(0, 1)
            return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)
        y = y.t().reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def _seconds(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@dataclass
class Converted:
    model: nn.Module
    status: dict[str, str]  # layer (module path) -> ok | dense_fallback: why | not_2of4 | ...


def module_of(name: str) -> str:
    """``hidden.0.weight`` → ``hidden.0``."""
    return name.rsplit(".", 1)[0] if "." in name else ""


def set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def convert(model: nn.Module, masks: dict[str, torch.Tensor], execution: str, *,
            block: tuple[int, int] = (4, 4), index_dtype: torch.dtype = torch.int32,
            dtype: torch.dtype = torch.float16, group: int = 4) -> Converted:
    """A copy of ``model`` with every masked layer executed as ``execution`` (csr | bsr | group | semi_structured)."""
    out = copy.deepcopy(model).eval()
    status: dict[str, str] = {}
    for pname, mask in masks.items():
        path = module_of(pname)
        layer = out.get_submodule(path)
        if not (isinstance(layer, nn.Linear) or (_is_pointwise(layer) and execution != "semi_structured")):
            status[path] = "dense_fallback: no sparse kernel for this layer type"
            continue
        w = as_matrix(layer.weight.detach())
        if execution == "csr":
            set_module(out, path, SparseMatmulLayer(layer, to_csr(w, index_dtype)))
        elif execution == "bsr":
            if w.shape[0] % block[0] or w.shape[1] % block[1]:
                status[path] = f"dense_fallback: shape {tuple(w.shape)} not divisible by block {block}"
                continue
            if not is_block_shaped(mask, *block):
                status[path] = "dense_fallback: mask is not block-shaped"
                continue
            with warnings.catch_warnings():  # "BSR support is in beta": known; it is what we measure
                warnings.simplefilter("ignore", UserWarning)
                bsr = w.to_sparse_bsr(block)
            bsr = torch.sparse_bsr_tensor(bsr.crow_indices().to(index_dtype), bsr.col_indices().to(index_dtype),
                                          bsr.values(), bsr.shape, check_invariants=False)
            set_module(out, path, SparseMatmulLayer(layer, bsr))
        elif execution == "group":
            if w.shape[0] % group or not is_block_shaped(mask, group, 1):
                status[path] = f"dense_fallback: mask is not made of {group}x1 groups"
                continue
            set_module(out, path, GroupSparseLayer(layer, mask, group))
        elif execution == "semi_structured":
            if not is_nm(mask, 2, 4, strict=True):
                status[path] = "not_2of4: mask has a group of four with more than two kept weights"
                continue
            try:
                set_module(out, path, SemiStructuredLinear(layer, dtype))
            except (RuntimeError, ValueError) as e:  # shape limits of the kernels
                status[path] = f"dense_fallback: {str(e).splitlines()[0][:120]}"
                continue
        else:
            raise ValueError(f"unknown execution {execution!r}")
        status[path] = "ok"
    return Converted(out, status)


def forward_with_hooks(model: nn.Module, x: torch.Tensor, handles: list[Any]) -> None:
    """One no-grad forward pass with temporary hooks (``handles``), removed whatever happens."""
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


def layer_macs(model: nn.Module, masks: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Multiply-adds per Linear / Conv layer for input ``x``: (dense, counting only kept weights)."""
    found: dict[str, tuple[int, int]] = {}
    kept = {module_of(n): int(m.sum()) for n, m in masks.items()}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            def hook(m: nn.Module, inp: tuple, out: torch.Tensor, name: str = name) -> None:
                channels = out.shape[-1] if isinstance(m, nn.Linear) else out.shape[1]
                dense = out.numel() // channels * m.weight.numel()  # output positions × MACs per position
                nnz = kept.get(name, m.weight.numel())
                found[name] = (int(dense), int(dense * nnz // m.weight.numel()))
            hooks.append(mod.register_forward_hook(hook))
    forward_with_hooks(model, x, hooks)
    return found
