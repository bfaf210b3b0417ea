"""Dynamic sparse training (``schedule.kind=dynamic``): SET, RigL and sparse momentum (SNFS) train a sparse network
from the first step to the last, moving connections every ΔT steps at a fixed count of non-zeros.

At every level (``schedule.sparsities``) each arm in ``schedule.variants`` starts from θ0 of the run's seed and
sees the same data order:

- ``static``: the starting mask (``method.criterion``, random by default, in the selection's scope: ``erk`` or
  uniform ``layerwise``), never changed: the baseline DST must beat;
- ``set`` / ``rigl`` / ``snfs``: the same starting mask, then every ΔT steps until T_end each layer drops
  k = round(ζ_t · n_active) active weights of smallest |w| and grows weights by random scores (SET), by |dense
  gradient| of the masked network on the current batch (RigL) or by |momentum of the dense gradients| with the
  regrowth redistributed over layers by their mean momentum (SNFS); ζ_t cosine-decays from ζ0 to 0 at T_end;
- ``gmp``: gradual magnitude pruning from dense (Zhu & Gupta's cubic schedule from ``start_step`` to T_end every
  ΔT), the pruning reference;

plus each arm of ``schedule.long_variants`` trained for ``long_factor`` × ``train.steps`` (variant
``rigl_2x``), the matched small-dense control (``controls.variants``) and the dense model (``schedule.dense``).

Where the update sits relative to the optimizer step follows each paper's code: RigL's update *replaces* the
step it happens on (google-research/rigl), SET's and sparse momentum's come after that step (their PyTorch
implementations step the optimizer, then update the masks). Newly grown weights start at exactly zero with
zeroed optimizer state; dropped weights lose theirs. Each update is a ``layers.csv`` event per layer (active
count, swaps, ζ_t); each evaluation records the in-time over-parameterisation rate ``itop`` = |∪_t mask_t| / N.
Lock-step replicates are refused (the update reads one model's dense gradient and optimizer state).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch

from sparse_run.config import ConfigError, choice, number
from sparse_run.engine.run import Run, record_event
from sparse_run.engine.train import TrainResult, zero_pruned_state
from sparse_run.sparsity import MaskSet, levels
from sparse_run.sparsity import dynamic as dst
from sparse_run.sparsity.flops import dense_train_flops, layer_macs, timeline_flops

from .base import Method
from .gradual import cubic_hook
from .levels import dense_baseline, finish, planned_nnz, prune_to, small_dense_arm, validate_levels


@dataclass(frozen=True)
class Arm:
    """One dynamic arm: its grow score, and whether its update replaces the optimizer step it happens on."""

    grow: str | None           # None: never updated (static); random | gradient | momentum
    replaces_step: bool = False
    redistribute: bool = False  # regrowth moves between layers by mean |momentum| (sparse momentum)


# DSL (Wang et al. 2024) is RigL's update on a recommender's embedding tables; its code was not found, so it
# follows RigL's order (the update replaces the step).
ARMS = {"static": Arm(None), "set": Arm("random"), "rigl": Arm("gradient", replaces_step=True),
        "snfs": Arm("momentum", redistribute=True), "dsl": Arm("gradient", replaces_step=True)}
VARIANTS = (*ARMS, "gmp", "prune_ft")
SCOPES = ("erk", "layerwise")
END_FRACTION = 0.75  # T_end when schedule.end_step is null: 75 % of training (RigL's default)


def t_end_of(cfg: Any, steps: int) -> int:
    """T_end of an arm of ``steps`` steps: ``schedule.end_step`` as a fraction of ``train.steps``, else 75 %."""
    end = cfg.method.schedule.end_step
    frac = END_FRACTION if end is None else int(end) / int(cfg.train.steps)
    return max(1, round(frac * steps))


class DynamicHook:
    """The step hook of one SET / RigL / SNFS arm (``loop.StepHook`` with ``before_step`` and ``bind_optimizer``)."""

    def __init__(self, arm: Arm, variant: str, seed: int, *, zeta0: float, delta_t: int, t_end: int, beta: float,
                 masks: MaskSet, on_update: Callable[[int, float, dict[str, int]], None]):
        self.arm, self.variant, self.seed = arm, variant, seed
        self.zeta0, self.delta_t, self.t_end, self.beta = zeta0, delta_t, t_end, beta
        self.on_update = on_update
        self.opt: torch.optim.Optimizer | None = None
        self.union = {n: m.clone() for n, m in masks.masks.items()}
        self.momenta: dict[str, torch.Tensor] = (
            {n: torch.zeros_like(p) for n, p, _ in masks} if arm.grow == "momentum" else {})
        self.updates = 0
        self.swapped = 0
        self.checked = arm.grow not in ("gradient", "momentum")

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self.opt = optimizer

    def _check_gradients(self, masks: MaskSet) -> None:
        for n, p, _ in masks:
            if p.grad is None or p.grad.layout != torch.strided:
                what = "no gradient" if p.grad is None else "a sparse gradient"
                raise ConfigError("method.schedule.variants",
                                  f"{self.variant} grows by the dense gradient, but layer {n} gets {what} from "
                                  "this model; use set or static")
        self.checked = True

    @torch.no_grad()
    def before_step(self, step: int, model: torch.nn.Module, masks: MaskSet) -> bool:
        """Before the gradients are masked: sparse momentum's running average of dense gradients, and RigL's
        update (which then replaces this step's optimizer update)."""
        if not self.checked:
            self._check_gradients(masks)
        if self.momenta:
            for n, p, _ in masks:
                self.momenta[n].mul_(self.beta).add_(p.grad)
        if self.arm.replaces_step and dst.is_update_step(step, self.delta_t, self.t_end):
            self.update(step, masks, {n: p.grad for n, p, _ in masks})
            return True
        return False

    def __call__(self, done: int, model: torch.nn.Module, masks: MaskSet) -> None:
        if not self.arm.replaces_step and dst.is_update_step(done, self.delta_t, self.t_end):
            if self.arm.grow == "random":
                scores = {n: torch.rand(p.shape, generator=dst.generator(self.seed, f"{n}/grow", done))
                          for n, p, _ in masks}
            else:
                scores = self.momenta
            self.update(done, masks, scores)

    @torch.no_grad()
    def update(self, step: int, masks: MaskSet, scores: dict[str, torch.Tensor]) -> None:
        """One drop/grow of every layer; grown weights and the state of every inactive weight are zeroed."""
        zeta = dst.drop_fraction(step, self.zeta0, self.t_end)
        old = masks.clone_masks()
        grow_n = (dst.regrow_counts(self.momenta, old, {n: dst.drop_count(m, zeta) for n, m in old.items()})
                  if self.arm.redistribute else {})
        new, swaps = {}, {}
        for n, p, m in masks:
            u = dst.drop_grow(p, m, scores[n], zeta, dst.generator(self.seed, n, step), grow_n.get(n))
            new[n], swaps[n] = u.mask, u.swapped
            if self.opt is not None:
                dst.zero_grown(p, u.grown, self.opt)
        masks.set(new)
        if self.opt is not None:
            zero_pruned_state(self.opt, masks)  # dropped weights lose their momentum / moments
        for n, m in new.items():
            self.union[n] |= m.to(self.union[n].device)
        self.updates += 1
        self.swapped += sum(swaps.values())
        self.on_update(step, zeta, swaps)

    def itop(self) -> float:
        return sum(int(u.sum()) for u in self.union.values()) / max(1, sum(u.numel() for u in self.union.values()))

    def eval_metrics(self, step: int) -> dict[str, float]:
        return {"itop": self.itop(), "swapped_cum": float(self.swapped)}

    def state_dict(self) -> dict[str, Any]:
        return {"union": {n: u.cpu() for n, u in self.union.items()},
                "momenta": {n: v.cpu() for n, v in self.momenta.items()},
                "updates": self.updates, "swapped": self.swapped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.union = {n: u.to(self.union[n].device) for n, u in state["union"].items()}
        self.momenta = {n: v.to(self.momenta[n].device) for n, v in state["momenta"].items()}
        self.updates, self.swapped = int(state["updates"]), int(state["swapped"])


def train_flops(run: Run, model: torch.nn.Module, r: int, variant: str, steps: int, dense_wgrad: str = "never",
                updates: int = 0) -> dict[str, float]:
    """The arm's analytic training FLOPs from its ``layers.csv`` events, and their ratio to dense training for
    ``train.steps`` (the dense arm is 1; a 2x-steps arm counts its extra steps)."""
    shape = tuple(run.data.spec.input_shape)
    costs = layer_macs(copy.deepcopy(model).eval(), shape)  # a copy: BN statistics untouched
    dense = layer_macs(run.new_model(run.seed).eval(), shape)  # the full-width model: the denominator
    events: dict[int, dict[str, float]] = {}
    for row in run.writer.layers:
        if row["round"] == r and row.get("variant") == variant and row.get("method") == run.cfg.method.name:
            events.setdefault(int(row.get("step") or 0), {})[row["layer"]] = float(row["density"])
    batch = int(run.cfg.train.batch_size)
    total = timeline_flops(costs, sorted(events.items()), batch, steps, dense_wgrad, updates)
    return {"train_flops": total,
            "train_flops_ratio": round(total / dense_train_flops(dense, batch, int(run.cfg.train.steps)), 6)}


def _beta(cfg: Any) -> float:
    """The momentum of sparse momentum's dense-gradient average: SGD's ``train.momentum``, else 0.9."""
    m = float(cfg.train.momentum)
    return m if cfg.train.optimizer == "sgd" and m > 0 else 0.9


def _prune_finetune(run: Run, r: int, density: float, dense: torch.nn.Module) -> None:
    """Dense → prune → fine-tune: the trained dense model pruned by magnitude to ``density`` (the selection's
    scope), then trained ``finetune_steps`` more with a fresh optimizer and lr schedule. Its training FLOPs count
    the dense training too."""
    key, method = f"r{r}/prune_ft", run.cfg.method
    if key in run.done:
        return
    model = run.new_model(run.seed)
    model.load_state_dict(dense.state_dict())
    masks = run.new_masks(model)
    planned = prune_to(run, model, masks, "magnitude", density, ("prune_ft", r))
    record_event(run, r, masks, planned, density, method=method.name, variant="prune_ft", step=0)
    steps = int(method.schedule.finetune_steps)

    def row_extra(result: TrainResult) -> dict[str, Any]:
        ft = train_flops(run, model, r, "prune_ft", steps)
        full = ft["train_flops"] / ft["train_flops_ratio"] if ft["train_flops_ratio"] else 0.0  # dense training
        return {"train_flops": ft["train_flops"] + full, "train_flops_ratio": round(ft["train_flops_ratio"] + 1, 6),
                "itop": round(masks.density(), 6)}

    run.train_arm(key, model, masks, r, "prune_ft", target_density=density, steps=steps, row_extra=row_extra)
    run.writer.save(f"masks/round_{r:02d}_prune_ft.pt", masks.state_dict())


def _arm(run: Run, r: int, density: float, variant: str, steps: int) -> None:
    """Train one arm of level ``r`` (``variant``: a key of ARMS, ``gmp``, or ``<arm>_<f>x``)."""
    sched, method = run.cfg.method.schedule, run.cfg.method
    key = f"r{r}/{variant}"
    if key in run.done:
        return
    base = variant.rsplit("_", 1)[0] if variant not in VARIANTS else variant
    model = run.new_model(run.seed)
    masks = run.new_masks(model)
    t_end, delta_t = t_end_of(run.cfg, steps), int(sched.every_steps)
    hooks: list[Any] = []
    dense_wgrad, updates = "never", 0
    if base == "gmp":
        hooks.append(cubic_hook(run, model, masks, r, 1.0 - density, s_i=0.0, t0=int(sched.start_step),
                                t_end=t_end, every=delta_t, variant=variant))
    else:
        planned = prune_to(run, model, masks, method.criterion, density, ("dynamic-start", r))
        record_event(run, r, masks, planned, density, method=method.name, variant=variant, step=0)
        arm = ARMS[base]
        if arm.grow is not None:
            def on_update(step: int, zeta: float, swaps: dict[str, int]) -> None:
                report = masks.report(planned)
                for lr in report:
                    lr.extra = {"swapped": swaps[lr.name], "zeta": round(zeta, 6)}  # type: ignore[attr-defined]
                run.writer.add_layers(r, report, method=method.name, variant=variant, step=step,
                                      total_target_density=density, total_density=masks.density())

            hooks.append(DynamicHook(arm, variant, run.seed, zeta0=float(sched.zeta0), delta_t=delta_t, t_end=t_end,
                                     beta=_beta(run.cfg), masks=masks, on_update=on_update))
            updates = sum(dst.is_update_step(t, delta_t, t_end) for t in range(steps + 1))
            dense_wgrad = {"momentum": "every", "gradient": "updates"}.get(arm.grow, "never")

    def row_extra(result: TrainResult) -> dict[str, Any]:
        hook = next((h for h in hooks if isinstance(h, DynamicHook)), None)
        flops = train_flops(run, model, r, variant, steps, dense_wgrad, updates)
        return {"delta_t": delta_t, "t_end": t_end, "updates": hook.updates if hook else 0,
                "swapped": hook.swapped if hook else 0,
                "itop": round(hook.itop(), 6) if hook else round(masks.density(), 6), **flops}

    run.train_arm(key, model, masks, r, variant, target_density=density, hooks=hooks or None, steps=steps,
                  early_stop_from=t_end if base == "gmp" else 0, row_extra=row_extra)
    run.writer.save(f"masks/round_{r:02d}_{variant}.pt", masks.state_dict())
    finish(run, model, masks)


def run_dynamic(run: Run) -> None:
    """Dense (optional), then at each level every variant, every long variant and the small-dense control."""
    sched, method = run.cfg.method.schedule, run.cfg.method
    dense = dense_baseline(run, extra={"train_flops_ratio": 1.0}) if sched.dense else None
    steps = int(run.cfg.train.steps)
    factor = float(sched.long_factor or 2)
    for i, density in enumerate(levels(sched)):
        r = i + 1
        for variant in sched.variants:
            if variant == "prune_ft":
                _prune_finetune(run, r, density, dense)
            else:
                _arm(run, r, density, variant, steps)
        for variant in sched.long_variants or ():
            _arm(run, r, density, f"{variant}_{factor:g}x", max(1, round(factor * steps)))
        if "small_dense" in method.controls.variants:
            model = run.new_model(run.seed)
            small_dense_arm(run, r, density, planned_nnz(model, run.new_masks(model), density),
                            row_extra=lambda res, sd_model: train_flops(run, sd_model, r, "small_dense", steps))


def validate(cfg: Any) -> None:
    """One-line errors for every dynamic setting (levels, ζ0, ΔT, T_end, arms, scope)."""
    s, m, steps = cfg.method.schedule, cfg.method, int(cfg.train.steps)
    validate_levels(cfg)
    choice(m.selection.scope, "method.selection.scope (schedule.kind=dynamic)", SCOPES)
    if m.selection.pattern != "unstructured":
        raise ConfigError("method.selection.pattern", f"got {m.selection.pattern!r}; schedule.kind=dynamic moves "
                                                      "single weights: unstructured")
    number(s.zeta0, "method.schedule.zeta0", lo=0, lo_open=True, hi=1)
    number(s.every_steps, "method.schedule.every_steps", lo=1, integer=True)
    if s.end_step is not None:
        number(s.end_step, "method.schedule.end_step", lo=1, hi=steps, integer=True)
    variants = list(s.variants or [])
    if not variants:
        raise ConfigError("method.schedule.variants", f"got {variants}; give at least one of {' | '.join(VARIANTS)}")
    for i, v in enumerate(variants):
        choice(v, f"method.schedule.variants[{i}]", VARIANTS)
    if len(set(variants)) != len(variants):
        raise ConfigError("method.schedule.variants", f"got {variants}; each variant at most once")
    for i, v in enumerate(s.long_variants or []):
        choice(v, f"method.schedule.long_variants[{i}]", tuple(ARMS))
    if s.long_variants:
        number(s.long_factor, "method.schedule.long_factor", lo=1, lo_open=False)
    if "gmp" in variants:
        number(s.start_step, "method.schedule.start_step", lo=0, hi=t_end_of(cfg, steps) - 1, integer=True)
    if "prune_ft" in variants:
        if not s.dense:
            raise ConfigError("method.schedule.dense", "got false; variant prune_ft prunes the trained dense model: "
                                                       "set it to true")
        number(s.finetune_steps, "method.schedule.finetune_steps", lo=1, integer=True)


METHOD = Method(kind="dynamic", run=run_dynamic, validate=validate, controls=("small_dense",),
                patterns=("unstructured",), figures="dst", data_parallel=True)
