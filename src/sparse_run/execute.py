"""A run directory's lifecycle: lock it, resume or start afresh, record provenance, run the method's arms
(K seeds in lock-step under ``train.replicates``), time the final model on the hardware target, draw the run's
figures and print the console table.

Above the methods and the report: it is the one place that joins them. ``effective`` turns a composed config
into the one a run records (budget applied, hardware target reconciled, validated once).
"""
from __future__ import annotations

import json
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterable

import torch
from omegaconf import DictConfig, OmegaConf

from sparse_run import data as data_mod
from sparse_run import hardware, methods, report
from sparse_run.config import ConfigError, apply_budget, to_dict
from sparse_run.engine import distributed, gpus, lanes, stages
from sparse_run.engine import logger as logger_mod
from sparse_run.engine import train as train_mod
from sparse_run.engine.results import RunWriter
from sparse_run.engine.run import Run, config_hash
from sparse_run.store.files import RESTART_HINT, StateError, atomic_write_text
from sparse_run.store.provenance import environment, git_commit

LOCK = ".lock"  # held (fcntl) by the process running the directory
# everything a run writes into its directory (Hydra's .hydra/ and the lock aside): what restart=true removes
RUN_DIRS = ("checkpoints", "masks", "figures", "seeds", "export")
STATE_DIRS = ("checkpoints", "masks", "seeds")  # what a resumed run reads back: sent to the other ranks
RUN_FILES = ("run.json", "config.yaml", "summary.csv", "metrics.jsonl", "layers.csv", "hardware.csv", "hardware.json",
             "kernel.csv", "kernel.json", "breakeven.csv", "correlations.csv")


def effective(cfg: DictConfig, explicit: Iterable[str] = (), validate: bool = True) -> DictConfig:
    """The effective config a run records: the budget applied (``explicit``: the keys given on the command
    line, see ``config.explicit_keys``, which it leaves as they are), the method's selection reconciled with
    the hardware target (announced), then validated — once per run: the CLI validates before Hydra writes
    anything, and a single run's job, composed from the same command line, passes ``validate=False``.
    Types were checked when Hydra composed ``cfg`` against the schema (``config/schema.py``)."""
    eff = apply_budget(cfg, explicit)
    hardware.check(eff, methods.selects(eff))  # may switch the method's pattern to what the target runs
    if validate:
        methods.validate(eff)
    return eff


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
    restart = cfg.restart
    if not isinstance(restart, bool):
        raise ConfigError("restart", f"got {restart!r}; allowed: true, false")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    train_mod.SHOW_PROGRESS = bool(cfg.progress)
    device = pick_device(cfg.device)
    ctx = distributed.setup(cfg.dist, device)  # torchrun: join the process group (a no-op for one process)
    try:
        device = distributed.local_device(device, ctx)
        if ctx.active and cfg.cache:  # ranks must not each consult (or hold the lock of) a shared stage cache
            cfg = OmegaConf.merge(cfg, {"cache": False})
            if ctx.leader:
                print(f"sparse-run: {ctx.world} processes (dist backend {torch.distributed.get_backend()}); "
                      "the shared-stage cache is off in data-parallel runs")
        cfg = data_mod.with_fallback(cfg)  # budget=smoke on absent data: synthetic stand-in, announced
        if not ctx.leader:
            return _follow(cfg, run_dir, device)
        run_dir.mkdir(parents=True, exist_ok=True)
        with ExitStack() as held:
            try:
                held.enter_context(stages.file_lock(run_dir / LOCK, blocking=False))
            except BlockingIOError:
                raise RunBusy(str(run_dir), "another sparse-run process is running this run directory (it holds "
                                            f"{LOCK}); wait for it to finish, or point this one elsewhere") from None
            if device.type == "cuda" and not ctx.active:  # several GPUs: this job takes one no other job holds
                count = torch.cuda.device_count()
                index = held.enter_context(gpus.claim(count))
                torch.cuda.set_device(index)
                device = torch.device("cuda", index)
                if count > 1:
                    print(f"sparse-run: GPU {index} of {count} ({torch.cuda.get_device_name(index)})")
            return _execute(cfg, run_dir, device, restart)
    finally:
        distributed.teardown()


def _load_data(cfg: DictConfig, device: torch.device) -> data_mod.DataBundle:
    return data_mod.load(cfg.dataset, cfg.paths.data_dir, device,
                         train_subset=cfg.budget.train_subset, eval_subset=cfg.budget.eval_subset)


def _follow(cfg: DictConfig, run_dir: Path, device: torch.device) -> Path:
    """A non-zero rank of a data-parallel run: the same arms on the same state, written to a private scratch
    directory seeded with rank 0's state files (rank 0 alone writes ``run_dir``)."""
    files = distributed.share_start(None, STATE_DIRS)
    if files is None:  # rank 0 found the run complete
        return run_dir
    work = distributed.scratch(files)
    try:
        run = Run(cfg=cfg, dir=work, data=_load_data(cfg, device), writer=RunWriter(work), log=logger_mod.Logger(), device=device)
        run.load_progress()
        lanes.run_lanes(run, methods.REGISTRY[cfg.method.schedule.kind].run)
    finally:
        distributed.drop_scratch(work)
    return run_dir


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
            distributed.share_start(None, STATE_DIRS)  # the other ranks stop too
            return run_dir
        if meta.get("config_hash") != chash:
            print(f"sparse-run: {run_dir} holds an earlier run of a different config; starting afresh")
            clear_run_dir(run_dir)
    meta = {"config_hash": chash, "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "environment": environment(), "commit": git_commit()}
    atomic_write_text(meta_path, json.dumps(meta, indent=2))
    CLAIMED.add(str(run_dir.resolve()))
    import yaml  # shipped with omegaconf

    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))
    distributed.share_start(run_dir, STATE_DIRS)  # the other ranks resume from the same state

    data = _load_data(cfg, device)
    log = logger_mod.build(cfg.logger, run_dir, cfg_dict, f"{cfg.name}/{run_dir.name}")
    run = Run(cfg=cfg, dir=run_dir, data=data, writer=RunWriter(run_dir), log=log, device=device)
    ok = False
    try:
        if run.load_progress():
            print(f"sparse-run: resuming {run_dir} ({len(run.done)} arms already done)")
        method = methods.REGISTRY[cfg.method.schedule.kind]
        lanes.run_lanes(run, method.run)  # K seeds in lock-step if train.replicates=K
        rank_methods(run.writer.rows)
        if method.trains and hardware.measure(run) is not None:
            report.hardware_figure(run_dir / "hardware.csv", run_dir / "figures" / "hardware.png")
        run.writer.flush()
        report.run_figures(run_dir, method.figures_for(cfg))
        ok = True
    finally:
        log.finish(ok)
    meta.update(status="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_text(meta_path, json.dumps(meta, indent=2))
    CLAIMED.discard(str(run_dir.resolve()))
    print(f"{cfg.name} (budget {cfg.budget.name}, seed {cfg.seed}) → {run_dir}")
    print(report.console_table(run.writer_frame()))
    return run_dir
