"""The training loop (config group ``train/``).

Lean by design: the data are tensors on the training device and batches are index slices; masks
are enforced with one fused multiply on the gradients per step (and one on the weights when a hook
may change the masks mid-run); a fused Adam step skips torch's per-call bookkeeping; the loss is
accumulated on the device and read back only at evaluation, the one host sync of the loop.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import onednn
from sparse_run.data.spec import DataBundle
from sparse_run.sparsity.masks import MaskSet
from sparse_run.config.errors import ConfigError, choice

OPTIMIZERS = ("adam", "sgd", "adamw")
LR_SCHEDULES = ("constant", "step", "cosine")


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    early_stop_step: int
    test_acc_at_early_stop: float
    final_test_acc: float
    final_val_acc: float
    wall_s: float
    steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"  # "at_chance": final test accuracy no better than a model that learned nothing


def make_optimizer(params: list[nn.Parameter], tcfg: Any) -> torch.optim.Optimizer:
    name = choice(tcfg.optimizer, "train.optimizer", OPTIMIZERS)
    lr, wd = float(tcfg.lr), float(tcfg.get("weight_decay", 0.0))
    # Fused Adam: one pass per tensor. The default CPU path computes sqrt(exp_avg_sq) as its own
    # op, which on AMD EPYC runs ~8x slower on zeros, i.e. on every pruned weight (measured:
    # 2.0 ms vs 0.23 ms per step for a 300x784 layer at 20 % density).
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=fused)
    return torch.optim.SGD(params, lr=lr, momentum=float(tcfg.get("momentum", 0.0)), weight_decay=wd,
                           nesterov=bool(tcfg.get("nesterov", False)))


class LeanStep:
    """``opt.step()`` without torch's per-call Python bookkeeping, for a fused Adam / AdamW.

    ``Adam.step`` rebuilds its parameter and state lists and regroups them by device on every
    call; for LeNet-300-100 on CPU that costs as much as the fused kernel itself (~60 us). Once
    every parameter has state, this calls the same kernel (``torch._fused_adam_`` /
    ``_fused_adamw_``) on lists built once, so updates are bit-identical. Anything else (SGD,
    several groups, amsgrad, a tensor lr, a missing gradient, state replaced by
    ``load_state_dict``) goes through ``opt.step()``.
    """

    def __init__(self, opt: torch.optim.Optimizer):
        self.opt = opt
        group = opt.param_groups[0]
        self.params: list[nn.Parameter] = list(group["params"])
        self.fast = (isinstance(opt, torch.optim.Adam) and len(opt.param_groups) == 1 and bool(group.get("fused"))
                     and not (group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"])
                     and hasattr(torch, "_fused_adam_") and len({(q.device, q.dtype) for q in self.params}) == 1)
        self._state: Any = None
        self._lists: tuple[list[torch.Tensor], ...] = ()
        self._steps = torch.zeros(0)

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
            self._state = self.opt.state
        return self._lists

    @torch.no_grad()
    def __call__(self) -> None:
        group = self.opt.param_groups[0]
        grads = [q.grad for q in self.params]
        lists = self._state_lists() if self.fast else None
        if (lists is None or isinstance(group["lr"], torch.Tensor) or any(g is None for g in grads)
                or getattr(self.opt, "grad_scale", None) is not None):
            self.opt.step()
            return
        exp_avgs, exp_avg_sqs, steps = lists
        self._steps.add_(1)
        kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
        beta1, beta2 = group["betas"]
        kernel(self.params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
               beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
               maximize=False, grad_scale=None, found_inf=None)

    def zero_grad(self) -> None:
        """``opt.zero_grad(set_to_none=True)`` for the single group, without the wrapper's cost."""
        if len(self.opt.param_groups) == 1:
            for q in self.params:
                q.grad = None
        else:
            self.opt.zero_grad(set_to_none=True)


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
    kind = choice(tcfg.get("lr_schedule", "constant"), "train.lr_schedule", LR_SCHEDULES)
    warmup = int(tcfg.get("warmup_steps", 0))
    # milestones are fractions of the run so budgets that shorten training keep the same shape
    milestones = [int(f * steps) for f in (tcfg.get("milestones") or [])]
    gamma = float(tcfg.get("gamma", 0.1))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "step":
            return gamma ** sum(step >= m for m in milestones)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(1, steps)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy as 0-d device tensors (no host sync here)."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    for i in range(0, x.shape[0], chunk):
        out = model(x[i:i + chunk])
        loss += F.cross_entropy(out, y[i:i + chunk], reduction="sum")
        correct += (out.argmax(1) == y[i:i + chunk]).sum()
    model.train(was_training)
    return loss / x.shape[0], correct / x.shape[0]


SHOW_PROGRESS = True  # the run's `progress` setting (execute.execute sets it); bars only on a terminal


def _progress(total: int, desc: str, start: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=desc, leave=False, dynamic_ncols=True,
                disable=not (SHOW_PROGRESS and sys.stderr.isatty()), mininterval=0.5)


