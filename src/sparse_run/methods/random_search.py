"""Random Search for sparse architectures as a baseline (``schedule.kind=random_search``; Farahani, arXiv 2403.08265,
``../shared/papers.md`` §6): does searching among random sub-networks find better ones than drawing one at random?

For the run seed's parent MLP θ0, at every level of ``schedule.units_removed`` (fraction of every hidden layer's
units removed) and every search space of ``schedule.spaces``:

- ``node``: a candidate keeps a random subset of each hidden layer's units (its rows in that layer's weight and its
  columns in the next layer's): a smaller dense network inside the parent; ``weight``: a random unstructured mask
  with exactly the same per-layer weight counts. Within a level every candidate has the same weight count and
  the same FLOPs (an MLP's multiply-adds are its kept weights), so both comparisons are at equal size;
- ``schedule.candidates`` = N candidates, each scored at init (validation loss of θ0 ⊙ m) and after a short training
  of ``search_steps`` from θ0 ⊙ m (validation loss; the test set never selects);
- retrained for ``train.steps`` from its slice of θ0, on ``retrain_seeds`` fresh data orders each: the winner by
  the trained score (``rs_best``), the winner at init (``rs_best_init``), the loser (``rs_worst``) and one more
  random mask drawn apart from the candidates and trained identically (``random_mask``);
- the dense parent from θ0 on the same fresh seeds (``schedule.dense``).

Rows of retrained arms carry their candidate's selection scores, ``nnz_weights`` / ``flops`` (multiply-adds per
example) and ``epochs_to_target`` (first evaluation whose validation accuracy reaches ``target_acc``).
"""
from __future__ import annotations

from typing import Any

import torch

from sparse_run.config import ConfigError, choice, number
from sparse_run.engine.run import Run, derive_seed, record_event
from sparse_run.engine.train import TrainResult, evaluate
from sparse_run.sparsity import MaskSet, keep_top

from .base import Method

SPACES = ("node", "weight")
RETRAINED = ("rs_best", "rs_best_init", "rs_worst", "random_mask")


def retrain_seed(run_seed: int, j: int) -> int:
    """Fresh data-order seeds for retraining, apart from the search's (the run seed's)."""
    return 1000 * (run_seed + 1) + j


def _layers(model: torch.nn.Module, masks: MaskSet) -> list[str]:
    """The MLP's weight names in order (hidden layers, then the output layer); all must be masked."""
    names = [f"hidden.{i}.weight" for i in range(len(model.hidden))] + ["out.weight"]
    if list(masks.names()) != names:
        raise ConfigError("method.policy", f"random_search masks every layer of the MLP ({', '.join(names)}); "
                                           f"the policy gives {', '.join(masks.names())}")
    return names


