"""The pipeline: walks a method's schedule — train → score → select → rewind → train … — plus the
control arms, writing every finished arm to the results and enough state to resume after a kill.

Each ``schedule.kind`` maps to one runner in ``RUNNERS``; runners only call ``Run.train_arm`` and
the sparsity library, so a new paper's method is mostly a config.
"""
from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig

from . import data as data_mod
from . import hardware, lanes, logger as logger_mod, models, report, stages
from .config import to_dict
from .results import RESTART_HINT, RunWriter, StateError, atomic_write_text, load_state, plain
from .sparsity import CRITERIA, MaskSet, ScoreContext, iterative_density, keep_top, prunable, prune_fraction, rate_scales
from .train import StepHook, TrainResult, train
from .validate import ConfigError

STATE = "checkpoints/progress.pt"
INFLIGHT = "checkpoints/inflight.pt"
LOCK = ".lock"  # held (fcntl) by the process running the directory
TRAIN_STATE_KEYS = ("model", "masks", "optimizer", "scheduler", "generator", "order", "cursor", "step", "history",
                    "loss_sum", "wall_s")
# everything a run writes into its directory (Hydra's .hydra/ and the lock aside): what restart=true removes
RUN_DIRS = ("checkpoints", "masks", "figures", "seeds", "export")
RUN_FILES = ("run.json", "config.yaml", "summary.csv", "metrics.jsonl", "layers.csv", "hardware.csv", "hardware.json",
             "kernel.csv", "kernel.json", "breakeven.csv", "correlations.csv")


