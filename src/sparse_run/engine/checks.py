"""The engine's settings checked before any work: ``train.*`` (the loop, its kernels, lock-step replicates)
and the logger kind. Called by ``methods.validate``, which knows which kinds run in lock-step."""
from __future__ import annotations

from typing import Any

from sparse_run.config import ConfigError, choice, number

from . import kernels, lanes
from .logger import KINDS as LOGGERS
from .onednn import KERNELS
from .train import LR_SCHEDULES, OPTIMIZERS


def validate_train(cfg: Any, lockstep: tuple[str, ...]) -> None:
    t = cfg.train
    choice(t.optimizer, "train.optimizer", OPTIMIZERS)
    number(t.lr, "train.lr", lo=0, lo_open=True)
    number(t.batch_size, "train.batch_size", lo=1, integer=True)
    number(t.steps, "train.steps", lo=1, integer=True)
    number(t.eval_every, "train.eval_every", lo=1, integer=True)
    number(t.weight_decay, "train.weight_decay", lo=0)
    number(t.momentum, "train.momentum", lo=0, hi=1, hi_open=True)
    choice(t.lr_schedule, "train.lr_schedule", LR_SCHEDULES)
    number(t.warmup_steps, "train.warmup_steps", lo=0, integer=True)
    number(t.gamma, "train.gamma", lo=0)
    for i, f in enumerate(t.milestones):
        number(f, f"train.milestones[{i}]", lo=0, hi=1)
    choice(t.linear_kernel, "train.linear_kernel", KERNELS)
    if t.linear_kernel == "onednn" and (cfg.device == "cuda" or t.compile):
        raise ConfigError("train.linear_kernel", "onednn runs on CPU without train.compile; use auto or aten")
    choice(t.sparse_kernel, "train.sparse_kernel", kernels.KINDS)
    if t.sparse_kernel in ("csr", "cpp") and (cfg.device == "cuda" or t.compile or t.replicates > 1):
        raise ConfigError("train.sparse_kernel", f"{t.sparse_kernel} runs on CPU, without train.compile and with "
                                                 "train.replicates = 1; use auto or dense")
    number(t.checkpoint_every, "train.checkpoint_every", lo=0, integer=True)
    if t.grad_clip is not None:
        number(t.grad_clip, "train.grad_clip", lo=0)  # lanes clip each lane's own norm, as single runs do
    number(t.probe_activations, "train.probe_activations", lo=0, integer=True)
    number(t.probe_tau, "train.probe_tau", lo=0)
    if t.probe_activations and t.replicates > 1:
        raise ConfigError("train.probe_activations", f"got {t.probe_activations} with train.replicates = "
                                                     f"{t.replicates}; the probe reads one model (use 1 replicate)")
    lanes.check_config(cfg, lockstep)  # train.replicates


def validate_logger(cfg: Any) -> None:
    choice(cfg.logger.kind, "logger.kind", LOGGERS)