StepHook = Callable[[int, nn.Module, MaskSet], None]


def train(model: nn.Module, masks: MaskSet, data: DataBundle, tcfg: Any, *, steps: int, eval_every: int,
          seed: int, desc: str = "train", hooks: list[StepHook] | None = None,
          on_eval: Callable[[dict[str, float]], None] | None = None,
          checkpoint: Callable[[dict[str, Any]], None] | None = None,
          resume: dict[str, Any] | None = None,
          capture: tuple[int, Callable[[dict[str, Any]], None]] | None = None) -> TrainResult:
    """Train ``model`` under ``masks`` for ``steps`` iterations, evaluating every ``eval_every``.

    The data order depends only on ``seed`` (so arms of one run see the same batches). ``hooks``
    run after every optimizer step (gradual / dynamic schedules update masks there); a hook with
    ``eval_metrics(step) -> dict`` adds to each evaluation record, and one with ``state_dict`` /
    ``load_state_dict`` is carried through checkpoints. ``checkpoint``
    receives the full loop state every ``train.checkpoint_every`` steps; passing that state back as
    ``resume`` continues bit-for-bit. ``capture=(k, fn)`` hands ``fn`` the same state at step ``k``
    (late rewinding keeps it as the point survivors return to). On CPU, ``train.linear_kernel``
    (default ``auto``) runs the ``nn.Linear`` layers through oneDNN (see ``onednn``).
    """
    fast = onednn.resolve(str(tcfg.get("linear_kernel", "auto")), data.train_x.device, bool(tcfg.get("compile")))
    with onednn.use_onednn(model, fast):
        return _train(model, masks, data, tcfg, steps=steps, eval_every=eval_every, seed=seed, desc=desc,
                      hooks=hooks, on_eval=on_eval, checkpoint=checkpoint, resume=resume, capture=capture)


def _train(model: nn.Module, masks: MaskSet, data: DataBundle, tcfg: Any, *, steps: int, eval_every: int,
           seed: int, desc: str, hooks: list[StepHook] | None, on_eval: Callable[[dict[str, float]], None] | None,
           checkpoint: Callable[[dict[str, Any]], None] | None, resume: dict[str, Any] | None,
           capture: tuple[int, Callable[[dict[str, Any]], None]] | None) -> TrainResult:
    device = data.train_x.device
    batch = int(tcfg.batch_size)
    n = data.train_x.shape[0]
    if batch > n:
        raise ConfigError("train.batch_size", f"got {batch}; must be <= the training set size ({n})")
    opt = make_optimizer(list(model.parameters()), tcfg)
    step_fn = LeanStep(opt)
    sched = make_lr_schedule(opt, tcfg, steps)
    constant_lr = tcfg.get("lr_schedule", "constant") == "constant" and not int(tcfg.get("warmup_steps", 0))
    gen = torch.Generator().manual_seed(seed)
    fwd = torch.compile(model) if tcfg.get("compile") else model
    history: list[dict[str, float]] = []
    per_epoch = n // batch
    order = torch.empty(0, dtype=torch.long)
    cursor, start, wall0 = per_epoch, 0, 0.0
    loss_sum = torch.zeros((), device=device)
    if resume is not None:
        model.load_state_dict(resume["model"])
        masks.load_state_dict(resume["masks"])
        opt.load_state_dict(resume["optimizer"])
        zero_pruned_state(opt, masks)
        sched.load_state_dict(resume["scheduler"])
        gen.set_state(resume["generator"])
        order, cursor, start = resume["order"], resume["cursor"], resume["step"]
        history, wall0 = list(resume["history"]), resume["wall_s"]
        loss_sum = resume["loss_sum"].to(device)
        for hook, hstate in zip(hooks or (), resume.get("hooks") or ()):
            if hstate is not None:  # stateful hooks (e.g. N:M SAD tracking) continue too
                hook.load_state_dict(hstate)
    masks.apply_()
    # Masked gradients keep pruned weights exactly zero under every optimizer here (their moments
    # and momenta stay zero, weight decay of zero is zero), so the weights need re-masking after a
    # step only when a hook may change the masks mid-run: a newly pruned weight still carries
    # optimizer state. Every evaluation checks the invariant either way.
    remask = bool(hooks)
    every = int(tcfg.get("checkpoint_every") or 0)
    clip = float(tcfg.get("grad_clip") or 0.0)  # max global gradient norm (0 / null: off)
    params = [q for q in model.parameters() if q.requires_grad] if clip else []
    model.train()
    t0 = time.perf_counter()
    bar = _progress(steps, desc, start)
    since_eval = start % eval_every if eval_every else 0
    def state(done: int) -> dict[str, Any]:
        return {"model": model.state_dict(), "masks": masks.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "generator": gen.get_state(), "order": order,
                "cursor": cursor, "step": done, "history": list(history), "loss_sum": loss_sum.detach().clone(),
                "wall_s": wall0 + time.perf_counter() - t0,
                "hooks": [h.state_dict() if hasattr(h, "state_dict") else None for h in hooks or ()]}

    if capture and capture[0] == start:
        capture[1](state(start))
    for step in range(start, steps):
        if cursor >= per_epoch:
            order = torch.randperm(n, generator=gen)[: per_epoch * batch].view(per_epoch, batch).to(device)
            cursor = 0
        idx = order[cursor]
        cursor += 1
        xb = data.train_x.index_select(0, idx)
        if getattr(data, "augment", None) is not None:  # dataset.augment: batched, on the device
            xb = data.augment(xb, seed, step)
        loss = F.cross_entropy(fwd(xb), data.train_y.index_select(0, idx))
        step_fn.zero_grad()
        loss.backward()
        masks.mask_grads_()
        if clip:  # after masking: pruned weights' (zero) gradients do not count towards the norm
            torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        step_fn()
        if remask:
            masks.apply_()
        if not constant_lr:
            sched.step()
        loss_sum += loss.detach()
        since_eval += 1
        for hook in hooks or ():
            hook(step + 1, model, masks)
        done = step + 1
        if done % eval_every == 0 or done == steps:
            record = _eval_record(model, masks, data, done, loss_sum / since_eval)
            for hook in hooks or ():  # hooks may add metrics to the record (N:M: sad, sad_cum)
                if hasattr(hook, "eval_metrics"):
                    record.update(hook.eval_metrics(done))
            loss_sum.zero_()
            since_eval = 0
            history.append(record)
            bar.set_postfix(val_acc=f"{record['val_acc']:.4f}", refresh=False)
            bar.update(done - bar.n)
            if on_eval:
                on_eval(record)
            if not math.isfinite(record["train_loss"]) or not math.isfinite(record["val_loss"]):
                bar.close()
                raise Diverged(f"loss became {record['train_loss']} at step {done} ({desc}); "
                               "lower train.lr or check the data")
        if capture and capture[0] == done:
            capture[1](state(done))
        if checkpoint and every and done % every == 0 and done < steps:
            checkpoint(state(done))
    bar.close()
    wall = wall0 + time.perf_counter() - t0
    best = min(history, key=lambda r: r["val_loss"])
    return check_chance(TrainResult(history=history, early_stop_step=int(best["step"]),
                                    test_acc_at_early_stop=best["test_acc"], final_test_acc=history[-1]["test_acc"],
                                    final_val_acc=history[-1]["val_acc"], wall_s=wall, steps=steps),
                        data, tcfg, desc)


