"""Measure a trained masked model on a target: ``hardware.csv`` rows (whole model and each layer ×
batch size) with the measured speedup and its interval, the ideal and channel-pruned speedups,
weight bytes per format, peak memory and a verdict."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from sparse_run.engine import onednn
from sparse_run.sparsity.patterns import is_nm

from . import slim as slim_mod
from .execute import convert, forward_with_hooks, layer_macs, module_of
from .formats import bytes_2of4, bytes_bsr, bytes_csr, bytes_dense
from .timing import Protocol, best_dense, faster, peak_bytes, speedup, time_rounds

COLUMNS = ["experiment", "method", "model", "dataset", "seed", "budget", "hardware", "execution", "device", "dtype",
           "threads", "scope", "layer", "shape", "batch", "density", "nonzeros", "numel", "macs_dense", "macs_sparse",
           "speedup_ideal", "speedup_channel_equiv", "t_dense_ms", "t_target_ms", "dense_kernel", "t_dense_aten_ms",
           "t_dense_onednn_ms", "speedup", "speedup_lo",
           "speedup_hi", "verdict", "rounds", "weight_bytes_dense", "weight_bytes_csr", "weight_bytes_bsr",
           "weight_bytes_2of4", "weight_bytes_target", "peak_mem_dense", "peak_mem_target", "status", "note"]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
INDEX = {"int32": torch.int32, "int64": torch.int64}


@dataclass
class Target:
    """What ``convert`` produced: the model to time, per-layer status, and whether it can run here."""

    model: nn.Module | None
    status: dict[str, str]
    available: bool
    device: torch.device
    dtype: torch.dtype
    note: str = ""


def protocol(hw: Any, smoke: bool, seed: int) -> Protocol:
    src = {**dict(hw), **(dict(hw.smoke) if smoke else {})}
    return Protocol(warmup=int(src["warmup"]), rounds=int(src["rounds"]), min_time_s=float(src["min_time_ms"]) / 1e3,
                    bootstrap=int(src["bootstrap"]), ci=float(src["ci"]), seed=seed)


def build_target(model: nn.Module, masks: dict[str, torch.Tensor], hw: Any, example: torch.Tensor) -> Target:
    ex = hw.execution
    if ex == "semi_structured":
        dtype = DTYPES[hw.dtype]
        if not torch.cuda.is_available():
            why = "not available: no CUDA device (2:4 runs on sparse tensor cores through cuSPARSELt)"
            return Target(None, {module_of(n): why for n in masks}, False, torch.device("cpu"), dtype, why)
        conv = convert(copy.deepcopy(model).to(dtype), masks, ex, dtype=dtype)
        return Target(conv.model.cuda(), conv.status, True, torch.device("cuda"), dtype)
    if ex == "slim":
        small, plan = slim_mod.slim(model, masks, example)
        status = {}
        for n in masks:
            p = module_of(n)
            status[p] = ("ok" if p in plan.out_keep or p in plan.in_keep else
                         f"dense: {plan.kept_reason[p]}" if p in plan.kept_reason else "ok: no dead channels")
        return Target(small, status, True, torch.device("cpu"), torch.float32)
    conv = convert(model, masks, ex, block=tuple(hw.block or (4, 4)), index_dtype=INDEX[hw.index_dtype],
                   group=int(hw.get("group") or 4))
    return Target(conv.model, conv.status, True, torch.device("cpu"), torch.float32)


def _batch(sample: torch.Tensor, b: int) -> torch.Tensor:
    reps = math.ceil(b / sample.shape[0])
    return sample.repeat(reps, *([1] * (sample.ndim - 1)))[:b].contiguous()


def _inputs(model: nn.Module, paths: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    got: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(p).register_forward_pre_hook(lambda m, a, p=p: got.__setitem__(p, a[0].detach()))
             for p in paths]
    forward_with_hooks(model, x, hooks)
    return got


def _channel_equivalent(layer: nn.Module, density: float) -> nn.Module:
    """A dense layer with the same weight count reached by dropping output channels."""
    out = max(1, round(layer.weight.shape[0] * density))
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, out).eval()
    return type(layer)(layer.in_channels, out, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                       groups=1).eval()


def _bytes(mask: torch.Tensor, block: tuple[int, int]) -> dict[str, float]:
    m2 = mask.reshape(mask.shape[0], -1)
    nnz, numel = int(m2.sum()), m2.numel()
    return {"weight_bytes_dense": bytes_dense(numel), "weight_bytes_csr": bytes_csr(nnz, m2.shape[0]),
            "weight_bytes_bsr": bytes_bsr(m2, block),
            "weight_bytes_2of4": bytes_2of4(numel) if is_nm(mask, 2, 4, strict=True) else float("nan")}


def measure_model(model: nn.Module, masks: dict[str, torch.Tensor], hw: Any, sample: torch.Tensor,
                  proto: Protocol, context: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for ``hardware.csv``: the whole model and each masked layer, per batch size."""
    model = model.eval()
    example = _batch(sample, min(64, sample.shape[0]))
    macs = layer_macs(model, masks, example[:1])
    tgt = build_target(model, masks, hw, example)
    dense = copy.deepcopy(model).to(device=tgt.device, dtype=tgt.dtype) if tgt.available else model
    paths = [module_of(n) for n in masks]
    cuda = tgt.device.type == "cuda"
    sync: Callable[[], None] = torch.cuda.synchronize if cuda else (lambda: None)
    block = tuple(hw.block or (4, 4))
    per_layer = {module_of(n): {"shape": "x".join(map(str, m.shape)), "density": float(m.float().mean()),
                                "nonzeros": int(m.sum()), "numel": m.numel(), **_bytes(m, block)}
                 for n, m in masks.items()}
    other_bytes = sum(p.numel() * 4 for n, p in model.named_parameters() if n not in masks)
    tbytes = _target_bytes(hw.execution, tgt, per_layer, masks)
    base = {**context, "execution": hw.execution, "device": tgt.device.type, "dtype": str(tgt.dtype).replace("torch.", ""),
            "threads": torch.get_num_threads(), "rounds": proto.rounds}
    macs_dense = sum(d for d, _ in macs.values())
    macs_sparse = sum(s for _, s in macs.values())
    rows: list[dict[str, Any]] = []
    # The dense baseline is the faster of ATen's kernels and oneDNN's: on AMD CPUs MKL takes its AVX2
    # path and oneDNN's dense GEMM is up to 2.4x faster, which would otherwise flatter the target.
    # The target's own dense Linear layers (slim: all of them) get the same choice.
    twin = _onednn_twin(dense) if tgt.available and _onednn_ok(tgt) else None
    ttwin = _onednn_twin(tgt.model) if twin is not None else None
    for b in [int(v) for v in hw.batch_sizes]:
        rows.extend(_rows_at_batch(b, sample, tgt, dense, twin, ttwin, hw, paths, per_layer, macs, tbytes, proto,
                                   sync, base, macs_dense, macs_sparse, other_bytes, cuda))
    for r in rows:
        r.pop("t_chan_ms", None)
    return rows, {"layer_status": tgt.status}