def node_masks(model: torch.nn.Module, masks: MaskSet, removed: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Keep round((1 − removed)·h) random units of every hidden layer (at least one): rows of its weight, columns of
    the next."""
    names = _layers(model, masks)
    out, prev = {}, None
    for name in names:
        rows, cols = masks.masks[name].shape
        keep_rows = torch.ones(rows, dtype=torch.bool)
        if name != "out.weight":
            keep_rows = keep_top(torch.rand(rows, generator=gen), max(1, round((1 - removed) * rows)))
        keep_cols = prev if prev is not None else torch.ones(cols, dtype=torch.bool)
        out[name] = keep_rows[:, None] & keep_cols[None, :]
        prev = keep_rows
    return out


def weight_masks(like: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random unstructured masks with ``like``'s per-layer counts."""
    return {n: keep_top(torch.rand(m.shape, generator=gen), int(m.sum())) for n, m in like.items()}


def candidate(run: Run, model: torch.nn.Module, masks: MaskSet, space: str, removed: float, k: int | str,
              ) -> dict[str, torch.Tensor]:
    """Candidate ``k`` (``"random"``: the baseline draw) of a level and space, reproducible from the run seed."""
    gen = torch.Generator().manual_seed(derive_seed(run.seed, "random_search", space, round(removed, 6), k))
    nodes = node_masks(model, masks, removed, gen)
    return nodes if space == "node" else weight_masks(nodes, gen)


def _epochs_to(result: TrainResult, target: float, per_epoch: float) -> float | None:
    hit = next((h["step"] for h in result.history if h["val_acc"] >= target), None)
    return None if hit is None else round(hit / per_epoch, 4)


def _scores(run: Run, space: str, r: int) -> dict[int, dict[str, float]]:
    """Selection scores of a level's candidates, read back from the run's rows (also after a resume)."""
    return {int(row["cand"]): {"trained": float(row["score_trained"]), "init": float(row["score_init"])}
            for row in run.writer.rows
            if row.get("variant") == "candidate" and row.get("space") == space and row.get("round") == r
            and row.get("cand") is not None}


def run_random_search(run: Run) -> None:
    s = run.cfg.method.schedule
    n_cand, n_seeds, target = int(s.candidates), int(s.retrain_seeds), float(s.target_acc)
    per_epoch = run.data.train_x.shape[0] / int(run.cfg.train.batch_size)

    def arm(key: str, mask: dict[str, torch.Tensor] | None, r: int, variant: str, seed: int, **extra: Any) -> None:
        if key in run.done:
            return
        model = run.new_model(run.seed)  # θ0 of the parent; the mask takes its slice
        masks = run.new_masks(model)
        if mask is not None:
            masks.set(mask)
        run.train_arm(key, model, masks, r, variant, target_density=extra.pop("target_density", masks.density()),
                      method="rs", context={"seed": seed},
                      extra={**extra, "nnz_weights": masks.nonzeros(), "flops": masks.nonzeros()},
                      row_extra=lambda res: {"epochs_to_target": _epochs_to(res, target, per_epoch)})

    if s.dense:
        for j in range(n_seeds):
            arm(f"dense/s{j}", None, 0, "dense", retrain_seed(run.seed, j), space="dense", units_removed=0.0)
    for r, removed in enumerate(float(u) for u in s.units_removed):
        r += 1
        for space in s.spaces:
            model = run.new_model(run.seed)
            masks = run.new_masks(model)
            cands = {k: candidate(run, model, masks, space, removed, k) for k in range(n_cand)}
            cands[n_cand] = candidate(run, model, masks, space, removed, "random")
            for k, mask in cands.items():  # the search: score at init and after a short training
                key = f"{space}/r{r}/cand{k}"
                if key in run.done:
                    continue
                model = run.new_model(run.seed)
                masks = run.new_masks(model)
                masks.set(mask)
                init_loss = float(evaluate(model, run.data.val_x, run.data.val_y)[0])
                if k == 0:
                    record_event(run, r, masks, None, masks.density(), method="rs", variant=f"candidate_{space}")
                run.train_arm(key, model, masks, r, "candidate", target_density=masks.density(), method="rs",
                              steps=int(s.search_steps),
                              extra={"space": space, "units_removed": removed, "cand": k, "score_init": init_loss,
                                     "random_draw": k == n_cand, "nnz_weights": masks.nonzeros(),
                                     "flops": masks.nonzeros()},
                              row_extra=lambda res: {"score_trained": res.history[-1]["val_loss"]})
            scores = _scores(run, space, r)
            searched = list(range(n_cand))
            ranked = sorted(searched, key=lambda c: scores[c]["trained"])
            picks = {"rs_best": min(searched, key=lambda k: scores[k]["trained"]),
                     "rs_best_init": min(searched, key=lambda k: scores[k]["init"]),
                     "rs_worst": max(searched, key=lambda k: scores[k]["trained"]),
                     "random_mask": n_cand}
            for variant, k in picks.items():
                for j in range(n_seeds):
                    arm(f"{space}/r{r}/{variant}/s{j}", cands[k], r, variant, retrain_seed(run.seed, j), space=space,
                        units_removed=removed, cand=k, score_trained=scores[k]["trained"],
                        score_init=scores[k]["init"],
                        score_rank=ranked.index(k) + 1 if k < n_cand else None)


def validate(cfg: Any) -> None:
    """One-line errors: an MLP, N >= 1 candidates, >= 1 retrain seeds, levels in (0, 1), known spaces."""
    if cfg.model.arch != "mlp":
        raise ConfigError("model.arch", f"got {cfg.model.arch!r}; random_search removes hidden units of an MLP "
                                        "(allowed: mlp)")
    s, m = cfg.method.schedule, cfg.method
    number(s.candidates, "method.schedule.candidates", lo=1, integer=True)
    number(s.retrain_seeds, "method.schedule.retrain_seeds", lo=1, integer=True)
    number(s.search_steps, "method.schedule.search_steps", lo=1, integer=True)
    number(s.target_acc, "method.schedule.target_acc", lo=0, hi=1, lo_open=True)
    levels = s.units_removed
    if levels is None or not len(levels):
        raise ConfigError("method.schedule.units_removed", f"got {levels!r}; a non-empty list of fractions in (0, 1)")
    for i, u in enumerate(levels):
        number(u, f"method.schedule.units_removed[{i}]", lo=0, hi=1, lo_open=True, hi_open=True)
    spaces = list(s.spaces or [])
    if not spaces:
        raise ConfigError("method.schedule.spaces", f"got {spaces}; give node and / or weight")
    for i, sp in enumerate(spaces):
        choice(sp, f"method.schedule.spaces[{i}]", SPACES)
    if m.selection.pattern != "unstructured":
        raise ConfigError("method.selection.pattern", f"got {m.selection.pattern!r}; random_search draws its own masks")


METHOD = Method(kind="random_search", run=run_random_search, validate=validate, patterns=None,
                figures="random_search", trains=False)
