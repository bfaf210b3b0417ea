"""Kernel study's timing pieces (``experiment=hw_sparse_1x1``, run by ``studies/kernel_study.py``): Fast Sparse ConvNets' kernel-level claim on this CPU.

Each MobileNet-v1 pointwise conv at 224×224 input is a sparse ``[C_out, C_in]`` weight times dense
``[C_in, H·W]`` activations (batch 1, CHW layout). For every shape × sparsity × pattern × backend
we time dense GEMM against the sparse kernel with the run's protocol (warm-ups, shuffled paired
rounds, median ratio, bootstrap CI) and read off the break-even sparsity. Nothing is trained.

Backends: ``torch_csr`` (``torch.sparse.mm``, int32 indices; any pattern) and ``torch_bsr``
(square blocks only — torch's CPU BSR goes through MKL, which rejects non-square blocks, so the
paper's 4×1 blocking runs through CSR only; ``block4x4`` is there for BSR).
"""
from __future__ import annotations

import math
import re
import warnings
from typing import Any

import pandas as pd
import torch

from sparse_run.sparsity.patterns import expand_blocks, pool_blocks
from sparse_run.sparsity.selection import keep_top

from .formats import to_csr

COLUMNS = ["shape_label", "c_in", "c_out", "hw", "count", "pattern", "backend", "sparsity", "achieved_sparsity",
           "nonzeros", "t_dense_ms", "t_sparse_ms", "dense_kernel", "t_dense_aten_ms", "t_dense_onednn_ms", "speedup", "speedup_lo", "speedup_hi", "verdict", "threads",
           "rounds", "status"]
BREAKEVEN_COLUMNS = ["shape_label", "c_in", "c_out", "hw", "pattern", "backend", "breakeven_sparsity",
                     "first_faster_sparsity", "speedup_at_min", "speedup_at_max", "note"]
BACKENDS = ("torch_csr", "torch_bsr")


def parse_pattern(name: str) -> tuple[int, int] | None:
    """``unstructured`` → None; ``block4x1`` → (4, 1) (rows = output channels × cols = input channels)."""
    if name == "unstructured":
        return None
    m = re.fullmatch(r"block(\d+)x(\d+)", name)
    if not m:
        raise ValueError(name)
    return int(m.group(1)), int(m.group(2))


def make_weight(c_out: int, c_in: int, sparsity: float, pattern: str, gen: torch.Generator) -> torch.Tensor:
    """A random weight pruned to exactly ``sparsity`` in whole blocks of ``pattern`` (magnitude-pooled)."""
    w = torch.randn(c_out, c_in, generator=gen)
    blk = parse_pattern(pattern) or (1, 1)
    pooled = pool_blocks(w.abs(), *blk)
    keep = keep_top(pooled, round(pooled.numel() * (1 - sparsity)))
    return w * expand_blocks(keep, *blk, (c_out, c_in))


def _sparse(w: torch.Tensor, pattern: str, backend: str, index_dtype: torch.dtype) -> torch.Tensor | str:
    if backend == "torch_csr":
        return to_csr(w, index_dtype)
    blk = parse_pattern(pattern)
    if blk is None or blk[0] != blk[1]:
        return "skipped: torch CPU BSR (MKL) runs square blocks only"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        bsr = w.to_sparse_bsr(blk)
    return torch.sparse_bsr_tensor(bsr.crow_indices().to(index_dtype), bsr.col_indices().to(index_dtype),
                                   bsr.values(), bsr.shape, check_invariants=False)


def settings(cfg: Any) -> tuple[dict[str, Any], str]:
    """The study's settings under the run's budget (``budget.kernel_study`` overrides them)."""
    ks = dict(cfg.kernel_study)
    ks.update(dict(cfg.budget.kernel_study))
    shapes = [list(s) for s in ks["shapes"]]
    subset = ks.get("shape_subset")
    note = "all 13 pointwise convs"
    if subset:
        note = f"subset of shapes {list(subset)} (budget {cfg.budget.name}); network sum covers these only"
        shapes = [shapes[i] for i in subset]
    ks["shapes"] = shapes
    return ks, note


def breakeven(df: pd.DataFrame) -> pd.DataFrame:
    """Per shape × pattern × backend: the sparsity where the median speedup crosses 1 (linear
    interpolation between grid points) and the first grid sparsity whose CI says ``faster``."""
    out = []
    ok = df[df.status == "ok"]
    for (label, pattern, backend), g in ok.groupby(["shape_label", "pattern", "backend"], sort=False):
        g = g.sort_values("sparsity")
        s, v = g.sparsity.to_numpy(), g.speedup.to_numpy()
        be, note = math.nan, ""
        if v[0] >= 1:
            be, note = s[0], f"already >= 1 at {s[0]:.0%} (break-even at or below the grid)"
        else:
            for i in range(1, len(s)):
                if v[i] >= 1 > v[i - 1]:
                    be = s[i - 1] + (1 - v[i - 1]) * (s[i] - s[i - 1]) / (v[i] - v[i - 1])
                    break
            else:
                note = f"never reaches 1 up to {s[-1]:.0%}"
        faster = g[g.verdict == "faster"].sparsity
        first = g.iloc[0]
        out.append({"shape_label": label, "c_in": first.get("c_in"), "c_out": first.get("c_out"),
                    "hw": first.get("hw"), "pattern": pattern, "backend": backend, "breakeven_sparsity": be,
                    "first_faster_sparsity": float(faster.min()) if len(faster) else math.nan,
                    "speedup_at_min": float(v[0]), "speedup_at_max": float(v[-1]), "note": note})
    return pd.DataFrame(out, columns=BREAKEVEN_COLUMNS)


def format_breakeven(be: pd.DataFrame) -> str:
    view = be[["shape_label", "pattern", "backend", "breakeven_sparsity", "first_faster_sparsity",
               "speedup_at_min", "speedup_at_max"]]
    return "break-even sparsity (median speedup crosses 1; first CI-faster grid point):\n" + view.to_string(
        index=False, float_format=lambda v: f"{v:.3g}")
