"""The Lazy Neuron study (``schedule.kind=lazy_neuron``; Li et al., ICLR 2023, ``../shared/papers.md`` §12): how
sparse the post-ReLU activations of trained MLPs become, and whether keeping only the k largest (Top-k) helps.

Not a pruning schedule: no weight is masked. Every arm is a dense model trained from scratch and measured by the
activation probe (``engine/probe.py``, ``train.probe_activations`` examples) at init and at every evaluation:

- each model arm of ``schedule.models`` (e.g. the tiny ViT and MLPs of several widths) under each training-data
  condition of ``schedule.conditions`` (``data/conditions.py``: clean, random labels, noise inputs, label noise);
- the experiment's own model with Top-k activations, one arm per k of ``schedule.topk``, beside its ReLU baseline,
  under each condition of ``topk_conditions`` (an arm already run above is not run twice).

Arms of one architecture share θ0 (conditions and Top-k differ from their baseline only in what is compared) and
every arm of a seed sees the same data order, so differences pair by seed. After training each arm's row adds
the clean-test expected calibration error and the accuracy on noise-corrupted test inputs
(``engine/robustness.py``), read once and never used to select anything. Row columns: ``model`` (the arm's
label), ``variant`` (``relu`` / ``gelu`` / ``top<k>``), ``condition``, ``activation``, ``activation_k``, ``units``
(the width of the activation layers), ``act_*`` (end of training) and ``init_act_*`` (at θ0).
"""
from __future__ import annotations

import json
from typing import Any

from omegaconf import OmegaConf

from sparse_run.config import ConfigError, choice, number
from sparse_run.data.conditions import CONDITIONS, apply_condition
from sparse_run.engine.arms import derive, model_arms
from sparse_run.engine.probe import ProbeHook
from sparse_run.engine.robustness import robustness
from sparse_run.engine.run import Run, derive_seed

Arm = tuple[str, dict[str, Any], str]  # (model label, model overrides, condition)
ACTIVATION_KEYS = ("activation", "activation_k")
NOTHING_TO_LEARN = ("random_labels", "noise_inputs")


def arms(cfg: Any) -> list[Arm]:
    """Every (model label, overrides, condition) the run trains, in order, without repeats."""
    s, base = cfg.method.schedule, str(cfg.model.name)
    out: list[Arm] = [(label or base, over, cond) for label, over in model_arms(cfg) for cond in s.conditions]
    for cond in s.topk_conditions or []:
        out.append((base, {}, cond))
        out += [(base, {"activation": "topk", "activation_k": int(k)}, cond) for k in s.topk]
    seen, unique = set(), []
    for label, over, cond in out:
        key = (json.dumps(over, sort_keys=True), cond)
        if key not in seen:
            seen.add(key)
            unique.append((label, over, cond))
    return unique


def _variant(mcfg: Any) -> str:
    return f"top{int(mcfg.activation_k)}" if mcfg.activation == "topk" else str(mcfg.activation)


def run_study(run: Run) -> None:
    """Runner for ``method.schedule.kind=lazy_neuron``: trains every arm of ``arms``; prunes nothing."""
    cfg, s, t = run.cfg, run.cfg.method.schedule, run.cfg.train
    stds = [float(v) for v in s.corruption_stds or []]
    for label, over, cond in arms(cfg):
        mcfg = OmegaConf.merge(cfg.model, over)
        variant = _variant(mcfg)
        key = f"{label}/{variant}/{cond}"
        if key in run.done:
            continue
        arch = {k: v for k, v in over.items() if k not in ACTIVATION_KEYS}
        model = run.new_model(derive_seed(run.seed, "init", json.dumps(arch, sort_keys=True)), mcfg)
        masks = run.new_masks(model)
        data = apply_condition(run.data, cond, derive_seed(run.seed, "condition", cond),
                               float(s.label_noise if s.label_noise is not None else 0.0),
                               field="method.schedule.conditions")
        probe = ProbeHook(model, data.train_x, data.val_x, int(t.probe_activations), float(t.probe_tau))
        init = {f"init_{k}": v for k, v in probe.eval_metrics(0).items()}
        extra = {"activation": str(mcfg.activation),
                 "activation_k": int(mcfg.activation_k) if mcfg.activation == "topk" else None,
                 "units": min(probe.units.values()) if probe.units else None,
                 "label_noise": float(s.label_noise) if cond == "label_noise" else 0.0, **init}
        # with nothing learnable, a test accuracy at chance is the expected outcome, not a warning
        arm_run = derive(run, train={"chance_check": False}) if cond in NOTHING_TO_LEARN else run
        arm_run.train_arm(key, model, masks, 0, variant, target_density=1.0, method="lazy_neuron", data=data,
                      context={"model": label, "condition": cond}, extra=extra,
                      row_extra=lambda _res, m=model: robustness(m, run.data.test_x, run.data.test_y,
                                                                 bins=int(s.ece_bins), corruption_stds=stds,
                                                                 seed=derive_seed(run.seed, "corruption")))


