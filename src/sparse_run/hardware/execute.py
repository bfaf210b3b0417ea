"""Executing a masked model the way a target would: layers swapped for sparse-kernel versions.

``torch.sparse.mm(W, xᵀ)`` with the sparse weight on the left and activations as
features × batch is torch's fast CPU path (``F.linear(x, W_csr)`` and dense @ sparse take 3–6×
slower routes; see docs/hardware.md). Torch has no sparse convolution, so only Linear
layers and 1×1 convolutions (a matrix product in CHW layout) get sparse kernels; other layers
run dense and are reported as ``dense_fallback``.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..sparsity.patterns import as_matrix, is_block_shaped, is_nm
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
            dtype: torch.dtype = torch.float16) -> Converted:
    """A copy of ``model`` with every masked layer executed as ``execution`` (csr | bsr | semi_structured)."""
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
