"""K seeds of one config trained in one vectorised pass (``train.replicates=K``).

Each replicate ("lane") keeps everything a single ``train()`` call with its seed would have: its
own initial weights, its own data order (a ``torch.Generator`` seeded with the lane's seed, drawn
exactly as ``train()`` draws it), its own augmentation draws (``dataset.augment`` keyed by the lane's
seed and the step, as in ``train()``), its own masks and its own optimizer state. The weights of the K
lanes are stacked along a new leading dimension and trained together:

* the forward pass is one batched matmul per layer (``baddbmm``) for the MLPs of ``models/build.py``,
  and ``torch.func.vmap`` over ``functional_call`` for any other architecture;
* the loss is the sum of the K per-lane mean losses, so each lane's gradient is exactly the
  gradient of its own mean loss;
* the optimizers allowed here (Adam, AdamW, SGD with momentum / Nesterov / weight decay) are
  elementwise: one optimizer (one multi-tensor / fused kernel per step) over all lanes' own
  parameters, each handed its slice of the stacked gradient, updates every lane as a separate
  optimizer would; the lr schedule is shared because the lanes step in lock-step;
* masks are stacked too and enforced with the same two fused multiplies per step as ``train()``.

While a pass runs, each lane's ``nn.Module`` parameters are views into the stacked tensors, so
hooks (gradual / dynamic schedules) can read and prune a lane's model in place; at the end every
lane gets its own storage back. Checkpoints, ``resume`` and ``capture`` use ``train()``'s state
format per lane, so a lane can be resumed (or rewound) by either trainer.

The step loop itself is ``loop.run``, the one ``train()`` runs too; this module holds what differs
for K lanes: the ``_Stack`` strategy and the batched forward passes.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import onednn
from sparse_run.config.errors import ConfigError
from sparse_run.config.schema import train_config
from sparse_run.data.spec import DataBundle
from .loop import Lane, run
from .train import LeanStep, TrainResult, _progress, make_lr_schedule, make_optimizer, zero_pruned_state

__all__ = ["ELEMENTWISE_OPTIMIZERS", "Lane", "batched_forward", "check_config", "train_replicates"]

# Optimizers whose update of an element depends only on that element's own history: stacking
# K lanes into one tensor then changes nothing. (LARS / LAMB-style layer norms would not be.)
ELEMENTWISE_OPTIMIZERS = ("adam", "adamw", "sgd")


def check_config(tcfg: Any) -> None:
    """Reject settings the vectorised trainer cannot reproduce exactly (one-line errors)."""
    opt = train_config(tcfg).optimizer
    if opt not in ELEMENTWISE_OPTIMIZERS:
        raise ConfigError("train.optimizer", f"got {opt!r} with train.replicates > 1; "
                                             f"allowed: {', '.join(ELEMENTWISE_OPTIMIZERS)}")


def _check_lanes(lanes: Sequence[Lane]) -> list[str]:
    first = lanes[0].model
    shapes = [(n, p.shape) for n, p in first.named_parameters()]
    for lane in lanes[1:]:
        if type(lane.model) is not type(first) or [(n, p.shape) for n, p in lane.model.named_parameters()] != shapes:
            raise ValueError("replicates must share one architecture")
    if any(True for _ in first.buffers()):
        raise ConfigError("train.replicates", "models with buffers (e.g. batch norm) are not supported yet; "
                                              "allowed: 1 for this model")
    starts = {int(lane.resume["step"]) if lane.resume else 0 for lane in lanes}
    if len(starts) > 1:
        raise ValueError(f"replicates must start at the same step, got {sorted(starts)}")
    return [n for n, _ in shapes]


# -- batched forward passes ---------------------------------------------------------------------

Forward = Callable[[dict[str, torch.Tensor], torch.Tensor, bool], torch.Tensor]


class _BatchedLinear(torch.autograd.Function):
    """``h @ W.T + b`` for K stacked layers, with the backward pass laid out as ``addmm``'s.

    Autograd's own ``baddbmm`` backward computes the weight gradient as ``h.T @ g``; a single
    ``nn.Linear`` computes it as ``g.T @ h``. Same maths, different summation order: spelling
    the backward out keeps each lane bit-for-bit equal to a single run on CPU.
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, w)
        return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        h, w = ctx.saved_tensors
        gh = torch.bmm(g, w) if ctx.needs_input_grad[0] else None
        return gh, torch.bmm(g.transpose(1, 2), h), g.sum(1)


def _mlp_forward(model: nn.Module, fast: bool) -> Forward | None:
    """``baddbmm`` per layer for ``models.MLP`` (no vmap overhead: what small layers need); with
    ``fast``, the layers a single run sends through oneDNN go through it here too, lane by lane."""
    from sparse_run.models import MLP

    if type(model) is not MLP or not all(type(a) is nn.ReLU for a in model.acts):  # Top-k / GELU: the vmap path
        return None
    layers = [f"hidden.{i}" for i in range(len(model.hidden))] + ["out"]
    kernels = [onednn.BatchedLinearFn if fast and model.get_submodule(name).weight.numel() >= onednn.MIN_WEIGHTS
               else _BatchedLinear for name in layers]

    def fwd(params: dict[str, torch.Tensor], x: torch.Tensor, shared: bool) -> torch.Tensor:
        k = params[f"{layers[0]}.weight"].shape[0]
        h = x.flatten(1).expand(k, -1, -1) if shared else x.flatten(2)
        for i, (name, kernel) in enumerate(zip(layers, kernels)):
            h = kernel.apply(h, params[f"{name}.weight"], params[f"{name}.bias"])
            if i < len(layers) - 1:
                h = torch.relu(h)
        return h

    return fwd