def _onednn_ok(tgt: Target) -> bool:
    return tgt.device.type == "cpu" and tgt.dtype == torch.float32 and onednn.available()


def _onednn_twin(model: nn.Module) -> nn.Module | None:
    """A copy whose every plain Linear layer runs through oneDNN (None: it has none)."""
    if not any(type(m) is nn.Linear for m in model.modules()):
        return None
    # sparse weights (CSR / BSR attributes of converted layers) cannot be deep-copied; they are read-only: share them
    memo = {id(v): v for m in model.modules() for v in vars(m).values()
            if isinstance(v, torch.Tensor) and v.layout != torch.strided}
    twin = copy.deepcopy(model, memo)
    for m in twin.modules():
        if type(m) is nn.Linear:
            onednn.patch(m)
    return twin


def _rows_at_batch(b: int, sample: torch.Tensor, tgt: Target, dense: nn.Module, twin: nn.Module | None,
                   ttwin: nn.Module | None, hw: Any,
                   paths: list[str], per_layer: dict[str, dict], macs: dict[str, tuple[int, int]],
                   tbytes: dict[str, float], proto: Protocol, sync: Callable[[], None], base: dict[str, Any],
                   macs_dense: int, macs_sparse: int, other_bytes: int, cuda: bool) -> list[dict[str, Any]]:
    """The whole-model row at batch ``b`` and its per-layer rows."""
    rows = []
    x = _batch(sample, b).to(device=tgt.device, dtype=tgt.dtype if tgt.available else torch.float32)
    layer_rows = []
    if hw.layers:
        layer_rows = _layer_rows(dense, twin, ttwin, tgt, paths, per_layer, macs, tbytes, x, b, proto, sync, base)
    row = {**base, "scope": "model", "layer": "model", "shape": "", "batch": b,
           "density": sum(r["nonzeros"] for r in per_layer.values()) / sum(r["numel"] for r in per_layer.values()),
           "nonzeros": sum(r["nonzeros"] for r in per_layer.values()),
           "numel": sum(r["numel"] for r in per_layer.values()),
           "macs_dense": macs_dense * b, "macs_sparse": macs_sparse * b,
           "speedup_ideal": macs_dense / max(macs_sparse, 1)}
    for key in ("weight_bytes_dense", "weight_bytes_csr", "weight_bytes_bsr", "weight_bytes_2of4"):
        row[key] = sum(r[key] for r in per_layer.values()) + other_bytes
    row["weight_bytes_target"] = sum(tbytes.values()) + other_bytes
    timed = [r for r in layer_rows if r.get("t_chan_ms")]
    if timed:
        row["speedup_channel_equiv"] = sum(r["t_dense_ms"] for r in timed) / sum(r["t_chan_ms"] for r in timed)
    if tgt.available:
        contenders = {"dense": lambda: dense(x), "target": lambda: tgt.model(x)}
        if twin is not None:
            contenders["dense_onednn"] = lambda: twin(x)
        if ttwin is not None:
            contenders["target_onednn"] = lambda: ttwin(x)
        t = time_rounds(contenders, proto, sync)
        t_dense, cols = best_dense(t)
        _, t_target = faster(t, "target")
        sp = speedup(t_dense, t_target, proto)
        row.update(**cols, t_dense_ms=1e3 * float(np.median(t_dense)),
                   t_target_ms=1e3 * float(np.median(t_target)),
                   speedup=sp.median, speedup_lo=sp.lo, speedup_hi=sp.hi, verdict=sp.verdict,
                   peak_mem_dense=row["weight_bytes_dense"] + peak_bytes(lambda: dense(x), cuda),
                   peak_mem_target=row["weight_bytes_target"] + peak_bytes(lambda: tgt.model(x), cuda),
                   status="ok" if all(s == "ok" or s.startswith("ok") for s in tgt.status.values()) else "partial",
                   note="; ".join(sorted({f"{p}: {s}" for p, s in tgt.status.items() if not s.startswith("ok")})))
    else:
        row.update(verdict="not available", status="not_available", note=tgt.note)
    rows.append(row)
    rows.extend(layer_rows)
    return rows


