"""Which kernel computes each masked ``nn.Linear`` while training (``train.sparse_kernel``).

A masked layer can run dense (the dense product with zeros in it; ATen or oneDNN as ``train.linear_kernel``
says) or sparse (``engine.sparse_linear``: ``csr``, stock torch; ``cpp``, the kernel compiled on this host).
Which is faster depends on the shape, the density, the batch, the thread count and the CPU's instruction set,
so under ``auto`` it is measured, not assumed: the first training step of each arm times the candidates
forward + backward on that layer's real input (interleaved rounds, medians), and the first evaluation times them
forward only on the evaluation batch. A sparse kernel is chosen only when it takes under ``MARGIN`` of the dense
time, so a near tie stays dense. A mask change (a new IMP arm, a gradual-pruning step, a dynamic-sparse-training
swap) rebuilds the layer's plan; it is measured again when the density moved by more than ``REMEASURE``.

Choices are remembered per machine (``Memory``: a JSON file keyed by shape, density, batch, threads and phase,
valid for one CPU model, torch version and kernel build), so the same command on the same machine computes the
same way every time and measures only once; they are kept in the loop's checkpoints so a resumed arm computes
exactly as the interrupted one did, and are recorded in the summary row (``kernels``). ``dense``, ``csr`` and ``cpp`` force one kernel for every masked layer
(all-ones masks always stay dense). Sparse kernels run on CPU float32 in eager mode, in single runs: elsewhere
``auto`` means dense and a forced kernel is a configuration error.
"""
from __future__ import annotations

import dataclasses
import types
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from sparse_run.config.errors import ConfigError
from sparse_run.sparsity.masks import MaskSet

from . import onednn
from . import sparse_linear as sl
from .timing import MEMORY, Memory, median_s

KINDS = ("auto", "dense", "csr", "cpp")
MAX_DENSITY = 0.35   # auto measures sparse candidates only below this density (the crossover is far lower)
MARGIN = 0.9         # a sparse kernel must take < 90 % of the dense time to be chosen
REMEASURE = 0.1      # a relative density change beyond this re-measures the layer


def sparse_ok(device: torch.device, compiled: bool, replicates: int) -> bool:
    """Sparse kernels can run here: CPU, eager, one lane."""
    return device.type == "cpu" and not compiled and replicates <= 1


def check(kind: str, device: torch.device, compiled: bool, replicates: int = 1) -> None:
    """A forced sparse kernel where none can run is a one-line error (``auto`` quietly stays dense)."""
    if kind in ("csr", "cpp") and not sparse_ok(device, compiled, replicates):
        raise ConfigError("train.sparse_kernel", f"{kind} runs on CPU, without train.compile and with "
                                                 "train.replicates = 1; use auto or dense")
    if kind == "cpp" and sl.cpp_module() is None:
        raise ConfigError("train.sparse_kernel", f"cpp: the C++ kernel is {sl.cpp_status()} on this machine; use "
                                                 "auto or csr")


def _sparse_fns() -> dict[str, Callable[..., torch.Tensor]]:
    """``auto``'s sparse candidate: the C++ kernel where it builds (it reads the weights in place and beat the
    stock CSR path at every shape and density benchmarked, ``scripts/bench_sparse.py``), else stock CSR."""
    if sl.cpp_module() is not None:
        return {"cpp": sl.linear_cpp}
    return {"csr": sl.linear}


def _optimizer_work(n: int, masked: bool) -> Callable[[], None]:
    """One fused Adam step over ``n`` scratch weights (and, ``masked``, the gradient and weight mask multiplies a
    dense masked layer pays each step): the per-step optimizer cost of a layer trained dense or packed. A no-op
    where the private fused kernel is missing (``train.LeanStep`` then runs the public step for both)."""
    if not hasattr(torch, "_fused_adam_"):
        return lambda: None
    p, g, m, v = (torch.zeros(n) for _ in range(4))
    step, mask = torch.zeros(()), torch.ones(n)

    def work() -> None:
        if masked:
            g.mul_(mask)
        try:
            torch._fused_adam_([p], [g], [m], [v], [], [step], amsgrad=False, lr=1e-3, beta1=0.9, beta2=0.999,
                               weight_decay=0.0, eps=1e-8, maximize=False, grad_scale=None, found_inf=None)
        except (TypeError, RuntimeError):  # the private kernel's signature changed
            pass
        if masked:
            p.mul_(mask)
    return work


