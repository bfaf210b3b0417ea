"""Generic validation of a composed config: the keys every experiment has (name, paths, seed, device, threads,
budget, dataset, logger mode). Runs before any work (no data loaded, nothing written), so a typo costs a second
and a one-line message. The engine checks ``train.*``, each method its own settings; ``methods.validate``
composes all of them in one call.
"""
from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError, choice, finite_floats, number
from .schema import check_keys

DEVICES = ("cpu", "cuda", "auto")
# `name` is the first directory level under paths.results_dir: one path component, no `..`
NAME_PATTERN = re.compile(r"^\w[\w.-]{0,99}$")
LOGGER_MODES = ("offline", "online", "disabled")


def check_name(name: Any) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError("name", f"got {name!r}; allowed: 1-100 letters, digits, '_', '.', '-', starting with a "
                                  "letter, digit or '_' (it names a directory under paths.results_dir)")


def check_results_dir(value: Any) -> None:
    """The results root must be a non-empty path (an empty one would put runs at ``/``)."""
    if value is None or not str(value).strip():
        raise ConfigError("paths.results_dir", f"got {value!r}; allowed: a non-empty directory path "
                                               "(default: results)")


def validate_run(cfg: DictConfig) -> None:
    """No nan / inf anywhere; no key outside the schema; name, results root, seed, device, threads."""
    finite_floats(OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg)
    check_keys(cfg)
    check_name(cfg.name)
    check_results_dir(cfg.paths.results_dir)
    number(cfg.seed, "seed", lo=0, integer=True)
    choice(cfg.device, "device", DEVICES)
    if cfg.threads is not None:
        number(cfg.threads, "threads", lo=1, integer=True)


def validate_budget(cfg: DictConfig) -> None:
    b = cfg.budget
    number(b.steps_scale, "budget.steps_scale", lo=0, lo_open=True)
    if b.max_rounds is not None:
        number(b.max_rounds, "budget.max_rounds", lo=0, integer=True)
    if b.evals is not None:
        number(b.evals, "budget.evals", lo=1, integer=True)


def validate_logger_mode(cfg: DictConfig) -> None:
    if cfg.logger.get("mode") is not None:
        choice(cfg.logger.mode, "logger.mode", LOGGER_MODES)


def validate_dataset(cfg: DictConfig) -> None:
    """``dataset.val_size`` and a batch that fits in the training split (after the budget's subset)."""
    d, b, t = cfg.dataset, cfg.budget, cfg.train
    number(d.val_size, "dataset.val_size", lo=0, integer=True)
    if d.train_examples:
        number(d.val_size, "dataset.val_size", lo=0, hi=int(d.train_examples) - 1, integer=True)
        available = int(d.train_examples) - int(d.val_size)
        if b.train_subset:
            available = min(available, int(b.train_subset))
        number(t.batch_size, "train.batch_size", lo=1, hi=available, integer=True)
