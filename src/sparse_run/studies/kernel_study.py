"""Kernel study (``schedule.kind=kernel_study``, ``experiment=hw_sparse_1x1``): Fast Sparse ConvNets'
kernel-level claim on this CPU. Not a pruning schedule: it times dense GEMM against sparse kernels for every
MobileNet-v1 pointwise shape × sparsity × pattern × backend and reads off the break-even sparsity
(``hardware/kernels.py`` has the pieces); nothing is trained.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import torch

from sparse_run.config import ConfigError, choice, number
from sparse_run.engine import onednn
from sparse_run.engine.run import Run
from sparse_run.hardware.env import environment
from sparse_run.hardware.kernels import (BACKENDS, BREAKEVEN_COLUMNS, COLUMNS, _sparse, breakeven, format_breakeven,
                                         make_weight, parse_pattern, settings)
from sparse_run.hardware.timing import Protocol, best_dense, speedup, time_rounds
from sparse_run.store.files import atomic_write_text
from sparse_run.store.schema import rows_to_csv


def run_study(run: Run) -> None:
    """Runner for ``method.schedule.kind=kernel_study``: times kernels, trains nothing."""
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
    dense = "fastest of MKL / oneDNN" if use_dnn else "ATen"
    title = (f"{cfg.name}: MobileNet-v1 1x1 convs at 224², batch 1, {threads} thread(s), {proto.rounds} rounds, "
             f"budget {cfg.budget.name} ({note}); dense GEMM: {dense}; load avg {env.get('load_avg', ['?'])[0]:.2f}")
    from sparse_run.report.hardware import kernel_figure  # here: report/ imports matplotlib (start-up)
    kernel_figure(df[df.status == "ok"], be, run.dir / "figures" / "speedup_vs_sparsity.png", title)
    print(format_breakeven(be))


def validate(cfg: Any) -> None:
    """One-line errors for the study's settings (before any work)."""
    if cfg.kernel_study is None:
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
