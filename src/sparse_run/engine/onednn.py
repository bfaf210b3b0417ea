"""oneDNN matmuls for ``nn.Linear`` layers while training on CPU (``train.linear_kernel``).

PyTorch runs a float32 ``nn.Linear`` on CPU through MKL's sgemm, and MKL takes its AVX2 path on
AMD processors. oneDNN, in the same PyTorch build, uses the AVX-512 the CPU has: on an AMD EPYC
(Zen 5) a LeNet-300-100 layer at batch 60 runs 1.6x faster forward and backward; on an AVX2-only EPYC
it runs 0.8x as fast. So ``auto`` measures it once per machine (``faster_here``) instead of assuming it. Same float32 arithmetic, another summation
order: results differ from the MKL path in the last bits, and are deterministic for a fixed
thread count.

``use_onednn(model)`` gives each plain ``nn.Linear`` of at least ``MIN_WEIGHTS`` weights an instance ``forward`` (state_dict, hooks and
parameters unchanged) for the duration of a ``with`` block; layers that already carry their own
``forward`` (N:M STE / BDWP) are left alone. The gradient is first-order only, so it is used inside
the training loop, not where a criterion needs double backward (GraSP runs outside it).

``torch.ops.mkldnn._linear_pointwise`` is private: ``available()`` checks it exists and computes
``F.linear`` on a probe before anything uses it, and without it every caller takes ATen's public
path. This module also holds the one switch for all private-API fast paths: the environment
variable ``SPARSE_RUN_SAFE_TORCH=1`` (read once, at import) sets ``SAFE_TORCH``, and then
``fast_paths()`` is false, ``linear_kernel`` auto / onednn resolve to ATen, ``LeanStep`` uses
``opt.step()`` and the replicate trainer multiplies tensor by tensor instead of ``torch._foreach_mul_``.
"""
from __future__ import annotations

import functools
import os
import types
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from sparse_run.config.errors import ConfigError

KERNELS = ("auto", "onednn", "aten")
# oneDNN's fixed cost per call (~10 us) outweighs its gain on small layers: measured at batch 60,
# 784x300 runs 1.6-1.8x faster, 300x100 breaks even and 100x10 is 3x slower. Smaller layers keep ATen.
MIN_WEIGHTS = 1 << 16


SAFE_TORCH = os.environ.get("SPARSE_RUN_SAFE_TORCH", "").strip().lower() not in ("", "0", "false", "no")


def fast_paths() -> bool:
    """Whether fast paths built on private torch APIs may run (``SPARSE_RUN_SAFE_TORCH`` unset)."""
    return not SAFE_TORCH


@functools.cache
def _probe() -> bool:
    """The private kernel exists, takes the arguments used here and computes ``x @ W.T + b``."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 4, generator=gen), torch.randn(5, 4, generator=gen), torch.randn(5, generator=gen)
    try:
        out = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    except (RuntimeError, TypeError):
        return False
    return out.shape == (3, 5) and torch.allclose(out, nn.functional.linear(x, w, b), atol=1e-5)


def available() -> bool:
    """oneDNN's linear kernel can be used: fast paths on and the private op present and working."""
    return fast_paths() and _probe()


