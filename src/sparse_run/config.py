"""From the composed Hydra config to the effective one: validate, then apply the budget.

Validation runs before any work (no data loaded, nothing written), so a typo costs a second and
a one-line message. The budget (``budget/``) is applied by one rule for every experiment: step
counts — ``train.steps``, ``train.warmup_steps`` and every ``method.schedule`` key ending in
``_step`` or ``_steps`` — are multiplied by ``budget.steps_scale``; rounds are capped by
``budget.max_rounds``; ``budget.evals`` sets the evaluation cadence. A key given explicitly on the
command line is left as given (``explicit``), and the effective config lists it in ``budget.unscaled``.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf, open_dict

from . import arms, graph_rnn, lanes
from .logger import KINDS as LOGGERS
from .sparsity import CRITERIA, SCOPES
from .sparsity import nm as nm_sel
from .sparsity.patterns import PATTERNS
from .sparsity.patterns import validate_method as validate_pattern
from .sparsity.selection import PATTERNS as MULTI_LEVEL_PATTERNS
from .onednn import KERNELS
from .train import LR_SCHEDULES, OPTIMIZERS
from .validate import ConfigError, choice, finite_floats, number

# one per runner in pipeline.RUNNERS; kernel_study (hw_sparse_1x1) and graph_rnn (rnn_random_graph_reber)
# are runners of their own experiments
SCHEDULE_KINDS = ("none", "iterative", "oneshot", "at_init", "gradual", *nm_sel.KINDS, "kernel_study", "graph_rnn")
REWINDS = ("init", "step", "none")
DEVICES = ("cpu", "cuda", "auto")
CONTROL_VARIANTS = ("reinit", "random", "small_dense")
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


def validate(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` on the first field that is out of range or incompatible."""
    finite_floats(OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg)
    check_name(cfg.name)
    check_results_dir(cfg.paths.results_dir)
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
    number(t.get("warmup_steps", 0), "train.warmup_steps", lo=0, integer=True)
    number(t.get("gamma", 0.1), "train.gamma", lo=0)
    for i, f in enumerate(t.get("milestones") or []):
        number(f, f"train.milestones[{i}]", lo=0, hi=1)
    choice(t.get("linear_kernel", "auto"), "train.linear_kernel", KERNELS)
    if t.get("linear_kernel") == "onednn" and (cfg.device == "cuda" or t.get("compile")):
        raise ConfigError("train.linear_kernel", "onednn runs on CPU without train.compile; use auto or aten")
    number(t.checkpoint_every, "train.checkpoint_every", lo=0, integer=True)
    if t.get("grad_clip") is not None:
        number(t.grad_clip, "train.grad_clip", lo=0)
        if t.grad_clip and int(t.get("replicates", 1) or 1) > 1:
            raise ConfigError("train.grad_clip", f"got {t.grad_clip} with train.replicates > 1; allowed there: null")
    lanes.check_config(cfg)  # train.replicates
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
    validate_pattern(m)
    if m.selection.pattern == "nm" or m.schedule.kind in nm_sel.KINDS:
        if m.selection.pattern != "nm" or m.schedule.kind not in nm_sel.KINDS:
            raise ConfigError("method.selection.pattern", f"got {m.selection.pattern!r} with schedule.kind="
                              f"{m.schedule.kind}; pattern nm goes with schedule.kind in {', '.join(nm_sel.KINDS)}")
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
    if cfg.logger.get("mode") is not None:
        choice(cfg.logger.mode, "logger.mode", LOGGER_MODES)
    d = cfg.dataset
    number(d.val_size, "dataset.val_size", lo=0, integer=True)
    if d.get("train_examples"):
        number(d.val_size, "dataset.val_size", lo=0, hi=int(d.train_examples) - 1, integer=True)
        available = int(d.train_examples) - int(d.val_size)
        if b.train_subset:
            available = min(available, int(b.train_subset))
        number(t.batch_size, "train.batch_size", lo=1, hi=available, integer=True)
    validate_method(cfg)


# controls each schedule kind can run, and criteria the iterative runner can score with (no data there)
KIND_CONTROLS = {"none": (), "iterative": ("reinit", "random"), "oneshot": ("small_dense",),
                 "at_init": ("small_dense",), "gradual": ("small_dense",), "kernel_study": (), "graph_rnn": (),
                 **{kind: () for kind in nm_sel.KINDS}}
