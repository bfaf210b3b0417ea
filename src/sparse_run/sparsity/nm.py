"""N:M fine-grained structured selection (SR-STE, Zhou et al. 2021; NVIDIA 2:4).

Every group of M consecutive weights along a GEMM's reduction dimension keeps exactly its N
largest-|w| entries. For a Linear weight ``[out, in]`` the groups run along ``in``; for a conv
weight ``[out, in, kh, kw]`` the weight is viewed in NHWC order ``[out, kh, kw, in]`` and the
groups run along the input channels (``Sparse_NHWC`` in the reference code). ``dim=0`` groups
along the output dimension instead: the mask of Wᵀ that BDWP uses in the backward-data GEMM.

Shapes whose grouped dimension is not a multiple of M: each row is padded with -inf to a
multiple of M, so the trailing partial group of r < M weights keeps min(N, r) of them (never
more than N out of any group; the padded slots are dropped). ``tail`` reports r so the results
can say which layers were not exactly N:M; the MLP of ``nm_mnist`` has none.

Ties are broken by position (the earlier weight wins), so masks are deterministic.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from sparse_run.config.errors import ConfigError

Pattern = tuple[int, int]


VARIANTS = ("ste", "srste", "oneshot", "bdwp")


def parse(value: Any, field: str) -> Pattern:
    """``"2:4"`` (or ``[2, 4]``) → ``(2, 4)``; one-line ``ConfigError`` unless 1 <= N <= M."""
    try:
        if isinstance(value, str):
            a, b = value.split(":")
            n, m = int(a), int(b)
        else:
            n, m = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(field, f"got {value!r}; must be 'N:M' with integers 1 <= N <= M") from None
    return check(n, m, field, field)


def check(n: Any, m: Any, n_field: str, m_field: str) -> Pattern:
    """Validate one N:M pair: integers with M >= 1 and 1 <= N <= M."""
    for v, field in ((n, n_field), (m, m_field)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(field, f"got {v!r}; must be an integer")
    if m < 1:
        raise ConfigError(m_field, f"got M={m}; must be >= 1")
    if not 1 <= n <= m:
        raise ConfigError(n_field, f"got N={n}, M={m}; must satisfy 1 <= N <= M")
    return n, m


def fmt(p: Pattern) -> str:
    return f"{p[0]}:{p[1]}"


def group_rows(w: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """View ``w`` as ``[rows, k]`` with the grouped dimension last (NHWC for convs when dim=1).

    This is the one N:M grouping of the project: selection (``nm_mask``), the checks
    (``group_counts``, ``is_nm``) and the 2:4 codec all group consecutive entries of these rows.
    """
    if w.dim() < 2:
        raise ValueError(f"N:M needs a weight with >= 2 dims, got shape {tuple(w.shape)}")
    order = [d for d in range(w.dim()) if d != dim] + [dim]
    return w.permute(order).reshape(-1, w.shape[dim])


def ungroup_rows(rows: torch.Tensor, shape: tuple[int, ...] | torch.Size, dim: int = 1) -> torch.Tensor:
    """Inverse of ``group_rows``: ``[rows, k]`` back to a tensor of ``shape``."""
    order = [d for d in range(len(shape)) if d != dim] + [dim]
    inverse = [order.index(d) for d in range(len(shape))]
    return rows.reshape([shape[d] for d in order]).permute(inverse)


def padded_groups(t: torch.Tensor, m: int, dim: int = 1, fill: float = 0.0) -> torch.Tensor:
    """``[rows, groups, M]``: the rows of ``group_rows`` cut into groups of M, the last one padded with ``fill``."""
    rows = group_rows(t, dim)
    pad = -rows.shape[1] % m
    if pad:
        rows = torch.cat([rows, rows.new_full((rows.shape[0], pad), fill)], dim=1)
    return rows.reshape(rows.shape[0], -1, m)


def _keep_in_groups(g: torch.Tensor, n: int) -> torch.Tensor:
    """``g: [groups, M]`` scores → bool mask keeping the N highest per group (earliest wins ties).

    For M <= 16 the rank of each slot is counted with M² vectorised comparisons over contiguous
    columns (several times faster than topk/sort on CPU for small M); otherwise a stable sort.
    """
    m = g.shape[1]
    if m > 16:
        order = torch.sort(g, dim=1, descending=True, stable=True).indices[:, :n]
        return torch.zeros_like(g, dtype=torch.bool).scatter_(1, order, True)
    cols = g.t().contiguous()  # [M, groups]
    keep = torch.empty_like(cols, dtype=torch.bool)
    for i in range(m):
        rank = torch.zeros(cols.shape[1], dtype=torch.int32, device=g.device)
        for j in range(m):
            if j < i:
                rank += cols[j] >= cols[i]
            elif j > i:
                rank += cols[j] > cols[i]
        keep[i] = rank < n
    return keep.t()


@torch.no_grad()
def nm_mask(w: torch.Tensor, n: int, m: int, dim: int = 1, scores: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of ``w``'s shape keeping the N largest ``|w|`` (or ``scores``) in every group
    of M consecutive entries along ``dim`` (1: input dim / channels in NHWC; 0: output dim)."""
    s = (w.abs() if scores is None else scores).float()
    k = w.shape[dim]
    groups = padded_groups(s, m, dim, fill=-math.inf)  # padded slots never win
    keep = _keep_in_groups(groups.reshape(-1, m), n).reshape(groups.shape[0], -1)[:, :k]
    return ungroup_rows(keep, w.shape, dim).contiguous()


def tail(shape: torch.Size | tuple[int, ...], m: int, dim: int = 1) -> int:
    """Size of the trailing partial group along ``dim`` (0 when the dimension is a multiple of M)."""
    return shape[dim] % m


def keep_count(shape: torch.Size | tuple[int, ...], n: int, m: int, dim: int = 1) -> int:
    """Exact number of weights ``nm_mask`` keeps for a weight of ``shape`` (for target densities)."""
    k = shape[dim]
    rows = math.prod(shape) // k
    return rows * ((k // m) * n + min(n, k % m))


def group_counts(mask: torch.Tensor, m: int, dim: int = 1) -> torch.Tensor:
    """Non-zeros per complete group of M along ``dim`` (partial tail groups left out): for checks."""
    rows = group_rows(mask.to(torch.int32), dim)
    full = (rows.shape[1] // m) * m
    return rows[:, :full].reshape(-1, m).sum(1)


def is_nm(mask: torch.Tensor, n: int, m: int, *, strict: bool = False) -> bool:
    """At most N non-zeros in every group of M along the reduction axis, grouped as ``nm_mask`` groups
    (Linear: inputs; conv: input channels in NHWC order). A trailing partial group (zero-padded to M)
    must hold at most N too; ``strict`` additionally requires the axis to be a multiple of M (what a
    2:4 kernel executes without padding)."""
    if strict and mask.shape[1] % m:
        return False
    return bool((padded_groups(mask.bool().to(torch.int32), m).sum(-1) <= n).all())