def derive_seed(seed: int, *tags: Any) -> int:
    """A deterministic 31-bit seed for a named sub-stream (e.g. the reinit control of round 3)."""
    digest = hashlib.sha256(repr((seed, *tags)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def config_hash(cfg: dict[str, Any]) -> str:
    """Hash of the settings that determine results (paths, logger and display settings excluded)."""
    keep = {k: v for k, v in cfg.items()
            if k not in ("paths", "logger", "progress", "hydra", "cache", "threads", "restart")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def nnz_params(model: torch.nn.Module, masks: MaskSet) -> int:
    """Non-zero parameters by construction: every parameter (biases included) minus the pruned ones."""
    return sum(p.numel() for p in model.parameters()) - (masks.numel() - masks.nonzeros())


def record_event(run: "Run", round_: int, masks: MaskSet, targets: dict[str, float] | None,
                 total_target: float, *, method: str, variant: str, step: int = 0) -> None:
    """Per-layer target vs achieved density at one pruning event (``layers.csv``)."""
    run.writer.add_layers(round_, masks.report(targets), method=method, variant=variant, step=step,
                          total_target_density=total_target, total_density=masks.density())


@dataclass
class Run:
    """One run directory's worth of context shared by every arm."""

    cfg: DictConfig
    dir: Path
    data: data_mod.DataBundle
    writer: RunWriter
    log: logger_mod.Logger
    device: torch.device
    done: set[str] = field(default_factory=set)
    extra_state: dict[str, Any] = field(default_factory=dict)
    train_fn: Callable[..., TrainResult] | None = None  # None: train.train; lanes.py: its lock-step trainer

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    def context(self, round_: int, variant: str, method: str | None = None) -> dict[str, Any]:
        c = self.cfg
        return {"experiment": c.name, "method": method or c.method.name, "model": c.model.name, "dataset": c.dataset.name,
                "seed": self.seed, "budget": c.budget.name, "hardware": c.hardware.name,
                "round": round_, "variant": variant}

    def new_model(self, init_seed: int, model_cfg: Any = None) -> torch.nn.Module:
        return models.build(model_cfg or self.cfg.model, self.data.spec, init_seed).to(self.device)

    def new_masks(self, model: torch.nn.Module) -> MaskSet:
        return MaskSet(prunable(model, self.cfg.method.policy))

    def writer_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.writer.rows)

    # -- persistence for resume -------------------------------------------------------------
    def save_progress(self) -> None:
        self.writer.save(STATE, {"writer": self.writer.state(), "done": sorted(self.done), "extra": self.extra_state})

    def load_progress(self) -> bool:
        path = self.dir / STATE
        if not path.exists():
            return False
        state = load_state(path, keys=("writer", "done", "extra"))
        self.writer.load_state(state["writer"])
        self.done = set(state["done"])
        self.extra_state = state["extra"]
        return True

    # -- one arm ------------------------------------------------------------------------------
    def train_arm(self, key: str, model: torch.nn.Module, masks: MaskSet, round_: int, variant: str, *,
                  target_density: float, start_state: dict[str, Any] | None = None,
                  capture: tuple[int, Callable[[dict[str, Any]], None]] | None = None,
                  save_as: str | None = None, stage: str | None = None,
                  method: str | None = None, steps: int | None = None, hooks: list[StepHook] | None = None,
                  extra: dict[str, Any] | None = None, early_stop_from: int = 0,
                  row_extra: Callable[[TrainResult], dict[str, Any]] | None = None,
                  context: dict[str, Any] | None = None) -> TrainResult:
        """Train one arm (resuming mid-arm if a checkpoint for it exists) and record its row.

        ``save_as`` stores the trained weights + masks before the arm is marked done, so a kill at
        any moment leaves either an unfinished arm (retrained from its last checkpoint) or a
        finished one with all its artefacts. ``stage`` names a shareable stage (``"dense"``): its
        result is cached under ``<results_dir>/.cache/`` keyed by the config that determines it,
        so other runs and sweep jobs reuse it instead of training it again.
        ``method`` names the row when one run compares several methods; ``steps`` overrides
        ``train.steps`` (fine-tuning); ``hooks`` run after every optimizer step (gradual pruning,
        N:M training); ``extra`` adds columns to the row and ``row_extra(result)`` computed ones;
        ``context`` adds or overrides the arm's identifying columns in the summary and metrics (e.g.
        ``pattern``; its ``seed`` also sets the arm's data order); ``early_stop_from`` restricts the
        early-stop search to evaluations at or after that step (gradual pruning: once the masks are final).
        """
        t = self.cfg.train
        ctx = {**self.context(round_, variant, method), **(context or {})}
        inflight = self.dir / INFLIGHT
        resume = start_state
        if inflight.exists():
            saved = load_state(inflight, keys=("arm", "state"))
            if saved["arm"] == key:
                resume = saved["state"]
                missing = [k for k in TRAIN_STATE_KEYS if not isinstance(resume, dict) or k not in resume]
                if missing:
                    raise StateError(inflight, f"is not a training state (missing {', '.join(missing[:5])}); "
                                               + RESTART_HINT)
                if isinstance(saved.get("layers"), list):  # pruning events of this arm before the kill (hooks)
                    self.writer.layers = list(saved["layers"])

        def checkpoint(state: dict[str, Any]) -> None:
            self.writer.save(INFLIGHT, {"arm": key, "state": state, "layers": plain(self.writer.layers)})

        n_steps = int(t.steps if steps is None else steps)

        def fit(cap: Any = capture) -> TrainResult:
            fn = self.train_fn or train
            return fn(model, masks, self.data, t, steps=n_steps, eval_every=min(int(t.eval_every), n_steps),
                      seed=int(ctx["seed"]), desc=f"round {round_} {variant}", checkpoint=checkpoint,
                      resume=resume, on_eval=lambda rec: self.log.log_eval(rec, ctx), capture=cap, hooks=hooks)

        if stage and self.cfg.get("cache", True):
            result = stages.cached(self, stage, model, masks, fit, capture)
        else:
            result = fit()
        masks.check()  # pruned weights are exactly zero after the last optimizer step
        if early_stop_from:
            best = min((h for h in result.history if h["step"] >= early_stop_from), key=lambda h: h["val_loss"],
                       default=result.history[-1])
            result.early_stop_step, result.test_acc_at_early_stop = int(best["step"]), best["test_acc"]
        row = {**ctx, "target_density": target_density, "density": masks.density(), "nonzeros": masks.nonzeros(),
               "prunable": masks.numel(), "test_acc": result.final_test_acc,
               "early_stop_step": result.early_stop_step, "test_acc_at_early_stop": result.test_acc_at_early_stop,
               "val_acc": result.final_val_acc, "steps": result.steps, "wall_s": round(result.wall_s, 3),
               "status": getattr(result, "status", "ok"), "nnz_params": nnz_params(model, masks), **(extra or {}),
               **(row_extra(result) if row_extra else {})}
        if save_as:
            self.writer.save(save_as, {"model": model.state_dict(), "masks": masks.state_dict()})
        self.writer.add(row, result.history, ctx)
        self.log.log_row(row)
        self.done.add(key)
        self.save_progress()
        if inflight.exists():
            inflight.unlink()
        return result


# ---------------------------------------------------------------------------------------------
# Runners, one per schedule kind
# ---------------------------------------------------------------------------------------------

def run_dense(run: Run) -> None:
    model = run.new_model(run.seed)
    masks = run.new_masks(model)
    if "r0/dense" not in run.done:
        record_event(run, 0, masks, {n: 1.0 for n in masks.names()}, 1.0, method=run.cfg.method.name,
                     variant="dense")
        run.train_arm("r0/dense", model, masks, 0, "dense", target_density=1.0, save_as="checkpoints/final.pt",
                      stage="dense")


REWIND_LABELS = {"init": "lth", "step": "ltr", "none": "finetune"}


def run_iterative(run: Run) -> None:
    """Iterative pruning (LTH / LTR / Han fine-tuning) with controls at chosen rounds.

    ``schedule.rewinds`` (a list) runs one pruning chain per rewind in the same run, sharing the
    dense round 0; their rows are named ``lth`` / ``ltr`` / ``finetune`` in the ``method`` column.
    """
    sched = run.cfg.method.schedule
    rewinds = list(sched.get("rewinds") or [sched.rewind])
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


RUNNERS: dict[str, Callable[[Run], None]] = {
    "none": run_dense,
    "iterative": run_iterative,
    "kernel_study": hardware.kernel_study,  # hardware kernel study: times kernels, trains nothing
}

from .runners import RUNNERS as _MULTI_LEVEL  # noqa: E402  (one-shot, at-init, gradual; needs Run above)
from .nm_pipeline import run_nm, run_nm_compare  # noqa: E402  (N:M runners; they only use Run)

RUNNERS.update(_MULTI_LEVEL)
RUNNERS.update({"nm": run_nm, "nm_compare": run_nm_compare})
from .graph_rnn import run_graph_rnn  # noqa: E402  (sparse RNNs from random graphs)

RUNNERS["graph_rnn"] = run_graph_rnn


# ---------------------------------------------------------------------------------------------

def rank_methods(rows: list[dict[str, Any]]) -> None:
    """When one run compares several methods at the same levels (e.g. pai_mnist's criteria), add
    ``rank`` (1 = best final test accuracy among the methods at that level and seed) to their rows
    and print the ordering at the sparsest level."""
    arms = [r for r in rows if r.get("variant") == "sparse"]
    if len({r["method"] for r in arms}) < 2:
        return
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for r in arms:
        groups.setdefault((r["seed"], round(float(r["target_density"]), 6)), []).append(r)
    for group in groups.values():
        for i, r in enumerate(sorted(group, key=lambda r: -r["test_acc"]), start=1):
            r["rank"] = i
    for seed in sorted({k[0] for k in groups}):
        level = min(k[1] for k in groups if k[0] == seed)
        order = sorted(groups[(seed, level)], key=lambda r: r["rank"])
        print(f"ordering at {100 * level:.3g}% weights remaining (seed {seed}): "
              + " > ".join(f"{r['method']} {100 * r['test_acc']:.1f}" for r in order))


def environment() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu,
            "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda requested but no CUDA device is available; allowed here: cpu, auto")
    return torch.device(name)


class RunBusy(ConfigError):
    """Another process holds the run directory's lock."""


CLAIMED: set[str] = set()  # run directories this process marked "running" and has not finished


def may_record_failure(run_dir: Path, error: BaseException) -> bool:
    """Whether a failed attempt may write ``status: failed`` into ``run_dir/run.json``: only a run this
    process started, or a directory with no ``run.json`` yet — never a finished run or another process's."""
    if isinstance(error, RunBusy):
        return False
    return str(Path(run_dir).resolve()) in CLAIMED or not (Path(run_dir) / "run.json").exists()


def clear_run_dir(run_dir: Path) -> None:
    """Remove what earlier runs wrote into ``run_dir`` (state, tables, figures); Hydra's record stays."""
    for sub in RUN_DIRS:
        shutil.rmtree(run_dir / sub, ignore_errors=True)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def read_meta(meta_path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise StateError(meta_path, f"cannot be read ({type(e).__name__}); {RESTART_HINT}") from None
    if not isinstance(meta, dict):
        raise StateError(meta_path, f"is not a sparse-run run.json; {RESTART_HINT}")
    return meta


def execute(cfg: DictConfig, run_dir: Path) -> Path:
    """Run the experiment described by the effective ``cfg`` into ``run_dir``; return it.

    The whole run holds an exclusive lock on ``run_dir/.lock``: a second process aimed at the same
    directory stops with one line instead of training everything again beside the first.
    """
    run_dir = Path(run_dir)
    restart = cfg.get("restart", False)
    if not isinstance(restart, bool):
        raise ConfigError("restart", f"got {restart!r}; allowed: true, false")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    from . import train as train_mod

    train_mod.SHOW_PROGRESS = bool(cfg.get("progress", True))
    device = pick_device(cfg.device)
    cfg = data_mod.with_fallback(cfg)  # budget=smoke on absent data: synthetic stand-in, announced
    run_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as held:
        try:
            held.enter_context(stages.file_lock(run_dir / LOCK, blocking=False))
        except BlockingIOError:
            raise RunBusy(str(run_dir), "another sparse-run process is running this run directory (it holds "
                                        f"{LOCK}); wait for it to finish, or point this one elsewhere") from None
        return _execute(cfg, run_dir, device, restart)


def _execute(cfg: DictConfig, run_dir: Path, device: torch.device, restart: bool) -> Path:
    cfg_dict = to_dict(cfg)
    chash = config_hash(cfg_dict)
    meta_path = run_dir / "run.json"
    if restart:
        print(f"sparse-run: restart=true: starting {run_dir} afresh")
        clear_run_dir(run_dir)
    elif meta_path.exists():
        meta = read_meta(meta_path)
        if meta.get("config_hash") == chash and meta.get("status") == "complete":
            print(f"sparse-run: {run_dir} is already complete (config {chash}); nothing to do")
            return run_dir
        if meta.get("config_hash") != chash:
            print(f"sparse-run: {run_dir} holds an earlier run of a different config; starting afresh")
            clear_run_dir(run_dir)
    meta = {"config_hash": chash, "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "environment": environment(), "commit": _git_commit()}
    atomic_write_text(meta_path, json.dumps(meta, indent=2))
    CLAIMED.add(str(run_dir.resolve()))
    import yaml  # shipped with omegaconf

    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))

    data = data_mod.load(cfg.dataset, cfg.paths.data_dir, device,
                         train_subset=cfg.budget.train_subset, eval_subset=cfg.budget.eval_subset)
    log = logger_mod.build(cfg.logger, run_dir, cfg_dict, f"{cfg.name}/{run_dir.name}")
    run = Run(cfg=cfg, dir=run_dir, data=data, writer=RunWriter(run_dir), log=log, device=device)
    ok = False
    try:
        if run.load_progress():
            print(f"sparse-run: resuming {run_dir} ({len(run.done)} arms already done)")
        lanes.run_lanes(run, RUNNERS[cfg.method.schedule.kind])  # K seeds in lock-step if train.replicates=K
        rank_methods(run.writer.rows)
        hardware.measure(run)
        run.writer.flush()
        report.run_figures(run_dir)
        ok = True
    finally:
        log.finish(ok)
    meta.update(status="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_text(meta_path, json.dumps(meta, indent=2))
    CLAIMED.discard(str(run_dir.resolve()))
    print(f"{cfg.name} (budget {cfg.budget.name}, seed {cfg.seed}) → {run_dir}")
    print(report.console_table(run.writer_frame()))
    return run_dir


def _git_commit() -> str | None:
    try:
        import subprocess

        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