ITERATIVE_CRITERIA = ("magnitude", "random")
ITERATIVE_SCOPES = ("layerwise", "global")


def _fractions(values: Any, field: str, *, lo: float, hi: float, lo_open: bool, hi_open: bool) -> list[float]:
    vals = [values] if isinstance(values, (int, float)) else list(values)
    if not vals:
        raise ConfigError(field, "got an empty list; give at least one level")
    for i, v in enumerate(vals):
        number(v, f"{field}[{i}]", lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)
    return [float(v) for v in vals]


def validate_method(cfg: DictConfig) -> None:
    """The method library's fields (criteria list, schedule kinds' keys, controls) — see README "Methods"."""
    m, s, steps = cfg.method, cfg.method.schedule, int(cfg.train.steps)
    arms.validate(cfg, kinds_models=("oneshot", "graph_rnn"), kinds_policies=("oneshot",))
    if s.kind == "graph_rnn":
        graph_rnn.validate(cfg)
    crits = m.get("criteria")
    if crits is not None:
        if s.kind not in ("at_init", "oneshot") or not list(crits):
            raise ConfigError("method.criteria", f"got {crits!r}; a non-empty list, only with schedule.kind "
                                                 "at_init or oneshot (use method.criterion otherwise)")
        for i, c in enumerate(crits):
            choice(c, f"method.criteria[{i}]", CRITERIA)
        if len(set(crits)) != len(crits):
            raise ConfigError("method.criteria", f"got {list(crits)}; each criterion at most once")
    for v in m.controls.variants:
        choice(v, f"method.controls.variants (schedule.kind={s.kind})", KIND_CONTROLS[s.kind])
    for pattern, scale in (m.policy.get("rate_scale") or {}).items():
        number(scale, f"method.policy.rate_scale.{pattern}", lo=0)
    if m.get("synflow_rounds") is not None:
        number(m.synflow_rounds, "method.synflow_rounds", lo=1, integer=True)
    if m.get("grasp_temperature") is not None:
        number(m.grasp_temperature, "method.grasp_temperature", lo=0, lo_open=True)
    if s.kind == "iterative":
        choice(m.criterion, "method.criterion (schedule.kind=iterative)", ITERATIVE_CRITERIA)
        choice(m.selection.scope, "method.selection.scope (schedule.kind=iterative)", ITERATIVE_SCOPES)
        rewinds = s.get("rewinds")
        if rewinds is not None:
            if not list(rewinds) or len(set(rewinds)) != len(rewinds):
                raise ConfigError("method.schedule.rewinds", f"got {rewinds!r}; a non-empty list without repeats")
            for i, r in enumerate(rewinds):
                choice(r, f"method.schedule.rewinds[{i}]", REWINDS)
        return
    if s.kind in ("none", "kernel_study", "graph_rnn", *nm_sel.KINDS):  # N:M kinds: nm_sel.validate above
        return
    choice(m.selection.pattern, f"method.selection.pattern (schedule.kind={s.kind})", MULTI_LEVEL_PATTERNS)
    given = [k for k in ("densities", "sparsities") if s.get(k) is not None]
    if s.kind == "gradual" and s.get("final_sparsity") is not None:
        given.append("final_sparsity")
    if len(given) != 1:
        keys = "densities | sparsities" + (" | final_sparsity" if s.kind == "gradual" else "")
        raise ConfigError("method.schedule", f"got {given or 'none'}; give exactly one of {keys}")
    key = given[0]
    full = s.kind == "oneshot"  # one-shot may prune everything (100 %: the sparse-RNN thesis' end point)
    if key == "densities":
        dens = _fractions(s.densities, "method.schedule.densities", lo=0, hi=1, lo_open=not full, hi_open=False)
    else:
        spars = _fractions(s[key], f"method.schedule.{key}", lo=0, hi=1, lo_open=False, hi_open=not full)
        dens = [1 - v for v in spars]
    if s.kind == "oneshot":
        number(s.finetune_steps, "method.schedule.finetune_steps", lo=1, integer=True)
        if s.get("finetune_evals") is not None:
            number(s.finetune_evals, "method.schedule.finetune_evals", lo=1, hi=int(s.finetune_steps), integer=True)
        if s.get("models") is not None and "small_dense" in m.controls.variants:
            raise ConfigError("method.controls.variants", "small_dense with method.schedule.models is not "
                                                          "supported; allowed there: []")
    if s.kind == "gradual":
        s_i = number(s.initial_sparsity, "method.schedule.initial_sparsity", lo=0, hi=1, hi_open=True)
        if any(1 - d < s_i for d in dens):
            raise ConfigError("method.schedule.initial_sparsity",
                              f"got {s_i}; must be <= every final sparsity ({[round(1 - d, 6) for d in dens]})")
        t0 = number(s.start_step, "method.schedule.start_step", lo=0, hi=steps, integer=True)
        number(s.end_step, "method.schedule.end_step", lo=t0, hi=steps, integer=True)
        number(s.every_steps, "method.schedule.every_steps", lo=1, integer=True)


