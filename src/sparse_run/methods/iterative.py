"""Iterative magnitude pruning (``schedule.kind=iterative``): LTH / LTR / Han fine-tuning, one pruning chain
per rewind sharing the dense round 0, with reinit / random-mask controls at chosen rounds."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sparse_run.config import ConfigError, choice, number
from sparse_run.engine.run import TRAIN_STATE_KEYS, Run, derive_seed, record_event
from sparse_run.sparsity import CRITERIA, ScoreContext, iterative_density, keep_top, prune_fraction, rate_scales
from sparse_run.sparsity.patterns import PATTERNS
from sparse_run.store.files import load_state

from .base import Method

REWINDS = ("init", "step", "none")
# criteria the iterative runner can score with (no data there), and its scopes
CRITERIA_HERE = ("magnitude", "random")
SCOPES_HERE = ("layerwise", "global")


REWIND_LABELS = {"init": "lth", "step": "ltr", "none": "finetune"}


def run_iterative(run: Run) -> None:
    """Iterative pruning (LTH / LTR / Han fine-tuning) with controls at chosen rounds.

    ``schedule.rewinds`` (a list) runs one pruning chain per rewind in the same run, sharing the
    dense round 0; their rows are named ``lth`` / ``ltr`` / ``finetune`` in the ``method`` column.
    """
    sched = run.cfg.method.schedule
    rewinds = list(sched.rewinds or [sched.rewind])
    for rewind in rewinds:
        _iterative_chain(run, rewind, REWIND_LABELS[rewind] if len(rewinds) > 1 else None,
                         capture_round0="step" in rewinds)
    last = REWIND_LABELS[rewinds[-1]] + "/" if len(rewinds) > 1 else ""
    final = load_state(run.dir / f"checkpoints/{last}round_{int(sched.rounds):02d}.pt", keys=("model", "masks"))
    run.writer.save("checkpoints/final.pt", final)


def _iterative_chain(run: Run, rewind: str, label: str | None, capture_round0: bool) -> None:
    """One chain of IMP rounds; ``label`` prefixes its keys and files when a run holds several."""
    cfg = run.cfg
    sched, method = cfg.method.schedule, cfg.method
    name = label or method.name
    pre = f"{label}/" if label else ""

    def path(kind: str, r: int) -> Path:  # round 0 (dense) is shared by every chain
        return run.dir / f"{kind}/{pre if r else ''}round_{r:02d}.pt"

    model = run.new_model(run.seed)
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    masks = run.new_masks(model)
    names = masks.names()
    scales = rate_scales(model, method.policy, names)
    rates = {n: float(sched.rate) * scales[n] for n in names}
    sizes = {n: masks.masks[n].numel() for n in names}
    rounds = int(sched.rounds)
    control_rounds = set(range(1, rounds + 1)) if method.controls.rounds is None else set(method.controls.rounds)
    score = CRITERIA[method.criterion]
    rewind_path = run.dir / "checkpoints/rewind.pt"

    def capture(state: dict[str, Any]) -> None:
        run.writer.save("checkpoints/rewind.pt", state)

    for r in range(rounds + 1):
        mask_path, trained_path = path("masks", r), path("checkpoints", r)
        key = "r0/dense" if r == 0 else f"{pre}r{r}/ticket"
        target = iterative_density(sizes, rates, r) if method.selection.scope == "layerwise" \
            else (1.0 - float(sched.rate)) ** r  # global: one rate over all survivors, layer scales unused
        if mask_path.exists():  # this round's masks were already chosen (resume)
            masks.load_state_dict(load_state(mask_path, keys=names))
        elif r > 0:
            prev = load_state(path("checkpoints", r - 1), keys=("model", "masks"))
            model.load_state_dict(prev["model"])
            masks.load_state_dict(prev["masks"])
            gen = torch.Generator().manual_seed(derive_seed(run.seed, "scores", r))
            scores = score(ScoreContext(model=model, masks=masks, generator=gen))
            masks.set(prune_fraction(scores, masks, float(sched.rate), scales, method.selection.scope,
                                     method.selection))
            run.writer.save(mask_path.relative_to(run.dir).as_posix(), masks.state_dict())
        else:
            run.writer.save("masks/round_00.pt", masks.state_dict())
        # per-layer report of this pruning event: requested vs achieved (recomputed on resume, idempotent)
        if r == 0:
            record_event(run, 0, masks, {n: 1.0 for n in names}, 1.0, method=name, variant="dense")
        else:
            targets = None
            if method.selection.scope == "layerwise":
                before = {n: int(m.sum()) for n, m in load_state(path("masks", r - 1), keys=names).items()}
                targets = {n: (before[n] - round(before[n] * rates[n])) / sizes[n] for n in names}
            record_event(run, r, masks, targets, target, method=name, variant="ticket")

        if key not in run.done:
            start_state = None
            if r == 0 or rewind == "init":
                model.load_state_dict(theta0)
            elif rewind == "step":
                start_state = load_state(rewind_path, keys=TRAIN_STATE_KEYS)
                start_state = {**start_state, "masks": masks.state_dict(), "history": []}
            else:  # rewind == "none" (fine-tuning): continue from the previous round's trained weights, also
                # on resume, where this round's saved masks skipped the load above (θ0 ⊙ m would be a ticket)
                model.load_state_dict(load_state(path("checkpoints", r - 1), keys=("model",))["model"])
            masks.apply_()
            cap = (int(sched.rewind_step), capture) if (r == 0 and capture_round0) else None
            run.train_arm(key, model, masks, r, "dense" if r == 0 else "ticket", target_density=target,
                          start_state=start_state, capture=cap, method=method.name if r == 0 else name,
                          save_as=trained_path.relative_to(run.dir).as_posix(), stage="dense" if r == 0 else None)
        elif not trained_path.exists():
            raise RuntimeError(f"inconsistent run state: {key} done but {trained_path} missing")

        if r in control_rounds and r > 0:
            for variant in method.controls.variants:
                ckey = f"r{r}/random" if variant == "random" else f"{pre}r{r}/{variant}"
                if ckey in run.done:
                    continue
                if variant == "random":  # random mask with the ticket's per-layer counts, trained from θ0
                    control = run.new_model(run.seed)
                    cmasks = run.new_masks(control)
                    rgen = torch.Generator().manual_seed(derive_seed(run.seed, "random", r))
                    cmasks.set({n: keep_top(torch.rand(m.shape, generator=rgen), int(m.sum()))
                                for n, m in masks.masks.items()})
                    record_event(run, r, cmasks, {n: float(m.float().mean()) for n, m in masks.masks.items()},
                                 target, method="random", variant="sparse")
                    run.train_arm(ckey, control, cmasks, r, "sparse", target_density=target, method="random")
                    continue
                control = run.new_model(derive_seed(run.seed, variant, r))
                cmasks = run.new_masks(control)
                cmasks.set(masks.clone_masks())
                run.train_arm(ckey, control, cmasks, r, variant, target_density=target, method=name)


def validate(cfg: Any) -> None:
    m, s = cfg.method, cfg.method.schedule
    number(s.rounds, "method.schedule.rounds", lo=0, integer=True)
    number(s.rate, "method.schedule.rate", lo=0, hi=1, lo_open=True, hi_open=True)
    choice(s.rewind, "method.schedule.rewind", REWINDS)
    number(s.rewind_step, "method.schedule.rewind_step", lo=0, hi=cfg.train.steps - 1, integer=True)
    choice(m.criterion, "method.criterion (schedule.kind=iterative)", CRITERIA_HERE)
    choice(m.selection.scope, "method.selection.scope (schedule.kind=iterative)", SCOPES_HERE)
    rewinds = s.rewinds
    if rewinds is not None:
        if not list(rewinds) or len(set(rewinds)) != len(rewinds):
            raise ConfigError("method.schedule.rewinds", f"got {rewinds!r}; a non-empty list without repeats")
        for i, r in enumerate(rewinds):
            choice(r, f"method.schedule.rewinds[{i}]", REWINDS)


METHOD = Method(kind="iterative", run=run_iterative, validate=validate, controls=("reinit", "random"),
                lockstep=True, data_parallel=True, patterns=tuple(p for p in PATTERNS if p != "nm"), figures="levels")
