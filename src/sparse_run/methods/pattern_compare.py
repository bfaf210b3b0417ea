"""Selection patterns compared on one trained network (``schedule.kind=pattern_compare``; SparseByteNN, papers.md §11).

Train dense once; then at every level and for every selection arm of ``schedule.selections`` (each a mapping
of ``method.selection`` overrides with a ``label``, e.g. unstructured, g×1 groups with and without channel
permutation, whole channels), prune the *same* trained weights once by the method's criterion, fine-tune
``finetune_steps``, and — with ``schedule.timed`` — time the fine-tuned model executed the way its pattern runs
(unstructured → CSR, group → the g×1 group kernel, channel → the physically smaller dense model, block → BSR)
against the faster dense kernel, with the hardware target's protocol (``hardware.batch_sizes``, rounds, CIs).

Row columns beyond the usual: ``method`` (the arm's label), ``pattern``, ``group``, ``permute``,
``retained_l1`` (Σ|W ⊙ M| / Σ|W| of the prunable layers right after pruning: what the selection kept),
``test_acc_before_finetune``, ``execution`` and, per timed batch size b, ``speedup_b<b>`` with its interval
(``_lo`` / ``_hi``) and ``verdict_b<b>``. Every timed row (whole model and each layer) goes to ``latency.csv``
(hardware.csv's columns plus ``target_density`` and ``pattern``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from omegaconf import OmegaConf

from sparse_run.config import ConfigError, number
from sparse_run.engine.run import Run, record_event
from sparse_run.engine.train import evaluate
from sparse_run.hardware.measurement import COLUMNS as HW_COLUMNS
from sparse_run.hardware.measurement import measure_model, protocol
from sparse_run.sparsity import levels
from sparse_run.sparsity.patterns import validate_method as validate_pattern
from sparse_run.store.files import atomic_write_text
from sparse_run.store.schema import rows_to_csv

from .base import Method
from .levels import dense_baseline, finish, prune_to, validate_levels

EXECUTION = {"unstructured": "csr", "group": "group", "channel": "slim", "block": "bsr"}
SELECTION_KEYS = ("pattern", "group", "permute", "block")
LATENCY_COLUMNS = [*HW_COLUMNS, "target_density", "pattern"]


def selection_arms(cfg: Any) -> list[tuple[str, dict[str, Any]]]:
    """``(label, method.selection overrides)`` of every arm, in config order."""
    out = []
    for item in cfg.method.schedule.selections:
        over = OmegaConf.to_container(item, resolve=True)
        out.append((str(over.pop("label")), over))
    return out


def _with_selection(run: Run, over: dict[str, Any]) -> Run:
    return dataclasses.replace(run, cfg=OmegaConf.merge(run.cfg, {"method": {"selection": over}}))


def _time(run: Run, model: torch.nn.Module, masks: dict[str, torch.Tensor], pattern: str, density: float,
          label: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Speedup columns for the row and the latency.csv rows of one fine-tuned arm."""
    cfg = run.cfg
    group = int(cfg.method.selection.group)
    hw = OmegaConf.merge(cfg.hardware, {"execution": EXECUTION[pattern], "group": group,
                                        "block": list(cfg.method.selection.block or [4, 4])})
    threads_before = torch.get_num_threads()
    torch.set_num_threads(int(hw.threads or cfg.threads or threads_before))
    try:
        ctx = {**{k: v for k, v in run.context(-1, "final").items() if k not in ("round", "variant")},
               "method": label, "hardware": f"{pattern}:{EXECUTION[pattern]}"}
        rows, _ = measure_model(model.cpu(), {n: m.cpu() for n, m in masks.items()}, hw, run.data.test_x.cpu(),
                                protocol(hw, cfg.budget.short_timing, run.seed), ctx)
    finally:
        torch.set_num_threads(threads_before)
    cols: dict[str, Any] = {"execution": EXECUTION[pattern]}
    for r in rows:
        r.update(target_density=density, pattern=pattern)
        if r["scope"] == "model":
            b = int(r["batch"])
            cols.update({f"speedup_b{b}": r["speedup"], f"speedup_b{b}_lo": r["speedup_lo"],
                         f"speedup_b{b}_hi": r["speedup_hi"], f"verdict_b{b}": r["verdict"]})
    return cols, rows


