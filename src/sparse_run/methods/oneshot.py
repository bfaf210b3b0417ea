"""One-shot pruning (``schedule.kind=oneshot``): train dense, prune the trained weights once per level,
fine-tune; model and policy arms (``engine/arms.py``) repeat it per cell and per prunable-weight scope."""
from __future__ import annotations

from typing import Any


from sparse_run.config import ConfigError, number
from sparse_run.engine.run import Run, record_event
from sparse_run.engine.train import evaluate
from sparse_run.sparsity import levels
from sparse_run.sparsity.selection import PATTERNS as LEVEL_PATTERNS

from . import arms
from .base import Method
from .levels import criteria_of, dense_baseline, finish, planned_nnz, prune_to, small_dense_arm, validate_levels

def run_oneshot(run: Run) -> None:
    """Train dense, then per level: prune the *same* trained weights once, fine-tune
    ``finetune_steps``; ``test_acc_before_finetune`` is measured right after pruning.

    ``schedule.models`` / ``method.policies`` (``engine/arms.py``) repeat this per model arm (one dense
    model each) and per policy arm (which weights are prunable); ``schedule.finetune_evals`` = E
    evaluates fine-tuning E times at equal intervals, each into a ``test_acc_ft_<k>`` column."""
    sched, method = run.cfg.method.schedule, run.cfg.method
    if run.cfg.budget_note:
        print(f"sparse-run: {run.cfg.name} at budget {run.cfg.budget.name}: {run.cfg.budget_note}")
    evals = sched.finetune_evals
    ft_train = {"eval_every": -(-int(sched.finetune_steps) // int(evals))} if evals else None  # ⌈steps / E⌉

    def per_eval(res: Any) -> dict[str, float]:
        return {f"test_acc_ft_{k + 1}": h["test_acc"] for k, h in enumerate(res.history)} if evals else {}

    crits = criteria_of(run.cfg)
    for mlabel, mover in arms.model_arms(run.cfg):
        mrun = arms.derive(run, model=mover)
        mctx = {"model_arm": mlabel} if mlabel else {}
        dense = dense_baseline(mrun, f"{mlabel}/" if mlabel else "", mlabel or None, mctx or None)
        trained = {k: v.clone() for k, v in dense.state_dict().items()}
        for plabel, pover in arms.policy_arms(run.cfg):
            prun = arms.derive(mrun, policy=pover, train=ft_train)
            ctx = {**mctx, **({"policy_arm": plabel} if plabel else {})}
            arm = "/".join(x for x in (mlabel, plabel) if x)
            for crit in crits:
                name = "/".join(x for x in (arm, crit if len(crits) > 1 else "") if x) or method.name
                pre = f"{arm}/{crit}" if arm else crit
                for i, density in enumerate(levels(sched)):
                    r, key = i + 1, f"{pre}/r{i + 1}/sparse"
                    if key in run.done:
                        continue
                    model = prun.new_model(run.seed)
                    model.load_state_dict(trained)
                    masks = prun.new_masks(model)
                    planned = prune_to(prun, model, masks, crit, density, ("oneshot", crit, r))
                    record_event(run, r, masks, planned, density, method=name, variant="sparse")
                    run.writer.save(f"masks/{pre}/round_{r:02d}.pt", masks.state_dict())
                    _, before = evaluate(model, run.data.test_x, run.data.test_y)
                    prun.train_arm(key, model, masks, r, "sparse", target_density=density, method=name,
                                   steps=int(sched.finetune_steps), extra={"test_acc_before_finetune": float(before)},
                                   row_extra=per_eval, context=ctx or None)
                    finish(run, model, masks)
    if "small_dense" in method.controls.variants:
        for i, density in enumerate(levels(sched)):
            model = run.new_model(run.seed)
            small_dense_arm(run, i + 1, density, planned_nnz(model, run.new_masks(model), density))


def validate(cfg: Any) -> None:
    s, m = cfg.method.schedule, cfg.method
    validate_levels(cfg, full=True)
    number(s.finetune_steps, "method.schedule.finetune_steps", lo=1, integer=True)
    if s.finetune_evals is not None:
        number(s.finetune_evals, "method.schedule.finetune_evals", lo=1, hi=int(s.finetune_steps), integer=True)
    if s.models is not None and "small_dense" in m.controls.variants:
        raise ConfigError("method.controls.variants", "small_dense with method.schedule.models is not "
                                                      "supported; allowed there: []")


def figures(cfg: Any) -> str:
    """Policy arms (the sparse-RNN thesis' scopes) get the RNN pruning figure, other runs accuracy vs density."""
    return "rnn" if cfg.method.policies is not None else "levels"


METHOD = Method(kind="oneshot", run=run_oneshot, validate=validate, controls=("small_dense",), model_arms=True,
                policy_arms=True, several_criteria=True, patterns=LEVEL_PATTERNS, figures=figures, permutes=True,
                data_parallel=True)