def _vmap_forward(model: nn.Module) -> Forward:
    """Any architecture: ``vmap`` over ``functional_call`` with the lanes' stacked parameters."""
    from torch.func import functional_call, vmap

    def one(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (x,))

    lane_x, shared_x = vmap(one, in_dims=(0, 0)), vmap(one, in_dims=(0, None))

    def fwd(params: dict[str, torch.Tensor], x: torch.Tensor, shared: bool) -> torch.Tensor:
        return (shared_x if shared else lane_x)(params, x)

    return fwd


def batched_forward(model: nn.Module, fast: bool = False) -> Forward:
    """The lanes' forward pass. ``fast`` (``train.linear_kernel`` resolved to oneDNN) applies to MLPs;
    other architectures run ATen's kernels under ``vmap`` (equal to single runs with
    ``train.linear_kernel=aten``)."""
    return _mlp_forward(model, fast) or _vmap_forward(model)


# -- the vectorised trainer ---------------------------------------------------------------------

class _Stack:
    """``loop.Strategy`` for K lanes: their parameters and masks stacked along a leading dimension,
    the batched forward pass, and one optimizer over every lane's own parameters."""

    def __init__(self, lanes: Sequence[Lane], names: list[str], tcfg: Any, steps: int, fast: bool = False):
        self.lanes, self.names, self.k = lanes, names, len(lanes)
        self.base = lanes[0].model
        self.fwd = batched_forward(self.base, fast)
        self.train_fwd = torch.compile(self.fwd) if tcfg.compile else self.fwd  # evaluation stays eager
        self._handed = False
        self.params = {n: torch.stack([dict(l.model.named_parameters())[n].detach() for l in lanes]).requires_grad_()
                       for n in names}
        self._own = [dict(l.model.named_parameters()) for l in lanes]
        for k, own in enumerate(self._own):  # lane modules see the stacked values live
            for n, p in own.items():
                p.data = self.params[n].detach()[k]
        self.masked = list(lanes[0].masks.names())
        self.mask_keys: list[int] = []
        self.fmasks: list[torch.Tensor] = []
        self.refresh_masks(force=True)
        # lane-major, each lane in named_parameters order: lane k's i-th tensor is index k * P + i
        self.opt = make_optimizer([p for own in self._own for p in own.values()], tcfg)
        self._step = LeanStep(self.opt)
        self._by_name = [[own[n] for own in self._own] for n in names]
        self.sched = make_lr_schedule(self.opt, tcfg, steps)
        self.base.train()

    def forward_loss(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The sum of the lanes' mean losses (so lane k's gradient is d(its mean loss)), and each mean
        loss reduced exactly as ``train()`` reduces it, for the record."""
        out = self.train_fwd(self.params, xb, False)
        losses = F.cross_entropy(out.flatten(0, 1), yb.flatten(), reduction="none")
        with torch.no_grad():
            per_lane = torch.stack([F.cross_entropy(out[k].detach(), yb[k]) for k in range(self.k)])
        return losses.view(self.k, -1).mean(1).sum(), per_lane

    def after_hooks(self) -> None:
        self.refresh_masks()

    def refresh_masks(self, force: bool = False) -> None:
        """Restack the masks if any lane replaced its own (``MaskSet.set`` in a hook)."""
        keys = [id(l.masks.masks) for l in self.lanes]
        if force or keys != self.mask_keys:
            per_lane = [dict(zip(l.masks.names(), l.masks._float_masks())) for l in self.lanes]
            self.fmasks = [torch.stack([m[n] for m in per_lane]) for n in self.masked]
            self.mask_keys = keys

    @torch.no_grad()
    def apply_masks(self) -> None:
        if self.masked:
            _mul_all([self.params[n].detach() for n in self.masked], self.fmasks)

    @torch.no_grad()
    def mask_grads(self) -> None:
        grads = [self.params[n].grad for n in self.masked]
        if grads and all(g is not None for g in grads):
            _mul_all(grads, self.fmasks)

    def release(self) -> None:
        """Give every lane's parameters their own storage again (no views into the stack)."""
        for k, own in enumerate(self._own):
            for n, p in own.items():
                p.data = self.params[n].detach()[k].clone()
                p.grad = None

    # -- the optimizer: one over every lane's own parameters; state per lane in train()'s format
    def _hand_grads(self) -> None:
        """Give each lane's parameters their slice (a view) of the stacked gradient."""
        if not self._handed:
            for n, own in zip(self.names, self._by_name):
                for p, g in zip(own, self.params[n].grad.unbind(0)):
                    p.grad = g
            self._handed = True

    def clip(self, max_norm: float) -> None:
        """Clip each lane's global gradient norm on its own, as ``train()`` clips a single run."""
        self._hand_grads()
        for own in self._own:
            torch.nn.utils.clip_grad_norm_([p for p in own.values() if p.requires_grad], max_norm, foreach=True)

    def step(self) -> None:
        """Hand each lane's parameters their slice of the stacked gradient, then one optimizer step.

        The optimizer holds the lanes' own parameters (views into the stack), not the stacked
        tensors: its multi-tensor kernels still run once per step over all K x P tensors, but each
        tensor is updated exactly as in a single run (a fused kernel's vector / tail split depends
        on the tensor's length, so a stacked tensor would round differently in its last bits).
        """
        self._hand_grads()
        self._step()

    def zero_grad(self) -> None:
        self._handed = False
        for p in self.params.values():
            p.grad = None
        for own in self._by_name:
            for p in own:
                p.grad = None

    def evaluate(self, data: DataBundle) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        detached = {n: p.detach() for n, p in self.params.items()}
        self.base.eval()  # the vmap path runs the module itself (dropout / norm layers see eval mode)
        try:
            val_loss, val_acc = _evaluate(self.fwd, detached, data.val_x, data.val_y)
            _, test_acc = _evaluate(self.fwd, detached, data.test_x, data.test_y)
        finally:
            self.base.train()
        return val_loss, val_acc, test_acc

    def lane_state(self, k: int) -> dict[str, Any]:
        lane = self.lanes[k]
        return {"model": {key: v.detach().clone() for key, v in lane.model.state_dict().items()},
                "masks": lane.masks.state_dict(), "optimizer": self.lane_optimizer_state(k),
                "scheduler": self.sched.state_dict()}

    def lane_optimizer_state(self, k: int) -> dict[str, Any]:
        """Lane ``k``'s optimizer state in the format ``train()`` saves (``Optimizer.state_dict``)."""
        sd = self.opt.state_dict()
        n_p = len(self.names)
        state = {i: {key: v.clone() if torch.is_tensor(v) else v for key, v in sd["state"][k * n_p + i].items()}
                 for i in range(n_p) if k * n_p + i in sd["state"]}
        return {"state": state, "param_groups": [{**g, "params": list(range(n_p))} for g in sd["param_groups"]]}

    def load_optimizer_states(self, states: list[dict[str, Any]]) -> None:
        n_p = len(self.names)
        merged = {k * n_p + i: {key: v.clone() if torch.is_tensor(v) else v for key, v in s.items()}
                  for k, st in enumerate(states) for i, s in st["state"].items()}
        groups = [{**g, "params": list(range(self.k * n_p))} for g in states[0]["param_groups"]]
        self.opt.load_state_dict({"state": merged, "param_groups": groups})