class Layer:
    """One masked Linear: its plan, its choices (training, evaluation) and the times they rest on."""

    def __init__(self, name: str, module: nn.Linear, masks: MaskSet, mask_name: str, mode: str,
                 dense: Callable[[torch.Tensor], torch.Tensor], timer: Callable[..., dict[str, float]],
                 memory: Memory | None):
        self.name, self.module, self.masks, self.mask_name, self.mode = name, module, masks, mask_name, mode
        self.dense, self.timer, self.memory = dense, timer, memory
        self.version = -1
        self.plan: sl.Plan | None = None
        self.density = 1.0
        self.measured_at = -1.0  # the density the choices were measured at (auto)
        self.choice: dict[str, str] = {}      # "train" / "eval" -> kernel
        self.times: dict[str, dict[str, float]] = {}
        self.packed_grad = False  # training steps leave W's gradient packed in plan.grad (Kernels.pack_grads)

    def _refresh(self) -> None:
        if self.version == self.masks.version:
            return
        self.version = self.masks.version
        mask = self.masks.masks[self.mask_name]
        if self.plan is not None and self.plan.values is not None:  # the optimizer held the kept weights packed
            self.plan.release(self.module.weight)
            with torch.no_grad():
                self.module.weight.mul_(mask)  # the new mask holds whatever pruned them meanwhile
        self.density = float(mask.float().mean())
        self.plan = sl.Plan.of(mask) if self.density < 1.0 else None
        if self.mode == "auto":
            moved = abs(self.density - self.measured_at) > REMEASURE * max(self.measured_at, 1e-12)
            if moved or self.plan is None:
                self.choice, self.times = {}, {}
        else:
            self.choice = {} if self.plan is None else {"train": self.mode, "eval": self.mode}

    def kernel(self, phase: str, x: torch.Tensor) -> str:
        self._refresh()
        if self.plan is None:
            return "dense"
        if phase not in self.choice:
            self.choice[phase] = self._measure(phase, x) if self.density <= MAX_DENSITY else "dense"
            self.measured_at = self.density
        return self.choice[phase]

    def _measure(self, phase: str, x: torch.Tensor) -> str:
        assert self.plan is not None
        key = Memory.key(self.plan.shape, self.density, int(x.reshape(-1, x.shape[-1]).shape[0]),
                         phase + ("-packed" if phase == "train" and self.packed_grad else ""))
        known = self.memory.get(key) if self.memory is not None else None
        if known is not None and known.get("choice") in ("dense", "csr", "cpp"):
            self.times[phase] = dict(known.get("us", {}))
            return str(known["choice"])
        choice = self._time(phase, x)
        if self.memory is not None:
            self.memory.put(key, {"choice": choice, "us": self.times[phase]})
        return choice

    def _time(self, phase: str, x: torch.Tensor) -> str:
        mod, plan = self.module, self.plan
        w, b = mod.weight, mod.bias
        x = x.detach().reshape(-1, x.shape[-1]).requires_grad_(x.requires_grad)
        calls: dict[str, Callable[[], Any]] = {}
        fns: dict[str, Callable[..., torch.Tensor]] = {"dense": lambda x_, w_, b_, *_: self.dense(x_)}
        fns.update(_sparse_fns())
        if phase == "train":
            gy = torch.randn(x.shape[0], w.shape[0], generator=torch.Generator().manual_seed(0))
            wrt = [w, x] if x.requires_grad else [w]
            # the sparse kernel as the loop will run it (its gradient packed or not), into a scratch plan
            scratch = dataclasses.replace(plan, grad=None, values=None, dirty=False)
            # packed, a sparse layer's optimizer step covers its kept weights only, while a dense one's covers them
            # all and masks its gradient and weights: that difference is part of what the choice buys
            opt = {"dense": _optimizer_work(w.numel(), masked=True), "sparse": _optimizer_work(plan.nnz, masked=False)}

            def run(k: str, fn: Callable[..., torch.Tensor]) -> None:
                torch.autograd.grad(fn(x, w, b, scratch, self.packed_grad), wrt, gy, allow_unused=True)
                scratch.grad = None
                if self.packed_grad:
                    opt["dense" if k == "dense" else "sparse"]()

            for k, fn in fns.items():
                calls[k] = (lambda k=k, fn=fn: run(k, fn))
        else:
            for k, fn in fns.items():
                calls[k] = (lambda fn=fn: fn(x, w, b, plan))
        with torch.enable_grad() if phase == "train" else torch.no_grad():
            secs = self.timer(calls)
        self.times[phase] = {k: round(v * 1e6, 1) for k, v in secs.items()}
        best = min((k for k in secs if k != "dense"), key=secs.__getitem__)
        return best if secs[best] < MARGIN * secs["dense"] else "dense"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mod = self.module
        if x.dtype != torch.float32 or x.device.type != "cpu":
            return self.dense(x)
        phase = "train" if torch.is_grad_enabled() else "eval"
        kind = self.kernel(phase, x)
        if kind == "dense":
            return self.dense(x)
        return (sl.linear_cpp if kind == "cpp" else sl.linear)(x, mod.weight, mod.bias, self.plan,
                                                               self.packed_grad and phase == "train")


