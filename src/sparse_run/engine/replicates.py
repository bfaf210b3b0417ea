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

Slightly over 400 lines: the lock-step loop mirrors ``train.train`` step for step and stays in one piece until
the two loops become one (issue 13, item 4).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import onednn
from sparse_run.data.spec import DataBundle
from sparse_run.sparsity.masks import MaskSet
from .train import (Diverged, LeanStep, StepHook, TrainResult, _progress, check_chance, make_lr_schedule,
                    make_optimizer, zero_pruned_state)
from sparse_run.config.errors import ConfigError

# Optimizers whose update of an element depends only on that element's own history: stacking
# K lanes into one tensor then changes nothing. (LARS / LAMB-style layer norms would not be.)
ELEMENTWISE_OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class Lane:
    """One replicate: what ``train()`` takes per seed, minus the shared data and config."""

    model: nn.Module
    masks: MaskSet
    seed: int
    desc: str = "train"
    hooks: list[StepHook] | None = None
    on_eval: Callable[[dict[str, float]], None] | None = None
    checkpoint: Callable[[dict[str, Any]], None] | None = None
    resume: dict[str, Any] | None = None
    capture: tuple[int, Callable[[dict[str, Any]], None]] | None = None


def check_config(tcfg: Any) -> None:
    """Reject settings the vectorised trainer cannot reproduce exactly (one-line errors)."""
    opt = tcfg.get("optimizer")
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

    if type(model) is not MLP:
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
    """The K lanes' parameters and masks stacked along a leading dimension, and their optimizer."""

    def __init__(self, lanes: Sequence[Lane], names: list[str], tcfg: Any, steps: int):
        self.lanes, self.names, self.k = lanes, names, len(lanes)
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
            torch._foreach_mul_([self.params[n].detach() for n in self.masked], self.fmasks)

    @torch.no_grad()
    def mask_grads(self) -> None:
        grads = [self.params[n].grad for n in self.masked]
        if grads and all(g is not None for g in grads):
            torch._foreach_mul_(grads, self.fmasks)

    def release(self) -> None:
        """Give every lane's parameters their own storage again (no views into the stack)."""
        for k, own in enumerate(self._own):
            for n, p in own.items():
                p.data = self.params[n].detach()[k].clone()
                p.grad = None

    # -- the optimizer: one over every lane's own parameters; state per lane in train()'s format
    def step(self) -> None:
        """Hand each lane's parameters their slice of the stacked gradient, then one optimizer step.

        The optimizer holds the lanes' own parameters (views into the stack), not the stacked
        tensors: its multi-tensor kernels still run once per step over all K x P tensors, but each
        tensor is updated exactly as in a single run (a fused kernel's vector / tail split depends
        on the tensor's length, so a stacked tensor would round differently in its last bits).
        """
        for n, own in zip(self.names, self._by_name):
            grads = self.params[n].grad.unbind(0)
            for p, g in zip(own, grads):
                p.grad = g
        self._step()

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None
        for own in self._by_name:
            for p in own:
                p.grad = None

    def lane_optimizer_state(self, k: int) -> dict[str, Any]:
        """Lane ``k``'s optimizer state in the format ``train()`` saves (``Optimizer.state_dict``)."""
        sd = self.opt.state_dict()
        n_p = len(self.names)
        state = {i: {key: v.clone() if torch.is_tensor(v) else v for key, v in sd["state"][k * n_p + i].items()}
                 for i in range(n_p) if k * n_p + i in sd["state"]}
        return {"state": state, "param_groups": [{**g, "params": list(range(n_p))} for g in sd["param_groups"]]}

    def load_lane_optimizer_states(self, states: list[dict[str, Any]]) -> None:
        n_p = len(self.names)
        merged = {k * n_p + i: {key: v.clone() if torch.is_tensor(v) else v for key, v in s.items()}
                  for k, st in enumerate(states) for i, s in st["state"].items()}
        groups = [{**g, "params": list(range(self.k * n_p))} for g in states[0]["param_groups"]]
        self.opt.load_state_dict({"state": merged, "param_groups": groups})


