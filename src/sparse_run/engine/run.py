"""One run directory's context (``Run``) and the one call every method trains through: ``Run.train_arm``.

``train_arm`` resumes a killed arm from its in-flight checkpoint, shares cached stages across runs, records the
arm's summary row, metrics and logger lines, and marks it done; the helpers here (seeds of named sub-streams,
pruning-event rows, the config hash) are what methods and the run lifecycle share.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig

from sparse_run import data as data_mod
from sparse_run import models
from sparse_run.sparsity import MaskSet, prunable
from sparse_run.sparsity.permute import check_selection
from sparse_run.store.files import RESTART_HINT, StateError, load_state, plain

from . import logger as logger_mod
from . import stages
from .results import RunWriter
from .train import StepHook, TrainResult, train

STATE = "checkpoints/progress.pt"
INFLIGHT = "checkpoints/inflight.pt"
TRAIN_STATE_KEYS = ("model", "masks", "optimizer", "scheduler", "generator", "order", "cursor", "step", "history",
                    "loss_sum", "wall_s")


def derive_seed(seed: int, *tags: Any) -> int:
    """A deterministic 31-bit seed for a named sub-stream (e.g. the reinit control of round 3)."""
    digest = hashlib.sha256(repr((seed, *tags)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def config_hash(cfg: dict[str, Any]) -> str:
    """Hash of the settings that determine results (paths, logger and display settings excluded)."""
    keep = {k: v for k, v in cfg.items()
            if k not in ("paths", "logger", "progress", "hydra", "cache", "threads", "restart",
                                       "claims", "dist")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def nnz_params(model: torch.nn.Module, masks: MaskSet) -> int:
    """Non-zero parameters by construction: every parameter (biases included) minus the pruned ones."""
    return sum(p.numel() for p in model.parameters()) - (masks.numel() - masks.nonzeros())


def record_event(run: "Run", round_: int, masks: MaskSet, targets: dict[str, float] | None,
                 total_target: float, *, method: str, variant: str, step: int = 0) -> None:
    """Per-layer target vs achieved density at one pruning event (``layers.csv``)."""
    run.writer.add_layers(round_, masks.report(targets), method=method, variant=variant, step=step,
                          total_target_density=total_target, total_density=masks.density())


@dataclass
class Run:
    """One run directory's worth of context shared by every arm."""

    cfg: DictConfig
    dir: Path
    data: data_mod.DataBundle
    writer: RunWriter
    log: logger_mod.Logger
    device: torch.device
    done: set[str] = field(default_factory=set)
    extra_state: dict[str, Any] = field(default_factory=dict)
    train_fn: Callable[..., TrainResult] | None = None  # None: train.train; lanes.py: its lock-step trainer

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    def context(self, round_: int, variant: str, method: str | None = None) -> dict[str, Any]:
        c = self.cfg
        return {"experiment": c.name, "method": method or c.method.name, "model": c.model.name, "dataset": c.dataset.name,
                "seed": self.seed, "budget": c.budget.name, "hardware": c.hardware.name,
                "round": round_, "variant": variant}

    def new_model(self, init_seed: int, model_cfg: Any = None) -> torch.nn.Module:
        return models.build(model_cfg or self.cfg.model, self.data.spec, init_seed).to(self.device)

    def new_masks(self, model: torch.nn.Module, check: bool = True) -> MaskSet:
        """All-ones masks of the prunable weights; refuses (one line) a selection pattern or permutation the
        model's shapes cannot take, before anything is trained (``check=False``: a model that is never pruned,
        such as a small-dense control)."""
        params = prunable(model, self.cfg.method.policy)
        if check:
            check_selection(model, params, self.cfg.method.selection)
        return MaskSet(params)

    def writer_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.writer.rows)

    # -- persistence for resume -------------------------------------------------------------
    def save_progress(self) -> None:
        self.writer.save(STATE, {"writer": self.writer.state(), "done": sorted(self.done), "extra": self.extra_state})

    def load_progress(self) -> bool:
        path = self.dir / STATE
        if not path.exists():
            return False
        state = load_state(path, keys=("writer", "done", "extra"))
        self.writer.load_state(state["writer"])
        self.done = set(state["done"])
        self.extra_state = state["extra"]
        return True

    # -- one arm ------------------------------------------------------------------------------
    def train_arm(self, key: str, model: torch.nn.Module, masks: MaskSet, round_: int, variant: str, *,
                  target_density: float, start_state: dict[str, Any] | None = None,
                  capture: tuple[int, Callable[[dict[str, Any]], None]] | None = None,
                  save_as: str | None = None, stage: str | None = None,
                  method: str | None = None, steps: int | None = None, hooks: list[StepHook] | None = None,
                  extra: dict[str, Any] | None = None, early_stop_from: int = 0,
                  row_extra: Callable[[TrainResult], dict[str, Any]] | None = None,
                  context: dict[str, Any] | None = None, data: data_mod.DataBundle | None = None) -> TrainResult:
        """Train one arm (resuming mid-arm if a checkpoint for it exists) and record its row.

        ``save_as`` stores the trained weights + masks before the arm is marked done, so a kill at
        any moment leaves either an unfinished arm (retrained from its last checkpoint) or a
        finished one with all its artefacts. ``stage`` names a shareable stage (``"dense"``): its
        result is cached under ``<results_dir>/.cache/`` keyed by the config that determines it,
        so other runs and sweep jobs reuse it instead of training it again.
        ``method`` names the row when one run compares several methods; ``steps`` overrides
        ``train.steps`` (fine-tuning); ``hooks`` run after every optimizer step (gradual pruning,
        N:M training); ``extra`` adds columns to the row and ``row_extra(result)`` computed ones;
        ``context`` adds or overrides the arm's identifying columns in the summary and metrics (e.g.
        ``pattern``; its ``seed`` also sets the arm's data order); ``early_stop_from`` restricts the
        early-stop search to evaluations at or after that step (gradual pruning: once the masks are final);
        ``data`` trains on another bundle than the run's (a training-data condition: noisy labels, noise inputs).
        """
        t = self.cfg.train
        data = data or self.data
        if stage and data is not self.data:
            raise ValueError(f"arm {key}: a cached stage ({stage}) trains on the run's own data")
        ctx = {**self.context(round_, variant, method), **(context or {})}
        inflight = self.dir / INFLIGHT
        resume = start_state
        if inflight.exists():
            saved = load_state(inflight, keys=("arm", "state"))
            if saved["arm"] == key:
                resume = saved["state"]
                missing = [k for k in TRAIN_STATE_KEYS if not isinstance(resume, dict) or k not in resume]
                if missing:
                    raise StateError(inflight, f"is not a training state (missing {', '.join(missing[:5])}); "
                                               + RESTART_HINT)
                if isinstance(saved.get("layers"), list):  # pruning events of this arm before the kill (hooks)
                    self.writer.layers = list(saved["layers"])

        def checkpoint(state: dict[str, Any]) -> None:
            self.writer.save(INFLIGHT, {"arm": key, "state": state, "layers": plain(self.writer.layers)})

        n_steps = int(t.steps if steps is None else steps)
        if int(t.get("probe_activations", 0)) > 0:  # activation sparsity at every evaluation (Lazy Neuron)
            from .probe import ProbeHook

            hooks = [*(hooks or []), ProbeHook(model, data.train_x, data.val_x, int(t.probe_activations),
                                               float(t.probe_tau))]

        def fit(cap: Any = capture) -> TrainResult:
            fn = self.train_fn or train
            return fn(model, masks, data, t, steps=n_steps, eval_every=min(int(t.eval_every), n_steps),
                      seed=int(ctx["seed"]), desc=f"round {round_} {variant}", checkpoint=checkpoint,
                      resume=resume, on_eval=lambda rec: self.log.log_eval(rec, ctx), capture=cap, hooks=hooks)

        if stage and self.cfg.cache:
            result = stages.cached(self, stage, model, masks, fit, capture)
        else:
            result = fit()
        masks.check()  # pruned weights are exactly zero after the last optimizer step
        if early_stop_from:
            best = min((h for h in result.history if h["step"] >= early_stop_from), key=lambda h: h["val_loss"],
                       default=result.history[-1])
            result.early_stop_step, result.test_acc_at_early_stop = int(best["step"]), best["test_acc"]
        row = {**ctx, "target_density": target_density, "density": masks.density(), "nonzeros": masks.nonzeros(),
               "prunable": masks.numel(), "test_acc": result.final_test_acc,
               "early_stop_step": result.early_stop_step, "test_acc_at_early_stop": result.test_acc_at_early_stop,
               "val_acc": result.final_val_acc, "steps": result.steps, "wall_s": round(result.wall_s, 3),
               "status": getattr(result, "status", "ok"), "nnz_params": nnz_params(model, masks),
               # the task's further final test metrics (ranking: test_ndcg) and the activation probe's
               **{k: v for k, v in result.history[-1].items()
                  if (k.startswith("test_") and k != "test_acc") or k.startswith("act_")},
               **({"kernels": result.extra["kernels"]} if result.extra.get("kernels") else {}),
               **(extra or {}),
               **(row_extra(result) if row_extra else {})}
        if save_as:
            self.writer.save(save_as, {"model": model.state_dict(), "masks": masks.state_dict()})
        self._finish_arm(key, row, result.history, ctx)
        return result

    def _finish_arm(self, key: str, row: dict[str, Any], history: list[dict[str, Any]], ctx: dict[str, Any]) -> None:
        self.writer.add(row, history, ctx)
        self.log.log_row(row)
        self.done.add(key)
        self.save_progress()
        inflight = self.dir / INFLIGHT
        if inflight.exists():
            inflight.unlink()

    def record_eval(self, key: str, model: torch.nn.Module, masks: MaskSet, round_: int, variant: str, *,
                    target_density: float, method: str | None = None, extra: dict[str, Any] | None = None) -> None:
        """Record an arm that is evaluated, not trained (a retraining-free reduction of a trained model): the
        task's validation and test metrics of ``model`` as it is, ``steps`` 0."""
        from .tasks import for_data

        model.eval()
        with torch.no_grad():
            val_loss, val_acc, test_acc, more = for_data(self.data).evaluate(model, self.data)
        ctx = self.context(round_, variant, method)
        acc = float(test_acc)
        row = {**ctx, "target_density": target_density, "density": masks.density(), "nonzeros": masks.nonzeros(),
               "prunable": masks.numel(), "test_acc": acc, "early_stop_step": 0, "test_acc_at_early_stop": acc,
               "val_acc": float(val_acc), "val_loss": float(val_loss), "steps": 0, "wall_s": None, "status": "ok",
               "nnz_params": nnz_params(model, masks), **{k: float(v) for k, v in more.items()}, **(extra or {})}
        self._finish_arm(key, row, [], ctx)

    def record_diverged(self, key: str, masks: MaskSet, round_: int, variant: str, *, target_density: float,
                        error: str, method: str | None = None, extra: dict[str, Any] | None = None) -> None:
        """Record an arm whose loss became NaN / infinite (``Diverged``) as one that learned nothing: its accuracy
        is what a constant prediction scores (the majority class's share of the test / validation labels),
        ``status`` is ``diverged`` and ``diverged_at`` names the step. A study of stability (parameter sharing's
        init std) needs the failure in its table, not a missing row or an aborted run."""
        def majority(y: torch.Tensor) -> float:
            return float(torch.bincount(y.flatten().long()).max()) / y.numel()

        ctx = self.context(round_, variant, method)
        row = {**ctx, "target_density": target_density, "density": masks.density(), "nonzeros": masks.nonzeros(),
               "prunable": masks.numel(), "test_acc": majority(self.data.test_y), "early_stop_step": None,
               "test_acc_at_early_stop": majority(self.data.test_y), "val_acc": majority(self.data.val_y), "steps": None, "wall_s": None,
               "status": "diverged", "diverged_at": error, **(extra or {})}
        print(f"sparse-run: {key} diverged ({error}); recorded at the majority-class accuracy, status diverged")
        self._finish_arm(key, row, [], ctx)
