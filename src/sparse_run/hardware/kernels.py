"""Kernel study (``experiment=hw_sparse_1x1``): Fast Sparse ConvNets' kernel-level claim on this CPU.

Each MobileNet-v1 pointwise conv at 224×224 input is a sparse ``[C_out, C_in]`` weight times dense
``[C_in, H·W]`` activations (batch 1, CHW layout). For every shape × sparsity × pattern × backend
we time dense GEMM against the sparse kernel with the run's protocol (warm-ups, shuffled paired
rounds, median ratio, bootstrap CI) and read off the break-even sparsity. Nothing is trained.

Backends: ``torch_csr`` (``torch.sparse.mm``, int32 indices; any pattern) and ``torch_bsr``
(square blocks only — torch's CPU BSR goes through MKL, which rejects non-square blocks, so the
paper's 4×1 blocking runs through CSR only; ``block4x4`` is there for BSR).
"""
from __future__ import annotations

import json
import math
import re
import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import onednn
from ..results import atomic_write_text, rows_to_csv
from ..sparsity.patterns import expand_blocks, pool_blocks
from ..sparsity.selection import keep_top
from .env import environment
from .formats import to_csr
from .timing import Protocol, best_dense, speedup, time_rounds

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
    """The study's settings under the run's budget (``kernel_study.budgets.<name>`` overrides)."""
    ks = dict(cfg.kernel_study)
    over = dict((ks.pop("budgets", None) or {}).get(cfg.budget.name) or {})
    ks.update(over)
    shapes = [list(s) for s in ks["shapes"]]
    subset = ks.get("shape_subset")
    note = "all 13 pointwise convs"
    if subset:
        note = f"subset of shapes {list(subset)} (budget {cfg.budget.name}); network sum covers these only"
        shapes = [shapes[i] for i in subset]
    ks["shapes"] = shapes
    return ks, note


