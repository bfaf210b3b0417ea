"""Arms over model and layer-policy variants in one run (``method.schedule.models``, ``method.policies``).

The sparse-RNN thesis compares four cells × three pruning scopes in one table, so one run must
hold several models and several prunable-weight selections. Each is a list of overrides: a model
arm merges into ``model`` (e.g. ``{cell: gru}``), a policy arm into ``method.policy`` (e.g.
``{label: h2h, exclude: ["rnn.weight_ih_l*"]}``). ``label`` names the arm in the summary's
``model_arm`` / ``policy_arm`` columns (default: the values, joined). A derived ``Run`` sees the
merged config, so everything downstream — model builds, the prunable set, the dense stage's cache
key — follows the arm without knowing about arms.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from sparse_run.config.errors import ConfigError, choice

if TYPE_CHECKING:
    from .run import Run

Arm = tuple[str, dict[str, Any]]


def _label(over: dict[str, Any]) -> str:
    vals = [v for k, v in over.items() if k != "label"]
    if len(vals) == 1:
        return str(vals[0])
    return ",".join(f"{k}={v}" for k, v in over.items() if k != "label") or "default"


def _arms(raw: Any) -> list[Arm]:
    if raw is None:
        return [("", {})]
    out = []
    for item in raw:
        over = OmegaConf.to_container(item, resolve=True) if OmegaConf.is_config(item) else dict(item)
        out.append((str(over.get("label") or _label(over)), {k: v for k, v in over.items() if k != "label"}))
    return out


def model_arms(cfg: Any) -> list[Arm]:
    """``(label, model overrides)`` per model arm; one unlabelled arm when none are given."""
    return _arms(cfg.method.schedule.models)


def policy_arms(cfg: Any) -> list[Arm]:
    """``(label, method.policy overrides)`` per policy arm; one unlabelled arm when none are given."""
    return _arms(cfg.method.policies)


def derive(run: "Run", *, model: dict[str, Any] | None = None, policy: dict[str, Any] | None = None,
           train: dict[str, Any] | None = None) -> "Run":
    """A ``Run`` sharing ``run``'s directory, writer, data and progress, with overrides merged into its config."""
    over: dict[str, Any] = {}
    if model:
        over["model"] = model
    if policy:
        over["method"] = {"policy": policy}
    if train:
        over["train"] = train
    if not over:
        return run
    return dataclasses.replace(run, cfg=OmegaConf.merge(run.cfg, over))


def validate(cfg: Any, kinds_models: tuple[str, ...], kinds_policies: tuple[str, ...]) -> None:
    """Lists of mappings, known keys only, unique labels; only with schedule kinds that run arms."""
    kind = cfg.method.schedule.kind
    for field, raw, base, kinds in (("method.schedule.models", cfg.method.schedule.models, cfg.model,
                                     kinds_models),
                                    ("method.policies", cfg.method.policies, cfg.method.policy,
                                     kinds_policies)):
        if raw is None:
            continue
        if kind not in kinds:
            raise ConfigError(field, f"got a list with schedule.kind={kind}; allowed only with "
                                     f"schedule.kind in {', '.join(kinds)}")
        if not OmegaConf.is_list(raw) or not len(raw):
            raise ConfigError(field, f"got {raw!r}; allowed: a non-empty list of mappings of overrides")
        for i, item in enumerate(raw):
            if not OmegaConf.is_dict(item):
                raise ConfigError(f"{field}[{i}]", f"got {item!r}; allowed: a mapping, e.g. {{cell: gru}}")
            for key in item:
                if key != "label" and key not in base:
                    raise ConfigError(f"{field}[{i}].{key}", f"unknown key; allowed: label, {', '.join(map(str, base))}")
            if field.endswith("models") and base.arch == "rnn" and "cell" in item:
                from sparse_run.models.rnn import CELLS

                choice(item.cell, f"{field}[{i}].cell", CELLS)
        labels = [label for label, _ in _arms(raw)]
        if len(set(labels)) != len(labels):
            raise ConfigError(field, f"got labels {labels}; each arm needs its own label")