class Kernels:
    """The kernel of every masked Linear of one model for one arm (``use`` builds it)."""

    def __init__(self, layers: dict[str, Layer]):
        self.layers = layers

    def summary(self) -> str:
        """``dense`` when every layer computed dense, else ``fc1=cpp/csr fc2=dense/dense ...``: each masked
        layer's training / evaluation kernel (the last chosen)."""
        used = {k for lay in self.layers.values() for k in lay.choice.values()}
        if used <= {"dense"}:
            return "dense"
        return " ".join(f"{n}={lay.choice.get('train', 'dense')}/{lay.choice.get('eval', 'dense')}"
                        for n, lay in self.layers.items())

    def sparse_trained(self) -> dict[nn.Parameter, sl.Plan]:
        """The weights whose layer trains on a sparse kernel now, with their plans (kept flat positions
        ``pos``; the packed gradient ``grad`` under ``pack_grads``): their gradients are exactly zero off the
        mask by construction (no gradient mask needed), and an elementwise optimizer may step the kept
        positions alone."""
        out = {}
        for lay in self.layers.values():
            if lay.plan is not None and lay.version == lay.masks.version and lay.choice.get("train", "dense") != "dense":
                out[lay.module.weight] = lay.plan
        return out

    def pack_grads(self, on: bool = True) -> None:
        """Sparse-kernel layers leave their weight gradient in ``plan.grad`` (kept values, ``pos`` order) instead
        of a dense ``W.grad``: no dense gradient is written or read. Only for a loop whose optimizer step takes
        them (``train.LeanStep``) and which reads no dense gradient: no gradient clipping, hooks or
        data-parallel reduction."""
        for lay in self.layers.values():
            lay.packed_grad = on

    def state_dict(self) -> dict[str, Any]:
        return {n: {"choice": dict(lay.choice), "measured_at": lay.measured_at, "times": lay.times}
                for n, lay in self.layers.items()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Take a checkpoint's choices (a resumed arm computes as the interrupted one did)."""
        for n, st in (state or {}).items():
            lay = self.layers.get(n)
            if lay is not None and lay.mode == "auto":
                lay._refresh()
                lay.choice, lay.measured_at, lay.times = dict(st["choice"]), float(st["measured_at"]), dict(st["times"])


@contextmanager
def use(model: nn.Module, masks: MaskSet, mode: str, *, enabled: bool = True,
        timer: Callable[..., dict[str, float]] | None = None, memory: Memory | None | str = "default"
        ) -> Iterator[Kernels]:
    """Within the block, every masked ``nn.Linear`` of ``model`` computes through the kernel chosen for it
    (``mode``: ``KINDS``). Layers with their own ``forward`` (N:M STE / BDWP) other than oneDNN's are left alone.
    ``timer`` measures ``{name: call}`` → seconds per call (tests pass a mocked one); ``memory`` remembers the
    choices (None: measure every arm; default: ``MEMORY``)."""
    timer = timer or median_s
    mem = MEMORY if memory == "default" else memory
    assert mem is None or isinstance(mem, Memory)
    layers: dict[str, Layer] = {}
    if enabled and mode != "dense":
        by_param = {id(p): n for n, p in masks.params.items()}
        for name, mod in model.named_modules():
            if type(mod) is not nn.Linear or id(mod.weight) not in by_param:
                continue
            own = mod.__dict__.get("forward")
            if own is not None and getattr(own, "__func__", None) is not onednn._forward:
                continue
            dense = own if own is not None else types.MethodType(nn.Linear.forward, mod)
            layers[name] = Layer(name, mod, masks, by_param[id(mod.weight)], mode, dense, timer, mem)
    saved = {name: lay.module.__dict__.get("forward") for name, lay in layers.items()}
    for lay in layers.values():
        lay.module.forward = lay.forward
    try:
        yield Kernels(layers)
    finally:
        for name, lay in layers.items():
            if saved[name] is None:
                lay.module.__dict__.pop("forward", None)
            else:
                lay.module.forward = saved[name]

