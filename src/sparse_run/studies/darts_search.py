"""The two optimisation loops of the DASS study (``../shared/papers.md`` §9): the architecture search and HYDRA
score learning.

- ``search``: first-order DARTS. Each step makes one α step (Adam) on a validation batch, then one weight step
  (SGD, cosine) on a training batch. With ``sparse_alpha`` (DASS) the α step sees the *sparsified* supernet, so α
  favours ops that survive pruning at ratio p; without it, it is plain DARTS. The weight step is always dense
  (``sparseconv3`` is sparse by construction).
- ``learn_scores``: on a trained dense model, freeze the weights and learn one score per weight of the named
  layers; the forward uses w ⊙ m where m keeps exactly round(density · total) weights under one global
  threshold, with straight-through gradients to the scores. The model itself is never modified: it runs through
  ``torch.func.functional_call`` with masked weights and copies of its buffers.

Neither loop touches test data; the callers pass only training / validation tensors.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from sparse_run.models.darts import Supernet
from sparse_run.sparsity.topk import keep_global, keep_top


def _positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    return value


def _batch(n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """Random indices (with replacement) drawn from the CPU generator, moved to the data's device."""
    return torch.randint(n, (batch_size,), generator=generator).to(device)


# -- architecture search -------------------------------------------------------------------------------------------


def _alpha_step(net: Supernet, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
                sparse: bool) -> tuple[Tensor, Tensor]:
    """One first-order α step on a validation batch; only α receives a gradient. Returns (loss, #correct)."""
    with net.sparsified(sparse):
        out = net(x)
        loss = F.cross_entropy(out, y)
        arch = net.arch_parameters()
        for p, g in zip(arch, torch.autograd.grad(loss, arch)):
            p.grad = g
    opt.step()
    return loss.detach(), (out.detach().argmax(1) == y).sum()


def _weight_step(net: Supernet, opt: torch.optim.Optimizer, params: list[nn.Parameter], x: Tensor,
                 y: Tensor) -> Tensor:
    """One SGD step on a training batch with the supernet dense; only the weights receive a gradient."""
    loss = F.cross_entropy(net(x), y)
    for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
        p.grad = g  # None for a weight the batch did not reach: SGD skips it
    nn.utils.clip_grad_norm_(params, 5.0)
    opt.step()
    return loss.detach()


