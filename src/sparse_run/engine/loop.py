"""The one training loop, for a single run (K = 1) and for K lock-stepped replicates ("lanes").

Everything a step does is written here once: each lane's data order from its own generator, the
batch gather, augmentation keyed by (lane seed, step), backward, gradient masking, clipping, the
optimizer step, re-masking when hooks may change masks, the lr schedule, hooks, evaluation cadence
and records, the divergence and chance checks, capture, checkpoints, resume, the progress bar and
wall time. How the parameters are held and the forward pass / optimizer step is done differs
between one plain module (``train.SingleModule``) and K stacked lanes (``replicates._Stack``);
that is a ``Strategy``. The loss is accumulated on the device and read back only at evaluation,
the loop's one host sync.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from sparse_run.config.errors import ConfigError
from sparse_run.data.spec import DataBundle
from sparse_run.sparsity.masks import MaskSet

from . import distributed, preempt


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


@runtime_checkable
class StepHook(Protocol):
    """Called after every optimizer step as ``hook(step, model, masks)`` (``step`` counts steps done);
    gradual / dynamic schedules update masks there (``MaskSet.set`` or in place).

    Optional, found by ``hasattr``: ``eval_metrics(step) -> dict`` adds to each evaluation record
    (N:M: ``sad``, ``sad_cum``); ``state_dict()`` / ``load_state_dict(state)`` carry the hook's own
    state through checkpoints, so a resumed run continues bit for bit; ``bind_optimizer(optimizer)`` is called
    once the optimizer exists (and holds any resumed state), for hooks that zero the state of weights
    they grow; ``before_step(step, model, masks) -> bool`` runs after the backward pass, while the
    gradients are still dense (``step`` counts steps done), and returning True skips this step's
    optimizer update (RigL's mask update replaces the step it happens on). Single runs only: a kind
    whose hooks need these is not a lock-step kind.
    """

    def __call__(self, step: int, model: nn.Module, masks: MaskSet) -> None: ...


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


class Strategy(Protocol):
    """How K lanes' parameters are held and stepped (built after resume has loaded models and masks)."""

    sched: torch.optim.lr_scheduler.LRScheduler

    def forward_loss(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to backpropagate, each lane's mean batch loss detached, shape (K,)) for batches [K, B, ...]."""
        ...

    def zero_grad(self) -> None: ...
    def mask_grads(self) -> None: ...
    def clip(self, max_norm: float) -> None: ...
    def step(self) -> None: ...
    def apply_masks(self) -> None: ...
    def after_hooks(self) -> None: ...
    def evaluate(self, data: DataBundle) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-lane validation loss, validation accuracy, test accuracy: device tensors of shape (K,)."""
        ...

    def lane_state(self, k: int) -> dict[str, Any]:
        """Lane ``k``'s model, masks, optimizer and scheduler state in ``train()``'s checkpoint format."""
        ...

    def load_optimizer_states(self, states: list[dict[str, Any]]) -> None: ...
    def release(self) -> None: ...


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


def chance_level(data: DataBundle) -> float:
    """What the test metric of a model that learned nothing reaches, at most: ``chance_accuracy`` for
    classification; for ranking data the Recall@K of a random ranking plus three standard errors."""
    from .tasks import Ranking, for_data

    task = for_data(data)
    return task.chance(data, CHANCE_SIGMAS) if isinstance(task, Ranking) else chance_accuracy(data.test_y)


def check_chance(result: TrainResult, data: DataBundle, tcfg: Any, desc: str) -> TrainResult:
    """Flag an arm that ends at chance (diverged quietly, lr far too high, broken data): its status
    becomes ``at_chance`` and the console says so. ``train.chance_check=false`` turns this off."""
    if not tcfg.chance_check or not data.test_y.numel():
        return result
    level = chance_level(data)
    if result.final_test_acc <= level:
        result.status = "at_chance"
        ranking = data.spec is not None and data.spec.kind == "interactions"
        what, base = ("Recall@20", "a random ranking's") if ranking else ("accuracy", "the majority class's share")
        print(f"sparse-run: warning: {desc} ended at chance (test {what} {result.final_test_acc:.4f} <= "
              f"{level:.4f}, {base} + {CHANCE_SIGMAS:g} standard errors); its row has "
              "status=at_chance: check train.lr and the data", file=sys.stderr)
    return result


def _resume(lanes: Sequence[Lane], per_epoch: int, device: torch.device) -> dict[str, Any] | None:
    """Load every lane's model and masks from its ``resume`` state; the loop position they share."""
    resumed = [lane.resume for lane in lanes]
    if all(r is None for r in resumed):
        return None
    if any(r is None for r in resumed):
        raise ValueError("either every replicate resumes or none does")
    for lane, r in zip(lanes, resumed):
        lane.model.load_state_dict(r["model"])
        lane.masks.load_state_dict(r["masks"])
        for hook, hstate in zip(lane.hooks or (), r.get("hooks") or ()):
            if hstate is not None:  # stateful hooks (e.g. N:M SAD tracking) continue too
                hook.load_state_dict(hstate)
    cursors = {int(r["cursor"]) for r in resumed}
    if len(cursors) > 1:
        raise ValueError("replicates must resume at the same position of their epoch")
    cursor = cursors.pop()
    return {"cursor": cursor, "step": int(resumed[0]["step"]),
            "orders": torch.stack([r["order"].to(device) for r in resumed]) if cursor < per_epoch else None,
            "histories": [list(r["history"]) for r in resumed], "wall_s": max(float(r["wall_s"]) for r in resumed),
            "loss_sum": torch.stack([r["loss_sum"].to(device) for r in resumed]),
            "generators": [r["generator"] for r in resumed], "optimizers": [r["optimizer"] for r in resumed],
            "scheduler": resumed[0]["scheduler"]}


def run(lanes: Sequence[Lane], data: DataBundle, tcfg: Any, build: Callable[[], Strategy], *, steps: int,
        eval_every: int, desc: str, bar: Any, zero_state: Callable[[torch.optim.Optimizer, MaskSet], None]
        ) -> list[TrainResult]:
    """Train every lane for ``steps`` iterations, evaluating every ``eval_every``; one result per lane.

    ``build`` makes the strategy once resumed models and masks are in place; ``bar`` is the progress
    bar (closed here); ``zero_state`` zeroes resumed optimizer state of pruned weights.
    """
    device = data.train_x.device
    batch, n = int(tcfg.batch_size), data.train_x.shape[0]
    if batch > n:
        raise ConfigError("train.batch_size", f"got {batch}; must be <= the training set size ({n})")
    k_lanes, per_epoch = len(lanes), n // batch
    gens = [torch.Generator().manual_seed(int(lane.seed)) for lane in lanes]
    empty = torch.empty(0, dtype=torch.long)
    orders, cursor, start, wall0 = empty, per_epoch, 0, 0.0
    histories: list[list[dict[str, float]]] = [[] for _ in lanes]
    loss_sum = torch.zeros(k_lanes, device=device)
    try:
        res = _resume(lanes, per_epoch, device)
        if res is not None:
            cursor, start, histories, wall0, loss_sum = (res["cursor"], res["step"], res["histories"], res["wall_s"],
                                                         res["loss_sum"])
            orders = res["orders"] if res["orders"] is not None else empty
            for g, gstate in zip(gens, res["generators"]):
                g.set_state(gstate)
        if k_lanes > 1 and any(hasattr(h, "before_step") for lane in lanes for h in lane.hooks or ()):
            raise ValueError("hooks with before_step run in single runs only")
        for lane in lanes:
            distributed.broadcast_masks(lane.masks)  # the decision is rank 0's (no-op in one process) ...
            distributed.check_masks(lane.masks, f"when {desc} starts")  # ... and every rank holds it
            lane.masks.apply_()
        st = build()
    except BaseException:
        bar.close()
        raise
    if res is not None:
        st.load_optimizer_states(res["optimizers"])
        for lane in lanes:
            zero_state(st.sched.optimizer, lane.masks)
        st.sched.load_state_dict(res["scheduler"])
    pre = [h for lane in lanes for h in lane.hooks or () if hasattr(h, "before_step")]
    for lane in lanes:
        for hook in lane.hooks or ():
            if hasattr(hook, "bind_optimizer"):
                hook.bind_optimizer(st.sched.optimizer)
    # Masked gradients keep pruned weights exactly zero under every optimizer here (their moments
    # and momenta stay zero, weight decay of zero is zero), so the weights need re-masking after a
    # step only when a hook may change the masks mid-run: a newly pruned weight still carries
    # optimizer state. Every evaluation checks the invariant either way.
    remask = any(lane.hooks for lane in lanes)
    # a constant schedule without warmup: its step is skipped, so the common case pays nothing per step
    constant_lr = tcfg.lr_schedule == "constant" and not int(tcfg.warmup_steps)
    every = int(tcfg.checkpoint_every or 0)
    clip = float(tcfg.grad_clip or 0.0)  # max global gradient norm per lane (0 / null: off)
    augment = getattr(data, "augment", None)
    seeds = [int(lane.seed) for lane in lanes]
    t0 = time.perf_counter()
    since_eval = start % eval_every if eval_every else 0

    def state(k: int, done: int) -> dict[str, Any]:
        lane = lanes[k]
        return {**st.lane_state(k), "generator": gens[k].get_state(),
                "order": orders[k].clone() if orders.numel() else empty, "cursor": cursor, "step": done,
                "history": list(histories[k]), "loss_sum": loss_sum[k].detach().clone(),
                "wall_s": wall0 + time.perf_counter() - t0,
                "hooks": [h.state_dict() if hasattr(h, "state_dict") else None for h in lane.hooks or ()]}

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
            # data-parallel: this rank's slice of the global batch (augmented whole first: draws keyed on the step)
            mine = distributed.shard(idx)
            take = idx if augment is not None else mine
            xb = data.train_x.index_select(0, take.flatten()).view(k_lanes, take.shape[1], *data.train_x.shape[1:])
            if augment is not None:  # dataset.augment: batched, on the device, each lane with its own seed
                parts = [augment(xb[k], seeds[k], step) for k in range(k_lanes)]
                xb = distributed.shard_rows(parts[0].unsqueeze(0) if k_lanes == 1 else torch.stack(parts))
            loss, lane_losses = st.forward_loss(xb, data.train_y.index_select(0, mine.flatten()).view(*mine.shape))
            st.zero_grad()
            loss.backward()
            skip = False
            for hook in pre:  # dense gradients: RigL's grow score, sparse momentum's running average
                skip = bool(hook.before_step(step, lanes[0].model, lanes[0].masks)) or skip
            st.mask_grads()
            if clip:  # after masking: pruned weights' (zero) gradients do not count towards the norm
                st.clip(clip)
            if not skip:
                st.step()
            if remask:
                st.apply_masks()
            if not constant_lr:
                st.sched.step()
            loss_sum += lane_losses
            since_eval += 1
            done = step + 1
            if remask:
                for lane in lanes:
                    for hook in lane.hooks or ():
                        hook(done, lane.model, lane.masks)
                    distributed.check_masks(lane.masks, f"after step {done} of {desc}")
                st.after_hooks()
            if done % eval_every == 0 or done == steps:
                records = _eval_records(st, lanes, data, done, distributed.mean(loss_sum / since_eval))
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
                    where = f"{desc}, seed {seed}" if k_lanes > 1 else desc
                    raise Diverged(f"loss became {rec['train_loss']} at step {done} ({where}); "
                                   "lower train.lr or check the data")
            captures(done)
            signum = preempt.requested(done) if done < steps else None
            if (every and done % every == 0 and done < steps) or signum:
                for k, lane in enumerate(lanes):
                    if lane.checkpoint:
                        lane.checkpoint(state(k, done))
            if signum:
                raise preempt.Preempted(signum, f"after step {done} of {desc}")
    finally:
        bar.close()
        st.release()
    wall = wall0 + time.perf_counter() - t0
    results = []
    for lane, hist in zip(lanes, histories):
        best = min(hist, key=lambda r: r["val_loss"])
        result = TrainResult(history=hist, early_stop_step=int(best["step"]), test_acc_at_early_stop=best["test_acc"],
                             final_test_acc=hist[-1]["test_acc"], final_val_acc=hist[-1]["val_acc"], wall_s=wall,
                             steps=steps, extra={"replicates": k_lanes} if k_lanes > 1 else {})
        results.append(check_chance(result, data, tcfg, f"{desc} (seed {lane.seed})" if k_lanes > 1 else desc))
    return results


def _eval_records(st: Strategy, lanes: Sequence[Lane], data: DataBundle, step: int,
                  train_loss: torch.Tensor) -> list[dict[str, float]]:
    for lane in lanes:
        distributed.check_masks(lane.masks, f"at step {step}")
    val_loss, val_acc, test_acc = st.evaluate(data)
    stray = torch.stack([lane.masks.stray_weights() for lane in lanes])
    rows = torch.stack([train_loss, val_loss, val_acc, test_acc, stray.float()], 1).tolist()  # the one host sync
    if any(r[4] for r in rows):
        per = f" (per replicate: {[int(r[4]) for r in rows]})" if len(rows) > 1 else ""
        raise RuntimeError(f"{int(sum(r[4] for r in rows))} pruned weights are nonzero at step {step}{per}: "
                           "mask enforcement is broken")
    extras = getattr(st, "eval_extra", None) or [{} for _ in lanes]  # task metrics (ranking: NDCG@K)
    records = []
    for lane, r, extra in zip(lanes, rows, extras):
        rec = {"step": step, "train_loss": r[0], "val_loss": r[1], "val_acc": r[2], "test_acc": r[3],
               **{k: float(v) for k, v in extra.items()}}
        for hook in lane.hooks or ():  # hooks may add metrics to the record (N:M: sad, sad_cum)
            if hasattr(hook, "eval_metrics"):
                rec.update(hook.eval_metrics(step))
        records.append(rec)
    return records
