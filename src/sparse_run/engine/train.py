"""Training one arm (config group ``train/``): the optimizer, the lr schedule, evaluation, and
``train()``, the single-run case of the one loop in ``loop.py``.

Lean by design: the data are tensors on the training device and batches are index slices; masks
are enforced with one fused multiply on the gradients per step (and one on the weights when a hook
may change the masks mid-run); a fused Adam step skips torch's per-call bookkeeping; the loss is
accumulated on the device and read back only at evaluation, the one host sync of the loop.
Fast paths that use private torch APIs check for them and fall back to public ones
(``onednn.fast_paths``; ``SPARSE_RUN_SAFE_TORCH=1`` turns them all off).
"""
from __future__ import annotations

import math
import sys
from typing import Any, Callable

import torch
from torch import nn

from . import distributed, kernels, onednn, tasks
from sparse_run.config.errors import choice
from sparse_run.config.schema import train_config
from sparse_run.data.spec import DataBundle
from sparse_run.sparsity.masks import MaskSet
from .loop import CHANCE_SIGMAS, Diverged, Lane, StepHook, TrainResult, chance_accuracy, check_chance, run

__all__ = ["CHANCE_SIGMAS", "Diverged", "LR_SCHEDULES", "LeanStep", "OPTIMIZERS", "StepHook", "TrainResult",
           "chance_accuracy", "check_chance", "evaluate", "make_lr_schedule", "make_optimizer", "train",
           "zero_pruned_state"]

OPTIMIZERS = ("adam", "sgd", "adamw")
LR_SCHEDULES = ("constant", "step", "cosine")


def make_optimizer(params: list[nn.Parameter], tcfg: Any) -> torch.optim.Optimizer:
    name = choice(tcfg.optimizer, "train.optimizer", OPTIMIZERS)
    tcfg = train_config(tcfg)
    lr, wd = float(tcfg.lr), float(tcfg.weight_decay)
    # Fused Adam: one pass per tensor. The default CPU path computes sqrt(exp_avg_sq) as its own
    # op, which on AMD EPYC runs ~8x slower on zeros, i.e. on every pruned weight (measured:
    # 2.0 ms vs 0.23 ms per step for a 300x784 layer at 20 % density).
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=fused)
    return torch.optim.SGD(params, lr=lr, momentum=float(tcfg.momentum), weight_decay=wd,
                           nesterov=bool(tcfg.nesterov))


