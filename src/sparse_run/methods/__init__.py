"""Methods: one module per schedule kind, and THE registry (``REGISTRY``, kind → ``Method``) — the only list
of schedule kinds. Studies (``sparse_run.studies``) are registered here too, as kinds of their own.

``validate(cfg)`` is the one validation of a config: the generic checks (``config``), the engine's
(``train.*``, logger) and the method's own, in that order. May import studies, report, engine, hardware and
everything below; never execute or the CLI.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from sparse_run.config import ConfigError, choice, number
from sparse_run.config import validate as generic
from sparse_run.engine import arms, checks, distributed
from sparse_run.sparsity import CRITERIA, SCOPES
from sparse_run.sparsity.patterns import PATTERNS
from sparse_run.sparsity.patterns import validate_method as validate_pattern
from sparse_run.studies import dass, graph_rnn, kernel_study, lazy_neuron, topk_theory

from . import (at_init, dense, dynamic, expert_prune, gradual, iterative, nm, oneshot, pattern_compare, random_search,
               sharing)
from .base import Method

REGISTRY: dict[str, Method] = {m.kind: m for m in (
    dense.METHOD,
    iterative.METHOD,
    oneshot.METHOD,
    at_init.METHOD,
    gradual.METHOD,
    dynamic.METHOD,
    sharing.METHOD,
    random_search.METHOD,
    expert_prune.METHOD,
    nm.METHOD,
    nm.COMPARE,
    pattern_compare.METHOD,
    # studies: kinds that are not pruning schedules
    Method(kind="kernel_study", run=kernel_study.run_study, validate=kernel_study.validate, figures="none",
           trains=False),
    Method(kind="graph_rnn", run=graph_rnn.run_graph_rnn, validate=graph_rnn.validate, model_arms=True,
           patterns=("unstructured",), figures="rnn"),
    Method(kind="lazy_neuron", run=lazy_neuron.run_study, validate=lazy_neuron.validate, model_arms=True,
           figures="lazy_neuron", trains=False),
    Method(kind="dass", run=dass.run_study, validate=dass.validate, figures="dass"),
    Method(kind="topk_moe_theory", run=topk_theory.run_study, validate=topk_theory.validate, figures="none",
           trains=False),
)}
CONTROL_VARIANTS = ("reinit", "random", "small_dense")

__all__ = ["REGISTRY", "Method", "validate", "selects"]


def _kinds(flag: str) -> tuple[str, ...]:
    return tuple(k for k, m in REGISTRY.items() if getattr(m, flag))


def validate(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` on the first field that is out of range or incompatible."""
    generic.validate_run(cfg)
    checks.validate_train(cfg, lockstep=_kinds("lockstep"))
    generic.validate_budget(cfg)
    m, kind = cfg.method, cfg.method.schedule.kind
    choice(m.criterion, "method.criterion", CRITERIA)
    choice(m.selection.scope, "method.selection.scope", SCOPES)
    choice(m.selection.pattern, "method.selection.pattern", PATTERNS)
    validate_pattern(m)
    nm_kinds = tuple(k for k, meth in REGISTRY.items() if meth.patterns == ("nm",))
    if m.selection.pattern == "nm" or kind in nm_kinds:
        if m.selection.pattern != "nm" or kind not in nm_kinds:
            raise ConfigError("method.selection.pattern", f"got {m.selection.pattern!r} with schedule.kind="
                              f"{kind}; pattern nm goes with schedule.kind in {', '.join(nm_kinds)}")
    choice(kind, "method.schedule.kind", REGISTRY)
    _validate_data_parallel(cfg, kind)
    if m.selection.permute and not REGISTRY[kind].permutes:
        raise ConfigError("method.selection.permute", f"got true with schedule.kind={kind}; allowed: false, or a kind "
                                                      f"that prunes once per arm: {', '.join(_kinds('permutes'))}")
    for v in m.controls.variants:
        choice(v, "method.controls.variants", CONTROL_VARIANTS)
    number(m.policy.last_rate_scale, "method.policy.last_rate_scale", lo=0)
    checks.validate_logger(cfg)
    generic.validate_logger_mode(cfg)
    generic.validate_dataset(cfg)
    _validate_method(cfg, REGISTRY[kind])


def _validate_data_parallel(cfg: DictConfig, kind: str) -> None:
    """Under ``torchrun`` (WORLD_SIZE > 1): the world size, the batch split and a kind whose decisions are made
    from synchronised state (``Method.data_parallel``)."""
    ctx = distributed.from_env()
    distributed.check(cfg.dist, cfg, ctx)
    if ctx.active and not REGISTRY[kind].data_parallel:
        raise ConfigError("method.schedule.kind", f"got {kind} in a {ctx.world}-process run; its scores or search "
                                                  "are not all-reduced across processes; allowed: "
                                                  f"{', '.join(_kinds('data_parallel'))} (or one process)")


def _validate_method(cfg: DictConfig, method: Method) -> None:
    """The method library's shared fields (arms, criteria list, controls, criterion settings), then the kind's."""
    m, kind = cfg.method, cfg.method.schedule.kind
    arms.validate(cfg, kinds_models=_kinds("model_arms"), kinds_policies=_kinds("policy_arms"))
    crits = m.criteria
    if crits is not None:
        if not method.several_criteria or not list(crits):
            raise ConfigError("method.criteria", f"got {crits!r}; a non-empty list, only with schedule.kind "
                                                 f"{' or '.join(sorted(_kinds('several_criteria')))} (use method.criterion "
                                                 "otherwise)")
        for i, c in enumerate(crits):
            choice(c, f"method.criteria[{i}]", CRITERIA)
        if len(set(crits)) != len(crits):
            raise ConfigError("method.criteria", f"got {list(crits)}; each criterion at most once")
    for v in m.controls.variants:
        choice(v, f"method.controls.variants (schedule.kind={kind})", method.controls)
    for pattern, scale in m.policy.rate_scale.items():
        number(scale, f"method.policy.rate_scale.{pattern}", lo=0)
    number(m.synflow_rounds, "method.synflow_rounds", lo=1, integer=True)
    number(m.grasp_temperature, "method.grasp_temperature", lo=0, lo_open=True)
    if method.validate is not None:
        method.validate(cfg)


def selects(cfg: Any) -> bool:
    """Whether the config's kind selects weights in a pattern a hardware target may constrain."""
    method = REGISTRY.get(cfg.method.schedule.kind)  # an unknown kind is validate's one-line error
    return method is not None and method.patterns is not None
