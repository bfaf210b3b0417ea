"""The DASS study (``schedule.kind=dass``; Mousavi et al. 2022, ``../shared/papers.md`` §9): is a cell searched for
its *sparsified* accuracy better once pruned than one searched dense?

Three arms, each trained dense, then pruned to every level of ``schedule.sparsities`` by HYDRA's learned scores
(weights frozen, top-k |scores| with straight-through gradients for ``score_steps``; per-layer budgets from
``selection.scope``, ERK by default: one global threshold empties whole small layers of these tiny nets) and fine-tuned
``finetune_steps`` with the mask fixed (pruned weights exactly zero after every step):

- ``dass``: first-order DARTS over {skip, conv3, sepconv3, maxpool, sparseconv3} where the α step sees the supernet
  sparsified at ``sparse_ratio`` p (``models/darts.py``), then the derived cell;
- ``darts``: the same search without the sparse op and with a dense α step (searched dense, pruned afterwards);
- ``hand``: a plain CNN sized to the DASS-derived net's parameter count (``hand_cnn_like``).

Search batches come from the training split (weights) and the validation split (α); the test split is read only
for the reported accuracies. Both searches are seeded from the run's seed, so the derived cells (``genotypes.json``)
are a deterministic function of it. Rows: ``method`` = arm, ``variant`` dense | sparse, ``params`` (the arm's
parameter count), ``test_acc_before_finetune``. If every arm stays within ``SATURATED_PP`` of its own dense
accuracy at every level the run says the comparison is saturated — uninformative, not negative.
"""
from __future__ import annotations

import json
from typing import Any

import torch

from sparse_run.config import ConfigError, number
from sparse_run.engine.run import Run, derive_seed, record_event
from sparse_run.engine.train import evaluate
from sparse_run.models.darts import (OPS, DerivedNet, Genotype, Supernet, check_ops, check_ratio, derive,
                                     hand_cnn_like, param_count)
from sparse_run.sparsity import levels
from sparse_run.sparsity.selection import layer_counts
from sparse_run.store.files import atomic_write_text, load_state

from .darts_search import learn_scores, search

MODEL_NAMES = {"dass": "dass_cell", "darts": "darts_cell", "hand": "hand_cnn"}  # the rows' model column


def _seeded(seed: int, build: Any) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _search(run: Run, arm: str) -> Genotype:
    """The arm's searched cell (cached in the run's progress so a resumed run does not search again)."""
    cached = run.extra_state.get("genotypes", {}).get(arm)
    if cached:
        return Genotype(tuple(tuple((op, int(i)) for op, i in node) for node in cached["edges"]),
                        int(cached["nodes"]), tuple(cached["ops"]))
    s, d = run.cfg.method.schedule, run.data
    ops = tuple(s.ops) if arm == "dass" else tuple(o for o in s.ops if o != "sparseconv3")
    c = d.spec.input_shape[0]
    net = _seeded(derive_seed(run.seed, "dass-supernet", arm), lambda: Supernet(
        c, d.spec.num_classes, C=int(s.channels), cells=int(s.cells), nodes=int(s.cell_nodes), ops=ops,
        ratio=float(s.sparse_ratio))).to(d.train_x.device)
    history = search(net, d.train_x, d.train_y, d.val_x, d.val_y, steps=int(s.search_steps),
                     batch_size=int(run.cfg.train.batch_size), sparse_alpha=arm == "dass",
                     generator=torch.Generator().manual_seed(derive_seed(run.seed, "dass-search", arm)))
    geno = derive(net.alphas.detach().cpu(), ops, int(s.cell_nodes))
    run.extra_state.setdefault("genotypes", {})[arm] = {
        "edges": [list(map(list, node)) for node in geno.edges], "nodes": geno.nodes, "ops": list(geno.ops),
        "alphas": net.alphas.detach().cpu().softmax(-1).tolist(), "history": history}
    run.save_progress()
    atomic_write_text(run.dir / "genotypes.json", json.dumps(run.extra_state["genotypes"], indent=1))
    print(f"sparse-run: {arm} cell: {geno.edges}")
    return geno


def _models(run: Run) -> dict[str, Any]:
    """A builder per arm (the hand CNN is sized to the DASS-derived net)."""
    s, spec = run.cfg.method.schedule, run.data.spec
    c, k, C, cells = spec.input_shape[0], spec.num_classes, int(s.channels), int(s.cells)
    genos = {arm: _search(run, arm) for arm in ("dass", "darts")}
    size_ref = DerivedNet(genos["dass"], c, k, C=C, cells=cells)
    return {"dass": lambda: DerivedNet(genos["dass"], c, k, C=C, cells=cells),
            "darts": lambda: DerivedNet(genos["darts"], c, k, C=C, cells=cells),
            "hand": lambda: hand_cnn_like(size_ref, c, k, C=C)}


