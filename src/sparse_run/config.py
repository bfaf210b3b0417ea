"""From the composed Hydra config to the effective one: validate, then apply the budget.

Validation runs before any work (no data loaded, nothing written), so a typo costs a second and
a one-line message. The budget (``budget/``) is applied by one rule for every experiment: step
counts — ``train.steps``, ``train.warmup_steps`` and every ``method.schedule`` key ending in
``_step`` or ``_steps`` — are multiplied by ``budget.steps_scale``; rounds are capped by
``budget.max_rounds``; ``budget.evals`` sets the evaluation cadence.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from .logger import KINDS as LOGGERS
from .sparsity import CRITERIA, SCOPES
from .sparsity import nm as nm_sel
from .train import LR_SCHEDULES, OPTIMIZERS
from .validate import ConfigError, choice, number

SCHEDULE_KINDS = ("none", "iterative", *nm_sel.KINDS)
REWINDS = ("init", "step", "none")
CONTROL_VARIANTS = ("reinit",)
PATTERNS = ("unstructured", "nm")
DEVICES = ("cpu", "cuda", "auto")


def validate(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` on the first field that is out of range or incompatible."""
    number(cfg.seed, "seed", lo=0, integer=True)
    choice(cfg.device, "device", DEVICES)
    if cfg.threads is not None:
        number(cfg.threads, "threads", lo=1, integer=True)
    t = cfg.train
    choice(t.optimizer, "train.optimizer", OPTIMIZERS)
    number(t.lr, "train.lr", lo=0, lo_open=True)
    number(t.batch_size, "train.batch_size", lo=1, integer=True)
    number(t.steps, "train.steps", lo=1, integer=True)
    number(t.eval_every, "train.eval_every", lo=1, integer=True)
    number(t.weight_decay, "train.weight_decay", lo=0)
    number(t.momentum, "train.momentum", lo=0, hi=1, hi_open=True)
    choice(t.lr_schedule, "train.lr_schedule", LR_SCHEDULES)
    number(t.checkpoint_every, "train.checkpoint_every", lo=0, integer=True)
    b = cfg.budget
    number(b.steps_scale, "budget.steps_scale", lo=0, lo_open=True)
    if b.max_rounds is not None:
        number(b.max_rounds, "budget.max_rounds", lo=0, integer=True)
    if b.evals is not None:
        number(b.evals, "budget.evals", lo=1, integer=True)
    m = cfg.method
    choice(m.criterion, "method.criterion", CRITERIA)
    choice(m.selection.scope, "method.selection.scope", SCOPES)
    choice(m.selection.pattern, "method.selection.pattern", PATTERNS)
    if m.selection.pattern == "nm" or m.schedule.kind in nm_sel.KINDS:
        if m.selection.pattern != "nm":
            raise ConfigError("method.selection.pattern", f"got {m.selection.pattern!r}; "
                              f"schedule.kind={m.schedule.kind} needs: nm")
        nm_sel.validate(m)
    s = m.schedule
    choice(s.kind, "method.schedule.kind", SCHEDULE_KINDS)
    if s.kind == "iterative":
        number(s.rounds, "method.schedule.rounds", lo=0, integer=True)
        number(s.rate, "method.schedule.rate", lo=0, hi=1, lo_open=True, hi_open=True)
        choice(s.rewind, "method.schedule.rewind", REWINDS)
        number(s.rewind_step, "method.schedule.rewind_step", lo=0, hi=t.steps - 1, integer=True)
    for v in m.controls.variants:
        choice(v, "method.controls.variants", CONTROL_VARIANTS)
    number(m.policy.last_rate_scale, "method.policy.last_rate_scale", lo=0)
    choice(cfg.logger.kind, "logger.kind", LOGGERS)
    d = cfg.dataset
    number(d.val_size, "dataset.val_size", lo=0, integer=True)
    if d.get("train_examples"):
        number(d.val_size, "dataset.val_size", lo=0, hi=int(d.train_examples) - 1, integer=True)
        available = int(d.train_examples) - int(d.val_size)
        if b.train_subset:
            available = min(available, int(b.train_subset))
        number(t.batch_size, "train.batch_size", lo=1, hi=available, integer=True)


def apply_budget(cfg: DictConfig) -> DictConfig:
    """Return a copy of ``cfg`` with the budget applied (the copy is what the run records)."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    b = out.budget
    scale, floor = float(b.steps_scale), int(b.min_steps)

    def scaled(v: int) -> int:
        return max(floor, int(round(v * scale))) if v else 0

    with open_dict(out):
        t = out.train
        t.steps = scaled(t.steps)
        t.warmup_steps = int(round(t.warmup_steps * scale))
        sched = out.method.schedule
        for key in list(sched.keys()):
            if str(key).endswith(("_step", "_steps")) and isinstance(sched[key], int):
                sched[key] = int(round(sched[key] * scale))
        if b.evals:
            t.eval_every = max(1, t.steps // int(b.evals))
        t.eval_every = min(t.eval_every, t.steps)
        if t.checkpoint_every:
            t.checkpoint_every = max(t.eval_every, scaled(t.checkpoint_every))
        if "rounds" in sched and b.max_rounds is not None:
            sched.rounds = min(int(sched.rounds), int(b.max_rounds))
        if b.control_rounds is not None:
            out.method.controls.rounds = list(b.control_rounds)
    return out


def effective(cfg: DictConfig) -> DictConfig:
    """Validate the composed config and return the effective (budgeted) one."""
    validate(cfg)
    eff = apply_budget(cfg)
    validate(eff)
    return eff


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