def train_replicates(lanes: Sequence[Lane], data: DataBundle, tcfg: Any, *, steps: int, eval_every: int,
                     desc: str = "train") -> list[TrainResult]:
    """Train every lane for ``steps`` iterations in one vectorised pass (``loop.run`` with a ``_Stack``);
    one ``TrainResult`` per lane, equal to what ``train()`` returns for that lane's seed."""
    tcfg = train_config(tcfg)
    check_config(tcfg)
    names = _check_lanes(lanes)
    fast = onednn.resolve(str(tcfg.linear_kernel), data.train_x.device, bool(tcfg.compile))
    start = int(lanes[0].resume["step"]) if lanes[0].resume else 0
    results = run(lanes, data, tcfg, lambda: _Stack(lanes, names, tcfg, steps, fast), steps=steps,
                  eval_every=eval_every, desc=desc, bar=_progress(steps, f"{desc} x{len(lanes)}", start),
                  zero_state=zero_pruned_state)
    for r in results:
        r.extra["kernels"] = "dense"  # lanes compute every layer dense (train.sparse_kernel: single runs)
    return results


def _mul_all(tensors: list[torch.Tensor], factors: list[torch.Tensor]) -> None:
    """``t *= f`` pairwise: one ``torch._foreach_mul_`` (private) when fast paths are on, else a loop."""
    if onednn.fast_paths() and hasattr(torch, "_foreach_mul_"):
        torch._foreach_mul_(tensors, factors)
    else:
        for t, f in zip(tensors, factors):
            t.mul_(f)


@torch.no_grad()
def _evaluate(fwd: Forward, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
              chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-lane mean loss and accuracy, shape (K,), summed per lane exactly as ``train.evaluate``."""
    k = next(iter(params.values())).shape[0]
    loss = torch.zeros(k, device=x.device)
    correct = torch.zeros(k, device=x.device)
    for i in range(0, x.shape[0], chunk):
        out = fwd(params, x[i:i + chunk], True)
        yy = y[i:i + chunk]
        loss += torch.stack([F.cross_entropy(out[j], yy, reduction="sum") for j in range(k)])
        correct += (out.argmax(2) == yy).sum(1)
    return loss / x.shape[0], correct / x.shape[0]