def run_study(run: Run) -> None:
    s, d = run.cfg.method.schedule, run.data
    if run.cfg.budget_note:
        print(f"sparse-run: {run.cfg.name} at budget {run.cfg.budget.name}: {run.cfg.budget_note}")
    scope = str(run.cfg.method.selection.scope)
    for arm, build in _models(run).items():
        model = _seeded(derive_seed(run.seed, "dass-init", arm), build).to(d.train_x.device)
        params = param_count(model)
        path = f"checkpoints/{arm}/dense.pt"
        masks = run.new_masks(model)
        ctx = {"model": MODEL_NAMES[arm]}
        if f"{arm}/dense" not in run.done:
            record_event(run, 0, masks, {n: 1.0 for n in masks.names()}, 1.0, method=arm, variant="dense")
            run.train_arm(f"{arm}/dense", model, masks, 0, "dense", target_density=1.0, method=arm,
                          save_as=path, extra={"params": params}, context=ctx)
        else:
            model.load_state_dict(load_state(run.dir / path, keys=("model",))["model"])
        trained = {k: v.clone() for k, v in model.state_dict().items()}
        for i, density in enumerate(levels(s)):
            key = f"{arm}/r{i + 1}/sparse"
            if key in run.done:
                continue
            model.load_state_dict(trained)
            masks = run.new_masks(model)
            gen = torch.Generator().manual_seed(derive_seed(run.seed, "dass-scores", arm, i))
            shapes = {n: tuple(m.shape) for n, m in masks.masks.items()}
            counts = layer_counts({n: m.numel() for n, m in masks.masks.items()}, shapes, density, scope)
            masks.set(learn_scores(model, masks.names(), density, d.train_x, d.train_y, steps=int(s.score_steps),
                                   batch_size=int(run.cfg.train.batch_size), lr=float(s.score_lr), generator=gen,
                                   counts=counts))
            record_event(run, i + 1, masks, None, density, method=arm, variant="sparse")
            _, before = evaluate(model, d.test_x, d.test_y)
            run.train_arm(key, model, masks, i + 1, "sparse", target_density=density, method=arm,
                          steps=int(s.finetune_steps), context=ctx,
                          extra={"params": params, "test_acc_before_finetune": float(before)})
            run.writer.save("checkpoints/final.pt", {"model": model.state_dict(), "masks": masks.state_dict()})
    from sparse_run.report.dass import SATURATED_PP, saturated  # here: report/ imports matplotlib (start-up)
    if saturated(run.writer_frame()):  # every row of the run, resumed arms included (report/dass.py's rule)
        print(f"sparse-run: every arm is within {SATURATED_PP} pp of its dense accuracy at every level: the "
              "comparison is saturated (uninformative, not negative); try dataset=fashion_mnist or higher sparsity")


def validate(cfg: Any) -> None:
    s = cfg.method.schedule
    for k in ("channels", "cells", "cell_nodes", "search_steps", "score_steps", "finetune_steps"):
        if s.get(k) is None:
            raise ConfigError(f"method.schedule.{k}", "missing; schedule.kind=dass needs it")
    number(s.channels, "method.schedule.channels", lo=1, integer=True)
    if s.cells not in (1, 2):
        raise ConfigError("method.schedule.cells", f"got {s.cells!r}; allowed: 1, 2")
    number(s.cell_nodes, "method.schedule.cell_nodes", lo=2, integer=True)
    for k in ("search_steps", "score_steps", "finetune_steps"):
        number(s[k], f"method.schedule.{k}", lo=1, integer=True)
    number(s.score_lr, "method.schedule.score_lr", lo=0, lo_open=True)
    try:
        check_ratio(float(s.sparse_ratio))
    except (ValueError, TypeError):
        raise ConfigError("method.schedule.sparse_ratio", f"got {s.sparse_ratio!r}; allowed: 0 <= p < 1") from None
    ops = check_ops(list(s.ops or []), "method.schedule.ops")
    if not ops or "sparseconv3" not in ops or len(ops) < 2:
        raise ConfigError("method.schedule.ops", f"got {list(s.ops or [])}; allowed: a subset of {', '.join(OPS)} "
                                                 "with sparseconv3 and at least one other op")
    if cfg.method.selection.scope not in ("layerwise", "global", "erk"):
        raise ConfigError("method.selection.scope", f"got {cfg.method.selection.scope!r}; allowed: layerwise, global, "
                                                    "erk (the score budget per layer)")
    for i, v in enumerate(levels(s)):
        number(v, f"method.schedule.sparsities[{i}] (as density)", lo=0, hi=1, lo_open=True, hi_open=True)
