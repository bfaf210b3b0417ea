"""Weight storage formats: byte counts and plain (device-independent) codecs.

Byte counts are what each format must store for one 2-D weight: dense values; CSR values +
column indices + row pointers; BSR block values + block column indices + block-row pointers;
2:4 semi-structured half the values (fp16/bf16) + a 2-bit position per kept value.
The 2:4 codec stores kept values and their positions (0–3) within each group of four inputs (conv:
four input channels, NHWC, as N:M selection groups them) as plain tensors, so a 2:4 export can be
written and checked on any machine; only executing it needs cuSPARSELt (``to_sparse_semi_structured``,
CUDA).
"""
from __future__ import annotations

import math
import warnings

import torch

from ..sparsity.nm import padded_groups, ungroup_rows
from ..sparsity.patterns import as_matrix, is_nm


def bytes_dense(numel: int, elem: int = 4) -> int:
    return numel * elem


def bytes_csr(nnz: int, rows: int, elem: int = 4, index: int = 4) -> int:
    return nnz * (elem + index) + (rows + 1) * index


def bytes_bsr(mask: torch.Tensor, block: tuple[int, int], elem: int = 4, index: int = 4) -> int:
    """Blocks with at least one kept entry are stored whole (edge blocks padded)."""
    from ..sparsity.patterns import pool_blocks

    r, c = block
    pooled = pool_blocks(torch.where(as_matrix(mask).bool(), 1.0, -math.inf), r, c)
    nblocks = int(torch.isfinite(pooled).sum())
    return nblocks * (r * c * elem + index) + (pooled.shape[0] + 1) * index


def bytes_2of4(numel: int, elem: int = 2) -> int:
    return numel // 2 * elem + numel // 8


# -- CSR -----------------------------------------------------------------------------------------

def to_csr(w: torch.Tensor, index_dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """2-D CSR tensor of ``w``'s non-zeros with ``index_dtype`` indices (int32: faster at batch 1)."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta" — known, and why we measure
        warnings.simplefilter("ignore", UserWarning)
        csr = as_matrix(w).detach().to_sparse_csr()
        return torch.sparse_csr_tensor(csr.crow_indices().to(index_dtype), csr.col_indices().to(index_dtype),
                                       csr.values(), csr.shape, check_invariants=False)


def csr_parts(w: torch.Tensor) -> dict[str, torch.Tensor]:
    csr = to_csr(w)
    return {"crow_indices": csr.crow_indices(), "col_indices": csr.col_indices(), "values": csr.values()}


def csr_from_parts(parts: dict[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
    return torch.sparse_csr_tensor(parts["crow_indices"], parts["col_indices"], parts["values"], shape,
                                   check_invariants=True)  # validates what a file claims


# -- 2:4 -----------------------------------------------------------------------------------------

def encode_2of4(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Kept values ``[rows, groups·2]`` and their uint8 positions within each group of four.

    Groups are N:M's (``nm.group_rows``): a Linear's inputs, a conv's input channels in NHWC order
    (rows = out·kh·kw), the last group zero-padded when the axis is not a multiple of four. Groups
    with fewer than two non-zeros store explicit zeros at the lowest free positions.
    """
    w = w.detach()
    if not is_nm(w != 0, 2, 4):
        raise ValueError("weight is not 2:4 (a group of four inputs / input channels has more than two non-zeros)")
    g = padded_groups(w, 4)
    # non-zeros first (stable by position), then the first two positions of each group
    key = (g == 0).to(torch.int8) * 4 + torch.arange(4, dtype=torch.int8)
    pos = torch.sort(key, dim=-1, stable=True).indices[..., :2].sort(dim=-1).values
    vals = torch.gather(g, -1, pos)
    return {"values": vals.reshape(g.shape[0], -1).contiguous(),
            "positions": pos.to(torch.uint8).reshape(g.shape[0], -1).contiguous()}


def decode_2of4(parts: dict[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``encode_2of4`` for a weight of ``shape`` (padding dropped, NHWC order undone)."""
    vals, pos = parts["values"], parts["positions"].long()
    rows = vals.shape[0]
    g = torch.zeros(rows, vals.shape[1] // 2, 4, dtype=vals.dtype)
    g.scatter_(-1, pos.reshape(rows, -1, 2), vals.reshape(rows, -1, 2))
    return ungroup_rows(g.reshape(rows, -1)[:, :shape[1]], tuple(shape)).contiguous()


def assert_pruned_zero(state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    """Pruned entries of the *stored* weights are exactly zero (checked before any mask is re-applied,
    which would hide a violation)."""
    bad = {n: int((state[n][~m.bool()] != 0).sum()) for n, m in masks.items()}
    bad = {n: c for n, c in bad.items() if c}
    if bad:
        raise AssertionError(f"pruned weights are not zero in the checkpoint: {bad}")