def _mm_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T through oneDNN (``_linear_pointwise`` is oneDNN's x @ W.T)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        gx = _mm_t(g, w.t()) if need_x else None        # g @ W
        gw = _mm_t(g.t(), x.t()) if need_w else None     # g.T @ x
        gb = g.sum(0) if need_b and ctx.has_bias else None
        return gx, gw, gb


class BatchedLinearFn(torch.autograd.Function):
    """K stacked layers (``h`` [K, N, in], ``w`` [K, out, in], ``b`` [K, out]), one oneDNN call per
    lane: the very calls ``_LinearFn`` makes in a single run, so ``train.replicates`` lanes stay
    bit-for-bit equal to single runs."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, w)
        return torch.stack([torch.ops.mkldnn._linear_pointwise(h[k], w[k], b[k], "none", [], "")
                            for k in range(w.shape[0])])

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, w = ctx.saved_tensors
        k_lanes = range(w.shape[0])
        gh = torch.stack([_mm_t(g[k], w[k].t()) for k in k_lanes]) if ctx.needs_input_grad[0] else None
        gw = torch.stack([_mm_t(g[k].t(), h[k].t()) for k in k_lanes])
        return gh, gw, g.sum(1)


def _forward(mod: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``nn.Linear.forward`` through oneDNN (bound to the module as a method, so a deepcopy made
    inside the block computes with the copy's own weights)."""
    w = mod.weight
    if x.dtype != torch.float32 or w.dtype != torch.float32 or x.device.type != "cpu":
        return nn.functional.linear(x, w, mod.bias)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if torch.is_grad_enabled():
        out = _LinearFn.apply(x2, w, mod.bias)
    else:  # evaluation / inference timing: the bare kernel
        out = torch.ops.mkldnn._linear_pointwise(x2, w, mod.bias, "none", [], "")
    return out.reshape(*lead, out.shape[-1])


PROBE_SHAPE, PROBE_BATCH = (300, 784), 60  # LeNet-300-100's first layer at its batch: the common large layer


def faster_here() -> bool:
    """Whether oneDNN beats ATen on this machine for a large Linear layer's forward + backward at the training
    batch (``PROBE_SHAPE``, ``PROBE_BATCH``, the current thread count) by more than 10 %: measured once per
    machine and remembered (``timing.MEMORY``). oneDNN wins on AVX-512 CPUs (1.6x on a Zen 5) and loses on
    AVX2-only ones (0.8x on an AVX2 EPYC), so ``auto`` cannot assume it."""
    from . import timing

    key = f"linear_kernel {PROBE_SHAPE[0]}x{PROBE_SHAPE[1]} b{PROBE_BATCH} t{torch.get_num_threads()}"
    known = timing.MEMORY.get(key)
    if known is not None and known.get("choice") in ("onednn", "aten"):
        return known["choice"] == "onednn"
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(*PROBE_SHAPE, generator=gen).requires_grad_()
    b = torch.randn(PROBE_SHAPE[0], generator=gen).requires_grad_()
    x = torch.randn(PROBE_BATCH, PROBE_SHAPE[1], generator=gen)
    gy = torch.randn(PROBE_BATCH, PROBE_SHAPE[0], generator=gen)
    with torch.enable_grad():
        secs = timing.median_s({"onednn": lambda: torch.autograd.grad(_LinearFn.apply(x, w, b), [w, b], gy),
                                "aten": lambda: torch.autograd.grad(nn.functional.linear(x, w, b), [w, b], gy)})
    choice = "onednn" if secs["onednn"] < 0.9 * secs["aten"] else "aten"
    timing.MEMORY.put(key, {"choice": choice, "us": {k: round(v * 1e6, 1) for k, v in secs.items()}})
    return choice == "onednn"


def resolve(kind: str, device: torch.device, compiled: bool) -> bool:
    """Whether ``train.linear_kernel`` = ``kind`` means oneDNN here (``auto``: on CPU when available, not under
    torch.compile, which picks its own kernels, and only where it measures faster, ``faster_here``; never with
    ``SPARSE_RUN_SAFE_TORCH``)."""
    if kind == "aten" or not fast_paths():  # SPARSE_RUN_SAFE_TORCH: ATen whatever was asked
        return False
    ok = device.type == "cpu" and available() and not compiled
    if kind == "onednn" and not ok:
        raise ConfigError("train.linear_kernel", "onednn needs a CPU device, a PyTorch build with oneDNN and "
                          "train.compile=false; use auto or aten")
    return ok and (kind == "onednn" or faster_here())


def patch(mod: nn.Linear) -> None:
    """Send this layer through oneDNN from now on (an instance ``forward``; ``del mod.forward`` undoes it)."""
    mod.forward = types.MethodType(_forward, mod)


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (float32, CPU) through oneDNN."""
    return _mm_t(a, b.t())


@contextmanager
def use_onednn(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, the model's plain ``nn.Linear`` layers of at least ``MIN_WEIGHTS`` weights
    compute through oneDNN."""
    patched = [m for m in model.modules() if type(m) is nn.Linear and "forward" not in m.__dict__
               and m.weight.numel() >= MIN_WEIGHTS] if enabled else []
    for m in patched:
        patch(m)
    try:
        yield
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)
