"""Small C++ kernels compiled on the machine that runs them (``torch.utils.cpp_extension.load_inline``).

Compiled where they run, with ``-O3 -march=native``, they use that host's own instruction set (AVX2 or
AVX-512), which a prebuilt wheel cannot assume. The build lands in torch's extension cache, so ``make install``
pays it once. Without a compiler, headers or ninja the build fails once, the reason is kept (``status``) and
every caller uses its stock-torch path: a kernel here is an option that a measurement picks, never a dependency.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

_lock = threading.Lock()
_built: dict[str, tuple[Any | None, str]] = {}


def load(name: str, source: str, functions: list[str]) -> Any | None:
    """The compiled module ``name`` (built once per process from ``source``), or None when it cannot be built."""
    with _lock:
        if name not in _built:
            try:
                logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime": known
                from torch.utils.cpp_extension import load_inline

                mod = load_inline(name=name, cpp_sources=[source], functions=functions,
                                  extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
                                  verbose=False)
                _built[name] = (mod, "built")
            except Exception as e:  # no compiler / headers / ninja: the stock-torch variants remain
                why = str(e).strip().splitlines()[-1][:160] if str(e).strip() else ""
                _built[name] = (None, f"unavailable: {type(e).__name__}: {why}")
        return _built[name][0]


def status(name: str) -> str:
    """``built`` or ``unavailable: <why>`` for a module ``load`` was asked for; ``not loaded`` otherwise."""
    return _built[name][1] if name in _built else "not loaded"