def explicit_keys(overrides: Iterable[str]) -> list[str]:
    """The config keys that command-line overrides set (``key=value``, ``+key=``, ``++key=``), in order.
    Group selections (``budget=smoke``) are keys too, harmlessly: the budget only looks at value keys."""
    keys: list[str] = []
    for o in overrides:
        if o.startswith(("-", "~")) or "=" not in o:
            continue
        key = o.split("=", 1)[0].lstrip("+")
        if not key.startswith("hydra") and key not in keys:
            keys.append(key)
    return keys


def apply_budget(cfg: DictConfig, explicit: Iterable[str] = ()) -> DictConfig:
    """Return a copy of ``cfg`` with the budget applied (the copy is what the run records).

    Keys in ``explicit`` (given on the command line) keep their value: a user who asks for
    ``train.steps=200`` under ``budget=smoke`` gets 200 steps, not 200 × the budget's scale. The
    ones the budget would have changed are listed in ``budget.unscaled``.
    """
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    b = out.budget
    scale, floor = float(b.steps_scale), int(b.min_steps)
    keep = set(explicit)
    unscaled: list[str] = []

    def scaled(v: int) -> int:
        return max(floor, int(round(v * scale))) if v else 0

    def put(node: Any, key: str, path: str, value: Any) -> None:
        """Set ``node[key] = value`` unless ``path`` was given explicitly."""
        if path in keep:
            if value != node[key]:
                unscaled.append(path)
            return
        node[key] = value

    with open_dict(out):
        t = out.train
        put(t, "steps", "train.steps", scaled(t.steps))
        put(t, "warmup_steps", "train.warmup_steps", int(round(t.warmup_steps * scale)))
        sched = out.method.schedule
        for key in list(sched.keys()):
            if str(key).endswith(("_step", "_steps")) and isinstance(sched[key], int):
                # a non-zero step count stays >= 1 (e.g. gradual pruning's every_steps under budget=smoke)
                put(sched, key, f"method.schedule.{key}", max(1, int(round(sched[key] * scale))) if sched[key] else 0)
        if b.evals:
            put(t, "eval_every", "train.eval_every", max(1, t.steps // int(b.evals)))
        t.eval_every = min(t.eval_every, t.steps)
        if t.checkpoint_every:
            put(t, "checkpoint_every", "train.checkpoint_every", max(t.eval_every, scaled(t.checkpoint_every)))
        if "rounds" in sched and b.max_rounds is not None:
            put(sched, "rounds", "method.schedule.rounds", min(int(sched.rounds), int(b.max_rounds)))
        if b.control_rounds is not None:
            put(out.method.controls, "rounds", "method.controls.rounds", list(b.control_rounds))
        if not b.get("chance_check", True):
            t.chance_check = False
        if unscaled:
            b.unscaled = unscaled
    return out


def budget_note(eff: DictConfig) -> str | None:
    """The one line a run prints when explicit command-line values were kept unscaled."""
    kept = list(eff.budget.get("unscaled") or [])
    if not kept:
        return None
    values = ", ".join(f"{k}={OmegaConf.select(eff, k)}" for k in kept)
    return (f"sparse-run: budget={eff.budget.name} leaves {values} as given on the command line "
            "(explicit values are not scaled by the budget)")


def effective(cfg: DictConfig, explicit: Iterable[str] = ()) -> DictConfig:
    """Validate the composed config and return the effective (budgeted) one; ``explicit``: the keys
    given on the command line (see ``explicit_keys``), which the budget leaves as they are."""
    validate(cfg)
    eff = apply_budget(cfg, explicit)
    validate(eff)
    return eff


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