def run_pattern_compare(run: Run) -> None:
    """Dense baseline, then per level × selection arm: prune the trained weights once, fine-tune, time."""
    sched, method = run.cfg.method.schedule, run.cfg.method
    if run.cfg.budget_note:
        print(f"sparse-run: {run.cfg.name} at budget {run.cfg.budget.name}: {run.cfg.budget_note}")
    probe = run.new_model(run.seed)
    for _, over in selection_arms(run.cfg):  # every arm's shapes and links, before the dense model trains
        _with_selection(run, over).new_masks(probe)
    dense = dense_baseline(run)
    trained = {k: v.clone() for k, v in dense.state_dict().items()}
    latency: list[dict[str, Any]] = list(run.extra_state.get("latency", []))
    for i, density in enumerate(levels(sched)):
        r = i + 1
        for label, over in selection_arms(run.cfg):
            key = f"{label}/r{r}/sparse"
            if key in run.done:
                continue
            arun = _with_selection(run, over)
            sel = arun.cfg.method.selection
            model = arun.new_model(run.seed)
            model.load_state_dict(trained)
            masks = arun.new_masks(model)
            total = sum(float(p.detach().abs().sum()) for _, p, _ in masks)  # Σ|W| is permutation-invariant
            planned = prune_to(arun, model, masks, method.criterion, density, ("pattern_compare", label, r))
            kept = sum(float(p.detach().abs().sum()) for _, p, _ in masks) / total  # pruned weights are zero now
            record_event(run, r, masks, planned, density, method=label, variant="sparse")
            run.writer.save(f"masks/{label}/round_{r:02d}.pt", masks.state_dict())
            _, before = evaluate(model, run.data.test_x, run.data.test_y)
            timed: list[dict[str, Any]] = []

            def row_extra(res: Any, model: torch.nn.Module = model, masks: Any = masks, sel: Any = sel,
                          label: str = label, density: float = density, timed: list = timed) -> dict[str, Any]:
                if not sched.timed:
                    return {}
                cols, rows = _time(arun, model, masks.masks, str(sel.pattern), density, label)
                timed.extend(rows)
                return cols

            ctx = {"pattern": str(sel.pattern)}
            arun.train_arm(key, model, masks, r, "sparse", target_density=density, method=label,
                           steps=int(sched.finetune_steps), row_extra=row_extra, context=ctx,
                           extra={"group": int(sel.group) if sel.pattern == "group" else None,
                                  "permute": bool(sel.permute), "retained_l1": kept,
                                  "test_acc_before_finetune": float(before)})
            latency.extend(timed)
            run.extra_state["latency"] = latency
            run.save_progress()
            if latency:
                atomic_write_text(run.dir / "latency.csv", rows_to_csv(latency, LATENCY_COLUMNS))
            finish(run, model, masks)


def validate(cfg: Any) -> None:
    s = cfg.method.schedule
    validate_levels(cfg)
    number(s.finetune_steps, "method.schedule.finetune_steps", lo=1, integer=True)
    raw = s.selections
    if raw is None or not OmegaConf.is_list(raw) or not len(raw):
        raise ConfigError("method.schedule.selections", f"got {raw!r}; allowed: a non-empty list of mappings "
                                                        "{label, pattern, group, permute, block}")
    labels = []
    for i, item in enumerate(raw):
        field = f"method.schedule.selections[{i}]"
        if not OmegaConf.is_dict(item) or "label" not in item:
            raise ConfigError(field, f"got {item!r}; allowed: a mapping with a label and selection keys "
                                     f"({', '.join(SELECTION_KEYS)})")
        for k in item:
            if k != "label" and k not in SELECTION_KEYS:
                raise ConfigError(f"{field}.{k}", f"unknown key; allowed: label, {', '.join(SELECTION_KEYS)}")
        over = {k: v for k, v in item.items() if k != "label"}
        merged = OmegaConf.merge(cfg.method, {"selection": over})
        if merged.selection.pattern not in EXECUTION:
            raise ConfigError(f"{field}.pattern", f"got {merged.selection.pattern!r}; allowed: "
                                                  f"{', '.join(EXECUTION)}")
        validate_pattern(merged)
        labels.append(str(item.label))
    if len(set(labels)) != len(labels):
        raise ConfigError("method.schedule.selections", f"got labels {labels}; each arm needs its own label")


METHOD = Method(kind="pattern_compare", run=run_pattern_compare, validate=validate,
                figures="pattern_compare", permutes=True)