class LeanStep:
    """``opt.step()`` without torch's per-call Python bookkeeping, for a fused Adam / AdamW.

    ``Adam.step`` rebuilds its parameter and state lists and regroups them by device on every
    call; for LeNet-300-100 on CPU that costs as much as the fused kernel itself (~60 us). Once
    every parameter has state, this calls the same kernel (``torch._fused_adam_`` /
    ``_fused_adamw_``) on lists built once, so updates are bit-identical. Anything else (SGD,
    several groups, amsgrad, a tensor lr, a missing gradient, state replaced by
    ``load_state_dict``) goes through ``opt.step()``, and so does everything when the private kernels
    are missing, reject their arguments, or ``onednn.fast_paths()`` is off.

    ``packed()`` names weights whose gradient is exactly zero off their mask and whose pruned entries carry
    no state (layers on a sparse kernel, masks fixed for the arm), with their ``sparse_linear.Plan``: Adam is
    elementwise and leaves such entries exactly as they are, so only the kept positions are stepped: the dense
    step's values up to the last bit (the fused kernel's vector body and scalar tail round differently, and
    packing moves entries between them), at a cost in the kept weights instead of all of them. Their Adam moments
    stay packed between steps (written back by ``sync``, which checkpoints call); their gradient is read from
    ``plan.grad`` when the layer left it packed (``Kernels.pack_grads``), else gathered from ``W.grad``.
    """

    def __init__(self, opt: torch.optim.Optimizer, packed: Callable[[], dict[nn.Parameter, Any]] | None = None):
        self.opt, self.packed = opt, packed
        group = opt.param_groups[0]
        self.params: list[nn.Parameter] = list(group["params"])
        self.fast = (isinstance(opt, torch.optim.Adam) and len(opt.param_groups) == 1 and bool(group.get("fused"))
                     and not (group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"])
                     and onednn.fast_paths() and hasattr(torch, "_fused_adam_") and hasattr(torch, "_fused_adamw_")
                     and len({(q.device, q.dtype) for q in self.params}) == 1)
        self._state: Any = None
        self._lists: tuple[list[torch.Tensor], ...] = ()
        self._steps = torch.zeros(0)
        self._pk: dict[nn.Parameter, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # q -> pos, moments
        self._own: dict[nn.Parameter, Any] = {}  # q -> the plan whose packed values are q's kept weights

    def _state_lists(self) -> tuple[list[torch.Tensor], ...] | None:
        if self._state is not self.opt.state:  # first call, or load_state_dict swapped the state
            if not all(q in self.opt.state and "step" in self.opt.state[q] for q in self.params):
                return None
            st = [self.opt.state[q] for q in self.params]
            # the per-parameter step counters become views of one tensor: one add per step, not one each
            self._steps = torch.stack([s["step"] for s in st])
            for i, s in enumerate(st):
                s["step"] = self._steps[i]
            self._lists = ([s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st], [s["step"] for s in st])
            self._state, self._pk = self.opt.state, {}
        return self._lists

    def _moments(self, q: nn.Parameter, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q``'s packed Adam moments at ``pos``, gathered when its mask (plan) changed."""
        got = self._pk.get(q)
        if got is None or got[0] is not pos:
            self._write_back(q)
            st = self.opt.state[q]
            got = (pos, st["exp_avg"].view(-1).index_select(0, pos), st["exp_avg_sq"].view(-1).index_select(0, pos))
            self._pk[q] = got
        return got

    def _write_back(self, q: nn.Parameter, keep: bool = False) -> None:
        got = self._pk.get(q) if keep else self._pk.pop(q, None)
        if got is not None and self._state is self.opt.state:
            st = self.opt.state[q]
            st["exp_avg"].view(-1).scatter_(0, got[0], got[1])
            st["exp_avg_sq"].view(-1).scatter_(0, got[0], got[2])

    def flush(self) -> None:
        """Bring the dense weights up to date with the packed ones (before anything reads them: evaluation)."""
        for q, plan in self._own.items():
            plan.flush(q)

    @torch.no_grad()
    def sync(self) -> None:
        """``flush``, and write the packed moments into the optimizer's state (before ``state_dict``, at the end)."""
        self.flush()
        for q in list(self._pk):
            self._write_back(q, keep=True)

    def unpack(self) -> None:
        """Back to dense tensors only (the public step is about to update them)."""
        self.sync()
        for q, plan in self._own.items():
            plan.release(q)
        self._own, self._pk = {}, {}

    @torch.no_grad()
    def __call__(self) -> None:
        group = self.opt.param_groups[0]
        packs = self.packed() if self.packed is not None else {}
        grads = [q.grad for q in self.params]
        lists = self._state_lists() if self.fast else None
        if (lists is None or isinstance(group["lr"], torch.Tensor) or getattr(self.opt, "grad_scale", None) is not None
                or any(g is None and getattr(packs.get(q), "grad", None) is None for q, g in zip(self.params, grads))):
            self.unpack()
            for q, plan in packs.items():  # the public step reads dense gradients
                if q.grad is None and plan.grad is not None:
                    q.grad = torch.zeros_like(q).view(-1).scatter_(0, plan.pos, plan.grad).view_as(q)
                plan.grad = None
            self.opt.step()
            return
        exp_avgs, exp_avg_sqs, steps = (list(t) for t in lists)
        params: list[torch.Tensor] = list(self.params)
        for q in [q for q in self._own if packs.get(q) is not self._own[q]]:  # back on a dense kernel, or a new plan
            self._own.pop(q).release(q)
        for q in [q for q in self._pk if q not in packs]:
            self._write_back(q)
        for i, q in enumerate(self.params):
            plan = packs.get(q)
            if plan is not None:  # sparse-kernel layers: only the kept positions (the others' update is exactly zero)
                _, exp_avgs[i], exp_avg_sqs[i] = self._moments(q, plan.pos)
                if plan.values is None:  # from now on the kernels read the kept weights from here
                    plan.values = q.detach().view(-1).index_select(0, plan.pos)
                self._own[q] = plan
                params[i] = plan.values
                grads[i] = plan.grad if grads[i] is None else grads[i].view(-1).index_select(0, plan.pos)
        self._steps.add_(1)
        decoupled = group.get("decoupled_weight_decay", isinstance(self.opt, torch.optim.AdamW))
        kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
        beta1, beta2 = group["betas"]
        try:
            kernel(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                   beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                   maximize=False, grad_scale=None, found_inf=None)
        except (TypeError, RuntimeError):  # the private kernel's signature changed: argument parsing
            self._steps.sub_(1)            # fails before any update, so the public step takes over
            self.fast = False
            self.__call__()
            return
        for plan in packs.values():
            plan.dirty, plan.grad = True, None

    def zero_grad(self) -> None:
        """``opt.zero_grad(set_to_none=True)`` for the single group, without the wrapper's cost; packed gradients
        are dropped too."""
        if len(self.opt.param_groups) == 1:
            for q in self.params:
                q.grad = None
        else:
            self.opt.zero_grad(set_to_none=True)
        for plan in (self.packed() if self.packed is not None else {}).values():
            plan.grad = None


@torch.no_grad()
def zero_pruned_state(opt: torch.optim.Optimizer, masks: MaskSet) -> None:
    """Zero the optimizer state (momenta, Adam moments) of pruned weights.

    A start state captured under other masks (late rewinding, LR rewinding, fine-tuning from a
    dense checkpoint) carries state for weights pruned since; with it zeroed, masked gradients
    keep those weights at exactly zero. Every optimizer here is elementwise, so the surviving
    weights' updates do not change.
    """
    for _, p, m in masks:
        for v in opt.state.get(p, {}).values():
            if torch.is_tensor(v) and v.shape == p.shape:
                v.mul_(m)


def make_lr_schedule(opt: torch.optim.Optimizer, tcfg: Any, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step LR multiplier: linear warmup, then constant / step decay / cosine.

    A constant schedule without warmup is a ``ConstantLR`` of factor 1 whose ``step`` the loop
    skips, so the common case pays nothing per step.
    """
    tcfg = train_config(tcfg)
    kind = choice(tcfg.lr_schedule, "train.lr_schedule", LR_SCHEDULES)
    warmup = int(tcfg.warmup_steps)
    # milestones are fractions of the run so budgets that shorten training keep the same shape
    milestones = [int(f * steps) for f in (tcfg.milestones or [])]
    gamma = float(tcfg.gamma)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "step":
            return gamma ** sum(step >= m for m in milestones)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(1, steps)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy as 0-d device tensors (no host sync here): ``tasks.classify``."""
    return tasks.classify(model, x, y, chunk)


SHOW_PROGRESS = True  # the run's `progress` setting (execute.execute sets it); bars only on a terminal


def _progress(total: int, desc: str, start: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=desc, leave=False, dynamic_ncols=True,
                disable=not (SHOW_PROGRESS and sys.stderr.isatty()), mininterval=0.5)


def train(model: nn.Module, masks: MaskSet, data: DataBundle, tcfg: Any, *, steps: int, eval_every: int,
          seed: int, desc: str = "train", hooks: list[StepHook] | None = None,
          on_eval: Callable[[dict[str, float]], None] | None = None,
          checkpoint: Callable[[dict[str, Any]], None] | None = None,
          resume: dict[str, Any] | None = None,
          capture: tuple[int, Callable[[dict[str, Any]], None]] | None = None) -> TrainResult:
    """Train ``model`` under ``masks`` for ``steps`` iterations, evaluating every ``eval_every``.

    The data order depends only on ``seed`` (so arms of one run see the same batches). ``hooks``
    (``loop.StepHook``) run after every optimizer step; ``checkpoint`` receives the full loop state
    every ``train.checkpoint_every`` steps; passing that state back as ``resume`` continues
    bit-for-bit. ``capture=(k, fn)`` hands ``fn`` the same state at step ``k`` (late rewinding keeps
    it as the point survivors return to). On CPU, ``train.linear_kernel`` (default ``auto``) runs
    the ``nn.Linear`` layers through oneDNN (see ``onednn``) and ``train.sparse_kernel`` (default ``auto``) the
    masked ones through sparse kernels where that measures faster (see ``kernels``).
    """
    lane = Lane(model, masks, seed, desc, hooks, on_eval, checkpoint, resume, capture)
    tcfg = train_config(tcfg)
    device, compiled = data.train_x.device, bool(tcfg.compile)
    fast = onednn.resolve(str(tcfg.linear_kernel), device, compiled)
    kind = str(tcfg.sparse_kernel)
    kernels.check(kind, device, compiled)
    start = int(resume["step"]) if resume is not None else 0
    with onednn.use_onednn(model, fast), kernels.use(model, masks, kind,
                                                     enabled=kernels.sparse_ok(device, compiled, 1)) as kern:
        kern.load_state_dict(resume.get("kernels") if resume is not None else None)
        result = run([lane], data, tcfg, lambda: SingleModule(model, masks, tcfg, steps, tasks.for_data(data), kern,
                                                              packed=not hooks),
                     steps=steps, eval_every=eval_every, desc=desc, bar=_progress(steps, desc, start),
                     zero_state=zero_pruned_state)[0]
    result.extra["kernels"] = kern.summary()
    return result


class SingleModule:
    """``loop.Strategy`` for one lane: the plain module (``torch.compile``d if asked), its own
    optimizer stepped by ``LeanStep``, masks enforced by the ``MaskSet`` itself; the loss and the
    evaluation are the data's task (``tasks``: classification, or ranking for interactions)."""

    def __init__(self, model: nn.Module, masks: MaskSet, tcfg: Any, steps: int, task: Any = None,
                 kern: kernels.Kernels | None = None, packed: bool = False):
        self.model, self.masks, self.kern = model, masks, kern
        self.task = task or tasks.Classification()
        self.eval_extra: list[dict[str, torch.Tensor]] = [{}]
        self.opt = make_optimizer(list(model.parameters()), tcfg)
        # with fixed masks, sparse-kernel layers step their kept weights only and need no gradient mask
        self._packs = kern.sparse_trained if kern is not None and packed else (lambda: {})
        self._step = LeanStep(self.opt, self._packs)
        self._mg: tuple[Any, list[torch.Tensor], list[torch.Tensor]] = (None, [], [])
        self.sched = make_lr_schedule(self.opt, tcfg, steps)
        self.fwd = torch.compile(model) if tcfg.compile else model
        if distributed.current().active:  # gradients averaged over the ranks in backward
            self.fwd = distributed.wrap(model)
        self._clip_params = [q for q in model.parameters() if q.requires_grad] if tcfg.grad_clip else []
        if kern is not None and packed and not tcfg.grad_clip and not distributed.current().active:
            kern.pack_grads()  # nothing reads their dense gradient: LeanStep takes the kept values
        model.train()

    def forward_loss(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss to step on — the task's, plus the model's ``aux_loss()`` when it has one (an MoE's load
        balancing) — and the task loss alone, which is what ``train_loss`` records."""
        loss = self.task.loss(self.fwd(xb[0]), yb[0])
        aux = self.model.aux_loss() if hasattr(self.model, "aux_loss") else None
        return (loss if aux is None else loss + aux), loss.detach()

    def zero_grad(self) -> None:
        self._step.zero_grad()

    def _dense_pruned(self, packs: dict[nn.Parameter, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The pruned weights whose layer computes dense, with their float masks: only these need their
        gradient masked and their pruned entries re-zeroed (a sparse-kernel layer's are zero by construction)."""
        key = (self.masks.version, frozenset(id(q) for q in packs))
        if self._mg[0] != key:
            params, fmasks = self.masks._pruned()
            keep = [(q, m) for q, m in zip(params, fmasks) if q not in packs]
            self._mg = (key, [q for q, _ in keep], [m for _, m in keep])
        return self._mg[1], self._mg[2]

    def mask_grads(self) -> None:
        packs = self._packs()
        if not packs:
            self.masks.mask_grads_()
            return
        params, fmasks = self._dense_pruned(packs)
        grads = [(q.grad, m) for q, m in zip(params, fmasks) if q.grad is not None]
        if grads:
            torch._foreach_mul_([g for g, _ in grads], [m for _, m in grads])

    def clip(self, max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(self._clip_params, max_norm, foreach=True)

    def step(self) -> None:
        self._step()

    @torch.no_grad()
    def apply_masks(self) -> None:
        packs = self._packs()
        if not packs:
            self.masks.apply_()
            return
        params, fmasks = self._dense_pruned(packs)
        if params:
            torch._foreach_mul_(params, fmasks)

    def after_hooks(self) -> None:
        pass

    def evaluate(self, data: DataBundle) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._step.flush()
        val_loss, val_acc, test_acc, extra = self.task.evaluate(self.model, data)
        self.eval_extra = [extra]
        return val_loss.unsqueeze(0), val_acc.unsqueeze(0), test_acc.unsqueeze(0)

    def lane_state(self, k: int) -> dict[str, Any]:
        self._step.sync()
        return {"model": self.model.state_dict(), "masks": self.masks.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "kernels": self.kern.state_dict() if self.kern is not None else {}}

    def load_optimizer_states(self, states: list[dict[str, Any]]) -> None:
        self.opt.load_state_dict(states[0])

    def release(self) -> None:
        self._step.unpack()
