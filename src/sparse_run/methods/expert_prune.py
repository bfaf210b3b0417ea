"""Retraining-free MoE expert pruning (``schedule.kind=expert_prune``; DERN, Zhou et al. 2025, ``../shared/papers.md``
§13): train the top-k MoE once, then cut it to ``experts_kept`` experts without any further training.

The trained model (round 0, the dense stage) is routed over ``calibration`` training examples (a seeded subset of
the training split; never validation or test) to get each expert's routing share f_e. Per level n of
``experts_kept`` (round = level index) each reduction of ``reductions`` is applied to a copy and evaluated as is:

- ``random``: n experts kept at random, the rest dropped (the floor);
- ``drop``: the n most routed experts kept, the rest dropped (frequency-based expert dropping);
- ``average`` / ``matched_average`` / ``dern``: the same n kept, the dropped ones folded into them
  (``sparsity.experts``: whole-expert averaging, averaging after one-to-one neuron matching, DERN's segment
  reassignment and merge).

Every reduced model has exactly the kept experts in their original shapes, and its router can choose only them.
Rows record ``experts_kept``, the kept experts, their routing share and the parameter memory before and after
(the dropped experts' weights are gone: ``density`` / ``nonzeros`` count the Linear weights that remain).
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from sparse_run.config import ConfigError, choice, number
from sparse_run.engine.run import Run, derive_seed
from sparse_run.models.moe import MoE, route
from sparse_run.sparsity import experts as ex

from .base import Method
from .levels import dense_baseline

REDUCTIONS = ("random", *ex.REDUCTIONS)


@torch.no_grad()
def router_share(model: MoE, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Each expert's share of the token-to-expert assignments on ``x`` (sums to 1)."""
    model.eval()
    counts = torch.zeros(len(model.experts), dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], chunk):
        h = torch.relu(model.stem(x[i:i + chunk].flatten(1)))
        _, top_i, _ = route(model.router(h), model.k, model.active)
        counts += torch.bincount(top_i.flatten(), minlength=counts.numel()).double()
    return (counts / counts.sum()).cpu()


def run_expert_prune(run: Run) -> None:
    s = run.cfg.method.schedule
    model = dense_baseline(run)
    data = run.data
    gen = torch.Generator().manual_seed(derive_seed(run.seed, "calibration"))
    idx = torch.randperm(data.train_x.shape[0], generator=gen)[:int(s.calibration)].to(data.train_x.device)
    share = router_share(model, data.train_x[idx])
    n_experts = len(model.experts)
    per_expert = sum(p.numel() for p in model.experts[0].parameters())
    per_expert_w = sum(m.weight.numel() for m in (model.experts[0].gate, model.experts[0].up, model.experts[0].down))
    total = sum(p.numel() for p in model.parameters())
    for r, n in enumerate((int(v) for v in s.experts_kept), start=1):
        for how in s.reductions:
            key = f"{how}/r{r}"
            if key in run.done:
                continue
            if how == "random":
                keep = ex.keep_random(n_experts, n, torch.Generator().manual_seed(derive_seed(run.seed, "keep", n)))
                reduced = ex.reduce(model.expert_weights(), share, keep, "drop")
            else:
                keep = ex.keep_by_frequency(share, n)
                reduced = ex.reduce(model.expert_weights(), share, keep, how)
            small = copy.deepcopy(model)
            small.load_experts(reduced)
            masks = run.new_masks(small)
            gone = (n_experts - n) * per_expert_w  # the dropped experts' weights no longer exist
            run.record_eval(key, small, masks, r, how, target_density=n / n_experts, method=how,
                            extra={"density": (masks.numel() - gone) / masks.numel(), "nonzeros": masks.numel() - gone,
                                   "experts_kept": n, "experts": n_experts, "kept": " ".join(map(str, keep)),
                                   "kept_share": float(share[keep].sum()), "calibration": int(idx.numel()),
                                   "params_before": total, "params_after": total - (n_experts - n) * per_expert,
                                   "expert_params_after": n * per_expert})


def validate(cfg: Any) -> None:
    """One-line errors: an MoE model, kept counts in [top_k, experts − 1], known reductions, calibration >= 1."""
    if cfg.model.arch != "moe":
        raise ConfigError("model.arch", f"got {cfg.model.arch!r}; expert_prune reduces a mixture of experts "
                                        "(allowed: moe, e.g. model=moe_mnist)")
    s, experts, k = cfg.method.schedule, int(cfg.model.experts), int(cfg.model.top_k)
    kept = s.experts_kept
    if kept is None or not len(kept):
        raise ConfigError("method.schedule.experts_kept", f"got {kept!r}; a non-empty list of expert counts")
    for i, n in enumerate(kept):
        number(n, f"method.schedule.experts_kept[{i}]", lo=k, hi=experts - 1, integer=True)
    reductions = list(s.reductions or [])
    if not reductions or len(set(reductions)) != len(reductions):
        raise ConfigError("method.schedule.reductions", f"got {reductions}; a non-empty list without repeats of "
                                                        f"{' | '.join(REDUCTIONS)}")
    for i, how in enumerate(reductions):
        choice(how, f"method.schedule.reductions[{i}]", REDUCTIONS)
    number(s.calibration, "method.schedule.calibration", lo=1, integer=True)


METHOD = Method(kind="expert_prune", run=run_expert_prune, validate=validate, patterns=None, figures="experts",
                trains=False)