def run_study(run: Any) -> None:
    cfg = run.cfg
    ks, note = settings(cfg)
    proto = Protocol(warmup=int(ks["warmup"]), rounds=int(ks["rounds"]), min_time_s=float(ks["min_time_ms"]) / 1e3,
                     bootstrap=int(ks["bootstrap"]), ci=float(ks["ci"]), seed=run.seed)
    index_dtype = {"int32": torch.int32, "int64": torch.int64}[ks["index_dtype"]]
    gen = torch.Generator().manual_seed(run.seed)
    rows: list[dict[str, Any]] = []
    per_round: dict[tuple, dict[str, list[np.ndarray]]] = {}
    threads = torch.get_num_threads()
    use_dnn = onednn.available()
    for c_in, c_out, hw, count in ks["shapes"]:
        label = f"{c_in}→{c_out} @{hw}²" + (f" ×{count}" if count > 1 else "")
        x = torch.randn(c_in, hw * hw, generator=gen)
        for pattern in ks["patterns"]:
            for s in ks["sparsities"]:
                w = make_weight(c_out, c_in, float(s), pattern, gen)
                for backend in ks["backends"]:
                    sw = _sparse(w, pattern, backend, index_dtype)
                    base = {"shape_label": label, "c_in": c_in, "c_out": c_out, "hw": hw, "count": count,
                            "pattern": pattern, "backend": backend, "sparsity": float(s),
                            "achieved_sparsity": 1 - int((w != 0).sum()) / w.numel(), "nonzeros": int((w != 0).sum()),
                            "threads": threads, "rounds": proto.rounds}
                    if isinstance(sw, str):
                        rows.append({**base, "verdict": "not available", "status": sw})
                        continue
                    contenders = {"dense": lambda: torch.mm(w, x), "sparse": lambda: torch.sparse.mm(sw, x)}
                    if use_dnn:  # the dense baseline is the faster of MKL's and oneDNN's GEMM
                        contenders["dense_onednn"] = lambda: onednn.mm(w, x)
                    t = time_rounds(contenders, proto)
                    t_dense, cols = best_dense(t)
                    sp = speedup(t_dense, t["sparse"], proto)
                    rows.append({**base, **cols, "t_dense_ms": 1e3 * float(np.median(t_dense)),
                                 "t_sparse_ms": 1e3 * float(np.median(t["sparse"])), "speedup": sp.median,
                                 "speedup_lo": sp.lo, "speedup_hi": sp.hi, "verdict": sp.verdict, "status": "ok"})
                    acc = per_round.setdefault((pattern, backend, float(s)), {"dense": [], "sparse": []})
                    acc["dense"].append(count * t_dense)
                    acc["sparse"].append(count * t["sparse"])
        print(f"sparse-run: kernel study {label} done", flush=True)
    n_convs = sum(int(sh[3]) for sh in ks["shapes"])
    for (pattern, backend, s), acc in per_round.items():
        if len(acc["dense"]) != len(ks["shapes"]):
            continue
        td, ts = np.sum(acc["dense"], axis=0), np.sum(acc["sparse"], axis=0)
        sp = speedup(td, ts, proto)
        rows.append({"shape_label": f"network ({n_convs} convs, sum)", "count": n_convs, "pattern": pattern,
                     "backend": backend, "sparsity": s, "t_dense_ms": 1e3 * float(np.median(td)),
                     "t_sparse_ms": 1e3 * float(np.median(ts)), "speedup": sp.median, "speedup_lo": sp.lo,
                     "speedup_hi": sp.hi, "verdict": sp.verdict, "threads": threads, "rounds": proto.rounds,
                     "status": "ok"})
    df = pd.DataFrame(rows)
    be = breakeven(df)
    atomic_write_text(run.dir / "kernel.csv", rows_to_csv(rows, COLUMNS))
    atomic_write_text(run.dir / "breakeven.csv", rows_to_csv(be.to_dict("records"), BREAKEVEN_COLUMNS))
    env = environment(threads)
    atomic_write_text(run.dir / "kernel.json", json.dumps(
        {"study": {k: v for k, v in ks.items()}, "coverage": note, "protocol": proto.__dict__, "environment": env},
        indent=2, default=str))
    from .figures import kernel_figure

    dense = "fastest of MKL / oneDNN" if use_dnn else "ATen"
    title = (f"{cfg.name}: MobileNet-v1 1x1 convs at 224², batch 1, {threads} thread(s), {proto.rounds} rounds, "
             f"budget {cfg.budget.name} ({note}); dense GEMM: {dense}; load avg {env.get('load_avg', ['?'])[0]:.2f}")
    kernel_figure(df[df.status == "ok"], be, run.dir / "figures" / "speedup_vs_sparsity.png", title)
    print(format_breakeven(be))


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


def validate(cfg: Any) -> None:
    """One-line errors for the study's settings (called by ``hardware.check`` before any work)."""
    from ..validate import ConfigError, choice, number

    if cfg.get("kernel_study") is None:
        raise ConfigError("kernel_study", "missing; schedule kind kernel_study needs the experiment's settings "
                                          "(experiment=hw_sparse_1x1)")
    ks, _ = settings(cfg)
    for p in ks["patterns"]:
        try:
            parse_pattern(str(p))
        except ValueError:
            raise ConfigError("kernel_study.patterns", f"got {p!r}; allowed: unstructured, block<r>x<c> "
                                                       "(e.g. block4x1, block4x4)") from None
    for b in ks["backends"]:
        choice(b, "kernel_study.backends", BACKENDS)
    for s in ks["sparsities"]:
        number(s, "kernel_study.sparsities", lo=0, hi=1, hi_open=True)
    for sh in ks["shapes"]:
        if len(sh) != 4 or not all(isinstance(v, int) and v >= 1 for v in sh):
            raise ConfigError("kernel_study.shapes", f"got {sh!r}; allowed: [c_in, c_out, hw, count] positive ints")
    choice(ks["index_dtype"], "kernel_study.index_dtype", ("int32", "int64"))
    number(ks["rounds"], "kernel_study.rounds", lo=3, integer=True)