CHANCE_SIGMAS = 3.0


def chance_accuracy(y: torch.Tensor) -> float:
    """The accuracy below which a model has learned nothing measurable on labels ``y``.

    A constant prediction scores the majority class's share p (1/num_classes on balanced data, the
    most any input-independent guess scores on average); a guess is a binomial proportion over n
    examples, so p plus three standard errors sqrt(p(1-p)/n) bounds what luck adds (one in ~700).
    MNIST's test set: p = 0.1135, n = 10,000 → 0.123; CIFAR-10's: 0.100 + 0.009 → 0.109.
    """
    n = y.numel()
    p = float(torch.bincount(y.flatten().long()).max()) / n
    return p + CHANCE_SIGMAS * math.sqrt(p * (1 - p) / n)


def check_chance(result: TrainResult, data: DataBundle, tcfg: Any, desc: str) -> TrainResult:
    """Flag an arm that ends at chance (diverged quietly, lr far too high, broken data): its status
    becomes ``at_chance`` and the console says so. ``train.chance_check=false`` turns this off
    (``budget=smoke`` does: its numbers mean nothing)."""
    if not tcfg.get("chance_check", True) or not data.test_y.numel():
        return result
    level = chance_accuracy(data.test_y)
    if result.final_test_acc <= level:
        result.status = "at_chance"
        print(f"sparse-run: warning: {desc} ended at chance (test accuracy {result.final_test_acc:.4f} <= "
              f"{level:.4f}, the majority class's share + {CHANCE_SIGMAS:g} standard errors); its row has "
              "status=at_chance: check train.lr and the data", file=sys.stderr)
    return result


def _eval_record(model: nn.Module, masks: MaskSet, data: DataBundle, step: int,
                 train_loss: torch.Tensor) -> dict[str, float]:
    val_loss, val_acc = evaluate(model, data.val_x, data.val_y)
    _, test_acc = evaluate(model, data.test_x, data.test_y)
    stray = masks.stray_weights()
    vals = torch.stack([train_loss, val_loss, val_acc, test_acc, stray.float()]).tolist()  # the one host sync
    if vals[4]:
        raise RuntimeError(f"{int(vals[4])} pruned weights are nonzero at step {step}: mask enforcement is broken")
    return {"step": step, "train_loss": vals[0], "val_loss": vals[1], "val_acc": vals[2], "test_acc": vals[3]}