def _target_bytes(execution: str, tgt: Target, per_layer: dict[str, dict], masks: dict[str, torch.Tensor]) -> dict[str, float]:
    key = {"csr": "weight_bytes_csr", "bsr": "weight_bytes_bsr", "semi_structured": "weight_bytes_2of4"}.get(execution)
    out = {}
    for p, info in per_layer.items():
        ok = tgt.status.get(p, "").startswith("ok")
        if execution == "slim" and tgt.model is not None:
            out[p] = tgt.model.get_submodule(p).weight.numel() * 4
        elif key and ok:
            out[p] = info[key]
        elif execution == "group" and ok and tgt.model is not None:  # values (padded) + one index per column
            layer = tgt.model.get_submodule(p)
            out[p] = layer.values.numel() * 4 + layer.index.numel() * 4
        else:
            out[p] = info["weight_bytes_dense"]
    return out


def _kernel_note(layer: nn.Module) -> str:
    """Which variant a layer that picks its kernel by timing (``GroupSparseLayer``) ran for this input size."""
    last = getattr(layer, "last", "")
    return f"kernel {last}" if last else ""


def _layer_rows(dense: nn.Module, twin: nn.Module | None, ttwin: nn.Module | None, tgt: Target, paths: list[str],
                per_layer: dict[str, dict],
                macs: dict[str, tuple[int, int]], tbytes: dict[str, float], x: torch.Tensor, b: int,
                proto: Protocol, sync: Callable[[], None], base: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    d_in = _inputs(dense, paths, x)
    t_in = _inputs(tgt.model, paths, x) if tgt.available else {}
    for p in paths:
        info = per_layer[p]
        md, ms = macs.get(p, (0, 0))
        row = {**base, "scope": "layer", "layer": p, "batch": b, "macs_dense": md * b, "macs_sparse": ms * b,
               "speedup_ideal": md / max(ms, 1), **info, "weight_bytes_target": tbytes[p]}
        status = tgt.status.get(p, "ok")
        if not tgt.available:  # nothing to time on this machine; ideal speedup and bytes still hold
            rows.append({**row, "verdict": "not available", "status": "not_available", "note": status})
            continue
        layer = dense.get_submodule(p)
        chan = _channel_equivalent(layer, info["density"]).to(device=x.device, dtype=x.dtype)
        xi = d_in[p]
        tl, ti = tgt.model.get_submodule(p), t_in[p]
        contenders = {"dense": lambda: layer(xi), "channel": lambda: chan(xi), "target": lambda: tl(ti)}
        if twin is not None:  # oneDNN for the dense layer, its channel-pruned equivalent and the target alike
            layer_dnn, chan_dnn = twin.get_submodule(p), copy.deepcopy(chan)
            contenders["dense_onednn"] = lambda: layer_dnn(xi)
            if type(chan_dnn) is nn.Linear:
                onednn.patch(chan_dnn)
                contenders["channel_onednn"] = lambda: chan_dnn(xi)
            tl_dnn = ttwin.get_submodule(p) if ttwin is not None else None
            if type(tl_dnn) is nn.Linear:
                contenders["target_onednn"] = lambda: tl_dnn(ti)
        t = time_rounds(contenders, proto, sync)
        t_dense, cols = best_dense(t)
        (_, t_chan), (_, t_target) = faster(t, "channel"), faster(t, "target")
        ch = speedup(t_dense, t_chan, proto)
        row.update(**cols, speedup_channel_equiv=ch.median, t_dense_ms=1e3 * float(np.median(t_dense)),
                   t_chan_ms=1e3 * float(np.median(t_chan)))
        sp = speedup(t_dense, t_target, proto)
        row.update(t_target_ms=1e3 * float(np.median(t_target)), speedup=sp.median, speedup_lo=sp.lo,
                   speedup_hi=sp.hi, verdict=sp.verdict, status="ok" if status.startswith("ok") else "dense_fallback",
                   note=_kernel_note(tl) if status == "ok" else status)
        rows.append(row)
    return rows