def _units(mcfg: Any) -> int:
    """The narrowest activation layer of a ``mlp`` / ``vit`` model config (what Top-k's k must stay below)."""
    hidden = list(mcfg.hidden) if OmegaConf.is_list(mcfg.hidden) else [mcfg.hidden]
    return min(max(1, int(round(int(h) * float(mcfg.width)))) for h in hidden)


def _conditions(values: Any, field: str, allow_empty: bool) -> list[str]:
    vals = list(values or [])
    if not vals and not allow_empty:
        raise ConfigError(field, f"got {values!r}; a non-empty list of {' | '.join(CONDITIONS)}")
    for i, c in enumerate(vals):
        choice(c, f"{field}[{i}]", CONDITIONS)
    if len(set(vals)) != len(vals):
        raise ConfigError(field, f"got {vals}; each condition at most once")
    return vals


def validate(cfg: Any) -> None:
    """One-line errors: the probe on, ReLU-MLP models, known conditions, 1 <= k < width, sane noise and bins."""
    s, t = cfg.method.schedule, cfg.train
    if int(t.probe_activations) < 1:
        raise ConfigError("train.probe_activations", f"got {t.probe_activations}; lazy_neuron measures activation "
                                                     "sparsity: at least 1 example")
    for label, over in model_arms(cfg):
        mcfg = OmegaConf.merge(cfg.model, over)
        if mcfg.arch not in ("mlp", "vit"):
            raise ConfigError("method.schedule.models" if over else "model.arch",
                              f"got arch {mcfg.arch!r} ({label or cfg.model.name}); lazy_neuron probes MLP "
                              "activations (allowed: mlp, vit)")
    conds = _conditions(s.conditions, "method.schedule.conditions", allow_empty=False)
    topk_conds = _conditions(s.topk_conditions, "method.schedule.topk_conditions", allow_empty=True)
    ks = list(s.topk or [])
    if bool(ks) != bool(topk_conds):
        raise ConfigError("method.schedule.topk", f"got {ks} with topk_conditions {topk_conds}; give both or "
                                                  "neither")
    if ks and cfg.model.activation != "relu":
        raise ConfigError("model.activation", f"got {cfg.model.activation!r}; the Top-k arms are compared with "
                                              "the experiment's model as a ReLU baseline (allowed: relu)")
    width = _units(cfg.model)
    for i, k in enumerate(ks):
        number(k, f"method.schedule.topk[{i}]", lo=1, hi=width - 1, integer=True)
    if len(set(ks)) != len(ks):
        raise ConfigError("method.schedule.topk", f"got {ks}; each k at most once")
    if "label_noise" in conds + topk_conds:
        number(s.label_noise, "method.schedule.label_noise", lo=0, hi=1, hi_open=True)
    for i, std in enumerate(s.corruption_stds or []):
        number(std, f"method.schedule.corruption_stds[{i}]", lo=0, lo_open=True)
    number(s.ece_bins, "method.schedule.ece_bins", lo=1, integer=True)