def search(net: Supernet, train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, *, steps: int,
           batch_size: int, lr_w: float = 0.025, lr_a: float = 3e-4, sparse_alpha: bool,
           generator: torch.Generator) -> list[dict]:
    """First-order DARTS (DASS when ``sparse_alpha``): alternate α steps on val batches and weight steps on train
    batches for ``steps`` steps; returns ``{step, train_loss, val_loss, val_acc}`` every max(1, steps // 10) steps
    and at the last (the only host syncs). ``val_*`` are from the α step's batch, so sparsified under DASS."""
    _positive(steps, "steps")
    _positive(batch_size, "batch_size")
    params = [p for p in net.weight_parameters() if p.requires_grad]
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=lr_a, betas=(0.5, 0.999), weight_decay=1e-3)
    w_opt = torch.optim.SGD(params, lr=lr_w, momentum=0.9, weight_decay=3e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=steps)
    every, history = max(1, steps // 10), []
    net.train()
    for step in range(1, steps + 1):
        vi = _batch(len(val_x), batch_size, generator, val_x.device)
        ti = _batch(len(train_x), batch_size, generator, train_x.device)
        val_loss, correct = _alpha_step(net, a_opt, val_x[vi], val_y[vi], sparse_alpha)
        train_loss = _weight_step(net, w_opt, params, train_x[ti], train_y[ti])
        schedule.step()
        if step % every == 0 or step == steps:
            history.append({"step": step, "train_loss": train_loss.item(), "val_loss": val_loss.item(),
                            "val_acc": correct.item() / batch_size})
    return history


# -- HYDRA score learning -------------------------------------------------------------------------------------------


class GlobalTopKSTE(torch.autograd.Function):
    """Forward: 0/1 masks keeping the ``k`` highest magnitudes over all tensors together (ties: earliest, in the
    order given). Backward: the identity to every input."""

    @staticmethod
    def forward(ctx, k: int, *magnitudes: Tensor) -> tuple[Tensor, ...]:
        kept = keep_global({str(i): m.detach() for i, m in enumerate(magnitudes)}, k)
        return tuple(kept[str(i)].to(m.dtype) for i, m in enumerate(magnitudes))

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:
        return (None, *grads)


class CountsTopKSTE(torch.autograd.Function):
    """Forward: 0/1 masks keeping exactly ``counts[i]`` highest magnitudes of tensor i (ties: earliest).
    Backward: the identity to every input (as ``GlobalTopKSTE``)."""

    @staticmethod
    def forward(ctx, counts: tuple[int, ...], *magnitudes: Tensor) -> tuple[Tensor, ...]:
        return tuple(keep_top(m.detach(), c).to(m.dtype) for m, c in zip(magnitudes, counts))

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:
        return (None, *grads)


def topk_masks(scores: dict[str, Tensor], k: int, counts: dict[str, int] | None = None) -> dict[str, Tensor]:
    """``global_topk_mask``, or with ``counts`` exactly ``counts[name]`` kept per tensor (layerwise / ERK)."""
    if counts is None:
        return global_topk_mask(scores, k)
    names = list(scores)
    return dict(zip(names, CountsTopKSTE.apply(tuple(int(counts[n]) for n in names),
                                               *(scores[n].abs() for n in names))))


def global_topk_mask(scores: dict[str, Tensor], k: int) -> dict[str, Tensor]:
    """Float 0/1 masks keeping exactly ``k`` of all |scores| under one threshold; straight-through on |scores|
    (as ``models.darts.topk_mask``), so dL/ds = dL/d(w⊙m) ⊙ w ⊙ sign(s)."""
    names = list(scores)
    return dict(zip(names, GlobalTopKSTE.apply(int(k), *(scores[n].abs() for n in names))))


def init_scores(weight: Tensor) -> Tensor:
    """HYDRA's scaled init |w|/sqrt(fan_in): the first mask is the magnitude mask, comparable across layers."""
    return (weight.detach().abs() / math.sqrt(weight[0].numel())).clone().requires_grad_(True)


def learn_scores(model: nn.Module, names: list[str], density: float, x: Tensor, y: Tensor, *, steps: int,
                 batch_size: int, lr: float, generator: torch.Generator,
                 counts: dict[str, int] | None = None) -> dict[str, Tensor]:
    """HYDRA: learn scores for the weights ``names`` with the weights frozen; return the final boolean masks,
    exactly round(density · total) True over all named layers together (one threshold), or ``counts[name]`` per
    layer when given (layerwise / ERK budgets: one global threshold can empty whole small layers).

    The model runs in its current train/eval mode on copies of its buffers, so its state_dict is unchanged.
    """
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1]; got {density!r}")
    _positive(batch_size, "batch_size")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0; got {steps!r}")
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing or not names:
        raise ValueError(f"no parameters to score: {missing or names}")
    weights = {n: params[n].detach() for n in names}
    scores = {n: init_scores(w) for n, w in weights.items()}
    k = round(density * sum(w.numel() for w in weights.values()))
    trainable = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(False)
    try:
        _optimise_scores(model, weights, scores, k, x, y, steps, batch_size, lr, generator, counts)
    finally:
        for n, p in params.items():
            p.requires_grad_(trainable[n])
    if counts is not None:
        return {n: keep_top(s.detach().abs(), int(counts[n])) for n, s in scores.items()}
    return keep_global({n: s.detach().abs() for n, s in scores.items()}, k)


def _optimise_scores(model: nn.Module, weights: dict[str, Tensor], scores: dict[str, Tensor], k: int, x: Tensor,
                     y: Tensor, steps: int, batch_size: int, lr: float, generator: torch.Generator,
                     counts: dict[str, int] | None = None) -> None:
    """SGD (momentum 0.9) on the scores only, the forward using w ⊙ m(scores) on buffer copies."""
    opt = torch.optim.SGD(list(scores.values()), lr=lr, momentum=0.9)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    for _ in range(steps):
        idx = _batch(len(x), batch_size, generator, x.device)
        masks = topk_masks(scores, k, counts)
        masked = {n: w * masks[n] for n, w in weights.items()}
        loss = F.cross_entropy(functional_call(model, {**buffers, **masked}, (x[idx],)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