def train_replicates(lanes: Sequence[Lane], data: DataBundle, tcfg: Any, *, steps: int, eval_every: int,
                     desc: str = "train") -> list[TrainResult]:
    """Train every lane for ``steps`` iterations in one vectorised pass; one ``TrainResult`` per lane,
    equal (within floating-point tolerance) to what ``train()`` returns for that lane's seed."""
    check_config(tcfg)
    names = _check_lanes(lanes)
    device = data.train_x.device
    batch, n = int(tcfg.batch_size), data.train_x.shape[0]
    if batch > n:
        raise ConfigError("train.batch_size", f"got {batch}; must be <= the training set size ({n})")
    k_lanes = len(lanes)
    per_epoch = n // batch
    gens = [torch.Generator().manual_seed(int(l.seed)) for l in lanes]
    histories: list[list[dict[str, float]]] = [[] for _ in lanes]
    orders = torch.empty(0, dtype=torch.long)
    cursor, start, wall0 = per_epoch, 0, 0.0
    loss_sum = torch.zeros(k_lanes, device=device)
    resumed = [l.resume for l in lanes]
    if all(r is not None for r in resumed):
        for l, r in zip(lanes, resumed):
            l.model.load_state_dict(r["model"])
            l.masks.load_state_dict(r["masks"])
        cursors = {int(r["cursor"]) for r in resumed}
        if len(cursors) > 1:
            raise ValueError("replicates must resume at the same position of their epoch")
        cursor, start = cursors.pop(), int(resumed[0]["step"])
        for g, r in zip(gens, resumed):
            g.set_state(r["generator"])
        orders = torch.stack([r["order"].to(device) for r in resumed]) if cursor < per_epoch else orders
        histories = [list(r["history"]) for r in resumed]
        wall0 = max(float(r["wall_s"]) for r in resumed)
        loss_sum = torch.stack([r["loss_sum"].to(device) for r in resumed])
    elif any(r is not None for r in resumed):
        raise ValueError("either every replicate resumes or none does")
    for l in lanes:
        l.masks.apply_()
    st = _Stack(lanes, names, tcfg, steps)
    if resumed[0] is not None:
        st.load_lane_optimizer_states([r["optimizer"] for r in resumed])
        for l in lanes:
            zero_pruned_state(st.opt, l.masks)
        st.sched.load_state_dict(resumed[0]["scheduler"])
    base = lanes[0].model
    fast = onednn.resolve(str(tcfg.get("linear_kernel", "auto")), device, bool(tcfg.get("compile")))
    fwd = batched_forward(base, fast)
    train_fwd = torch.compile(fwd) if tcfg.get("compile") else fwd  # evaluation stays eager, as in train()
    constant_lr = tcfg.get("lr_schedule", "constant") == "constant" and not int(tcfg.get("warmup_steps", 0))
    every = int(tcfg.get("checkpoint_every") or 0)
    has_hooks = any(l.hooks for l in lanes)
    base.train()
    t0 = time.perf_counter()
    bar = _progress(steps, f"{desc} x{k_lanes}", start)
    since_eval = start % eval_every if eval_every else 0

    def state(k: int, done: int) -> dict[str, Any]:
        lane = lanes[k]
        return {"model": {key: v.detach().clone() for key, v in lane.model.state_dict().items()},
                "masks": lane.masks.state_dict(), "optimizer": st.lane_optimizer_state(k),
                "scheduler": st.sched.state_dict(), "generator": gens[k].get_state(),
                "order": orders[k].clone() if orders.numel() else torch.empty(0, dtype=torch.long),
                "cursor": cursor, "step": done, "history": list(histories[k]),
                "loss_sum": loss_sum[k].detach().clone(), "wall_s": wall0 + time.perf_counter() - t0}

    def captures(done: int) -> None:
        for k, lane in enumerate(lanes):
            if lane.capture and lane.capture[0] == done:
                lane.capture[1](state(k, done))

    try:
        captures(start)
        for step in range(start, steps):
            if cursor >= per_epoch:
                orders = torch.stack([torch.randperm(n, generator=g)[: per_epoch * batch].view(per_epoch, batch)
                                      for g in gens]).to(device)
                cursor = 0
            idx = orders[:, cursor]  # (K, batch): each lane's own batch
            cursor += 1
            xb = data.train_x[idx]  # (K, batch, ...)
            if getattr(data, "augment", None) is not None:  # as train(): each lane's batch with its own seed
                xb = torch.stack([data.augment(xb[k], lane.seed, step) for k, lane in enumerate(lanes)])
            out = train_fwd(st.params, xb, False)
            target = data.train_y[idx]
            losses = F.cross_entropy(out.flatten(0, 1), target.flatten(), reduction="none")
            st.zero_grad()
            losses.view(k_lanes, batch).mean(1).sum().backward()  # lane k's gradient: d(its mean loss)
            st.mask_grads()
            st.step()
            if has_hooks:  # as train(): re-mask weights only when a hook may change the masks
                st.apply_masks()
            if not constant_lr:  # as train(): a constant schedule's step is skipped
                st.sched.step()
            with torch.no_grad():  # the reported loss, reduced exactly as train() reduces it
                loss_sum += torch.stack([F.cross_entropy(out[k].detach(), target[k]) for k in range(k_lanes)])
            since_eval += 1
            done = step + 1
            if has_hooks:
                for lane in lanes:
                    for hook in lane.hooks or ():
                        hook(done, lane.model, lane.masks)
                st.refresh_masks()
            if done % eval_every == 0 or done == steps:
                records = _eval_records(fwd, st.params, base, data, done, loss_sum / since_eval,
                                        torch.stack([l.masks.stray_weights() for l in lanes]))
                loss_sum.zero_()
                since_eval = 0
                for lane, hist, rec in zip(lanes, histories, records):
                    hist.append(rec)
                    if lane.on_eval:
                        lane.on_eval(rec)
                bar.set_postfix(val_acc=f"{sum(r['val_acc'] for r in records) / k_lanes:.4f}", refresh=False)
                bar.update(done - bar.n)
                bad = [(lane.seed, r) for lane, r in zip(lanes, records)
                       if not (math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]))]
                if bad:
                    seed, rec = bad[0]
                    raise Diverged(f"loss became {rec['train_loss']} at step {done} ({desc}, seed {seed}); "
                                   "lower train.lr or check the data")
            captures(done)
            if every and done % every == 0 and done < steps:
                for k, lane in enumerate(lanes):
                    if lane.checkpoint:
                        lane.checkpoint(state(k, done))
    finally:
        bar.close()
        st.release()
    wall = wall0 + time.perf_counter() - t0
    results = []
    for lane, hist in zip(lanes, histories):
        best = min(hist, key=lambda r: r["val_loss"])
        results.append(check_chance(TrainResult(history=hist, early_stop_step=int(best["step"]),
                                                test_acc_at_early_stop=best["test_acc"],
                                                final_test_acc=hist[-1]["test_acc"], final_val_acc=hist[-1]["val_acc"],
                                                wall_s=wall, steps=steps, extra={"replicates": k_lanes}),
                                    data, tcfg, f"{desc} (seed {lane.seed})"))
    return results


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


def _eval_records(fwd: Forward, params: dict[str, torch.Tensor], module: nn.Module, data: DataBundle, step: int,
                  train_loss: torch.Tensor, stray: torch.Tensor) -> list[dict[str, float]]:
    detached = {n: p.detach() for n, p in params.items()}
    module.eval()  # the vmap path runs the module itself (dropout / norm layers see eval mode)
    try:
        val_loss, val_acc = _evaluate(fwd, detached, data.val_x, data.val_y)
        _, test_acc = _evaluate(fwd, detached, data.test_x, data.test_y)
    finally:
        module.train()
    rows = torch.stack([train_loss, val_loss, val_acc, test_acc, stray.float()], 1).tolist()  # the one host sync
    if any(r[4] for r in rows):
        raise RuntimeError(f"pruned weights are nonzero at step {step} (per replicate: {[int(r[4]) for r in rows]}): "
                           "mask enforcement is broken")
    return [{"step": step, "train_loss": r[0], "val_loss": r[1], "val_acc": r[2], "test_acc": r[3]} for r in rows]
