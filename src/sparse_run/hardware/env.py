"""The environment a timing was taken in: CPU model and vector flags, threads, torch / BLAS /
oneDNN / cuSPARSELt versions, GPU. Recorded beside every measurement, because a speedup means
nothing without the machine and the libraries that produced it."""
from __future__ import annotations

import os
import platform
import re
from typing import Any

import torch

FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
         "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        model = m.group(1).strip() if m else model
        fl = re.search(r"^(flags|Features)\s*:\s*(.+)$", text, re.M)
        flags = [x for x in FLAGS if fl and x in fl.group(2).split()]
    except OSError:
        pass
    return model, flags


def _build_info() -> dict[str, str]:
    show = torch.__config__.show()
    out = {}
    for key in ("BLAS_INFO", "LAPACK_INFO", "USE_MKL", "USE_MKLDNN", "CPU capability usage"):
        m = re.search(rf"{re.escape(key)}\s*[=:]\s*([^,\n]+)", show)
        if m:
            out[key] = m.group(1).strip()
    for label, pattern in (("mkl", r"Intel\(R\) (?:oneAPI )?Math Kernel Library Version ([\w.]+)"),
                           ("onednn", r"oneDNN[^v]*v([\d.]+)"), ("openmp", r"OpenMP (\d+)")):
        m = re.search(pattern, show)
        if m:
            out[label] = m.group(1)
    return out


def environment(threads: int | None = None) -> dict[str, Any]:
    model, flags = _cpuinfo()
    env: dict[str, Any] = {
        "cpu": model, "cpu_flags": flags, "logical_cpus": os.cpu_count(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "build": _build_info(), "cuda": torch.cuda.is_available(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda_version"] = torch.version.cuda
        cusparselt = getattr(torch.backends, "cusparselt", None)
        env["cusparselt"] = cusparselt.version() if cusparselt and cusparselt.is_available() else None
    return env
