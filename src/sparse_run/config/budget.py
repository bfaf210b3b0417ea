"""The budget rule: from the validated composed config to the effective one.

The budget (``budget/``) is applied by one rule for every experiment: step counts — ``train.steps``,
``train.warmup_steps`` and every ``method.schedule`` key ending in ``_step`` or ``_steps`` — are multiplied by
``budget.steps_scale``; rounds are capped by ``budget.max_rounds``; ``budget.evals`` sets the evaluation cadence.
A key given explicitly on the command line is left as given (``explicit``), and the effective config lists it
in ``budget.unscaled``.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf, open_dict


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
    # the config is validated once, after this rule: an out-of-range value is passed through as it is (not
    # clamped into range), so the validation names it; nothing is scaled by a scale that is not a positive number
    usable = math.isfinite(scale) and scale > 0
    keep = set(explicit)
    unscaled: list[str] = []

    def scaled(v: int) -> int:
        return max(floor, int(round(v * scale))) if v > 0 and usable else v

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
        if t.warmup_steps > 0 and usable:
            put(t, "warmup_steps", "train.warmup_steps", int(round(t.warmup_steps * scale)))
        sched = out.method.schedule
        for key in list(sched.keys()):
            if str(key).endswith(("_step", "_steps")) and isinstance(sched[key], int) and sched[key] > 0 and usable:
                # a non-zero step count stays >= 1 (e.g. gradual pruning's every_steps under budget=smoke)
                put(sched, key, f"method.schedule.{key}", max(1, int(round(sched[key] * scale))))
        if b.evals is not None and b.evals >= 1:
            put(t, "eval_every", "train.eval_every", max(1, t.steps // int(b.evals)))
        t.eval_every = min(t.eval_every, t.steps)
        if t.checkpoint_every > 0:
            put(t, "checkpoint_every", "train.checkpoint_every", max(t.eval_every, scaled(t.checkpoint_every)))
        rounds = sched.rounds if "rounds" in sched else None
        if isinstance(rounds, int) and not isinstance(rounds, bool) and b.max_rounds is not None and b.max_rounds >= 0:
            put(sched, "rounds", "method.schedule.rounds", min(int(sched.rounds), int(b.max_rounds)))
        if b.control_rounds is not None:
            put(out.method.controls, "rounds", "method.controls.rounds", list(b.control_rounds))
        if not b.chance_check:
            t.chance_check = False
        if unscaled:
            b.unscaled = unscaled
    return out


def budget_note(eff: DictConfig) -> str | None:
    """The one line a run prints when explicit command-line values were kept unscaled."""
    kept = list(eff.budget.unscaled) if "unscaled" in eff.budget else []  # set by apply_budget only
    if not kept:
        return None
    values = ", ".join(f"{k}={OmegaConf.select(eff, k)}" for k in kept)
    return (f"sparse-run: budget={eff.budget.name} leaves {values} as given on the command line "
            "(explicit values are not scaled by the budget)")


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
