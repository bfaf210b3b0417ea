"""``sparse-run``: the Hydra entry point.

Before Hydra creates any directory, the command line is checked (unknown group options, misspelled
keys, unquoted non-ASCII values, the results directory) and, for a single run, the composed config
is validated, so bad input costs one line and writes nothing. Errors during a run (a full disk, an
unwritable file) are one line too; the run directory records them.
"""
from __future__ import annotations

import difflib
import errno
import json
import os
import re
import shutil
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError
from .config.schema import schema_error
from .store.names import MAX_DIRNAME, run_id  # noqa: F401 - MAX_DIRNAME re-exported (tests)

CONF_MODULE = "sparse_run.conf"
OmegaConf.register_new_resolver("run_id", run_id, replace=True)


def gpu_count() -> int:
    """GPUs torch sees (``hydra/launcher=gpus`` runs that many jobs at once); 1 without any."""
    import torch

    return max(1, torch.cuda.device_count())


OmegaConf.register_new_resolver("gpu_count", gpu_count, replace=True)


def groups() -> dict[str, list[str]]:
    """Config groups shipped in the package and their options."""
    root = resources.files(CONF_MODULE)
    out: dict[str, list[str]] = {}
    for d in root.iterdir():
        if d.is_dir() and not d.name.startswith("_"):  # names starting with _ are bases, not options
            out[d.name] = sorted(f.name[:-5] for f in d.iterdir() if f.name.endswith(".yaml") and not f.name.startswith("_"))
    return out


def check_overrides(args: list[str]) -> None:
    """Unknown options of a config group → one-line error with the allowed values."""
    known = groups()
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in known or value.startswith(("glob(", "choice(", "range(")) or value in ("null", ""):
            continue
        for option in value.split(","):
            if option not in known[key]:
                raise ConfigError(key, f"unknown option {option!r}; allowed: {', '.join(known[key])}")


def _unquoted_non_ascii(value: str) -> bool:
    quote = None
    for ch in value:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif not ch.isascii():
            return True
    return False


def check_unquoted_non_ascii(args: list[str]) -> None:
    """Hydra's override grammar takes only ASCII outside quotes; say so, naming the key."""
    for arg in args:
        if arg.startswith("-") or "=" not in arg or arg.isascii():
            continue
        key, value = arg.split("=", 1)
        if _unquoted_non_ascii(value):
            raise ConfigError(key.lstrip("+~"), f"got {value!r}: non-ASCII characters must be quoted; "
                                                f"allowed: {key}='{value}'")


def check_writable_dir(path: Any, field: str) -> None:
    """``path`` is, or can be created as, a directory this process can write into."""
    p = Path(str(path)).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise ConfigError(field, f"{p} is not a directory; allowed: a writable directory")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(field, f"{p} cannot be created ({probe} is not a directory); allowed: a writable directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(field, f"{p} is not writable ({probe} denies write access); allowed: a writable directory")
    # os.access says yes to root everywhere, and /proc or a read-only mount refuse anyway: try a file in
    # the nearest existing folder for real (an unnamed temporary file, gone at once; nothing is created)
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise ConfigError(field, f"{p} cannot be written ({e.strerror or e}); allowed: a writable directory") from None


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.append(key)
        if OmegaConf.is_dict(v):
            out += _flat_keys(v, key)
    return out


def unknown_key_error(e: Exception, overrides: list[str]) -> ConfigError | None:
    """Hydra's "Could not override 'a.b.c'" → a one-line error naming the nearest valid key."""
    m = re.match(r"Could not override '([^']+)'", str(e))
    if not m:
        return None
    key = m.group(1)
    from hydra import compose, initialize_config_module

    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+") != key]
    try:
        with initialize_config_module(version_base="1.3", config_module=CONF_MODULE):
            cfg = compose(config_name="config", overrides=rest)
        keys = _flat_keys(cfg)
    except Exception:  # noqa: BLE001 - another override is broken too: no suggestion, still one line
        keys = []
    near = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    hint = f"did you mean {near[0]}?" if near else "no such key"
    return ConfigError(key, f"not a config key; {hint}")  # the schema takes no new keys (config/schema.py)


def check_launcher(overrides: list[str]) -> None:
    """A sweep's launcher can start: its required options are set (``hydra/launcher=slurm`` needs a partition)
    and a SLURM launcher runs where SLURM does — one line each, before any job or directory exists."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(version_base="1.3", config_module=CONF_MODULE):
        launcher = compose(config_name="config", overrides=overrides, return_hydra_config=True).hydra.launcher
    missing = sorted(OmegaConf.missing_keys(launcher))
    if missing:
        raise ConfigError(f"hydra.launcher.{missing[0]}", "missing: the launcher needs it; allowed: "
                                                          f"hydra.launcher.{missing[0]}=VALUE on the command line")
    target = str(launcher.get("_target_", ""))
    if target.endswith("SlurmLauncher") and launcher.get("partition") is None:
        raise ConfigError("hydra.launcher.partition", "missing: a SLURM sweep names the partition its jobs run in; "
                                                      "allowed: hydra.launcher.partition=NAME (sinfo -s lists them)")
    if target.endswith("SlurmLauncher") and shutil.which("sbatch") is None:
        raise ConfigError("hydra/launcher", "a SLURM launcher, but sbatch is not on PATH here; allowed: run it on a "
                                            "SLURM login node, or hydra/launcher=submitit_local|joblib|gpus")


def prevalidate(args: list[str], multirun: bool = False) -> None:
    """Compose and validate a single run's config before Hydra touches the disk. For a multirun
    (whose sweeps compose only per job), the non-sweep overrides are composed and the paths checked."""
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .config import explicit_keys
    from .config.validate import check_name, check_results_dir
    from .execute import effective, pick_device

    overrides = [a for a in args if not a.startswith("-")]
    swept_groups = False
    if multirun:
        parsed = OverridesParser.create().parse_overrides(overrides)
        overrides = [o.input_line for o in parsed if not o.is_sweep_override()]
        known = groups()
        swept_groups = any(o.is_sweep_override() and o.key_or_group.lstrip("+~") in known for o in parsed)
    try:
        with initialize_config_module(version_base="1.3", config_module=CONF_MODULE):
            cfg = compose(config_name="config", overrides=overrides)
    except Exception as e:
        if swept_groups:  # a key may exist only under a swept group option: each job composes and reports
            return
        err = unknown_key_error(e, overrides) or schema_error(e)
        if err is not None:
            raise err from None
        raise
    if multirun:
        check_launcher(overrides)
    check_name(cfg.name)
    check_results_dir(cfg.paths.results_dir)
    check_writable_dir(cfg.paths.results_dir, "paths.results_dir")
    if multirun:
        if cfg.device == "cuda":
            pick_device(cfg.device)  # device=cuda without CUDA: one line, before any job or directory exists
        return
    from .data import sources
    from .engine import logger

    eff = effective(cfg, explicit_keys(overrides))  # the one validation of a single run
    pick_device(eff.device)  # device=cuda without CUDA: one line, before any directory exists
    logger.check(eff.logger)
    sources._root(cfg.dataset, cfg.paths.data_dir)


# errors of the machine rather than the config: one line naming the file, exit status 1
DISK_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
               errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}


MIN_FREE_BYTES = 1 << 20


def disk_error_line(e: BaseException, run_dir: Path | None = None) -> str | None:
    """``OSError(ENOSPC, ..., path)`` → ``disk full at <path> (...)``. Any other error while the run
    directory's disk has under 1 MiB free (torch.save says "file write failed") counts as disk full
    too. None for everything else (a real bug keeps its traceback)."""
    what = DISK_ERRNOS.get(getattr(e, "errno", None) or -1)
    where = f" at {e.filename}" if isinstance(e, OSError) and e.filename else ""
    if what is None and run_dir is not None:
        try:
            probe = Path(run_dir)
            while not probe.exists():
                probe = probe.parent
            if shutil.disk_usage(probe).free < MIN_FREE_BYTES:
                what, where = "disk full", f" under {run_dir}"
        except OSError:
            pass
    if what is None:
        return None
    text = str(e).strip()
    detail = e.strerror if isinstance(e, OSError) and e.strerror else text.splitlines()[0] if text else type(e).__name__
    return f"{what}{where} ({detail}); files already written are unchanged: free space or fix paths.results_dir " \
           "and run the same command again to resume"


def _mark_failed(run_dir: Path, error: BaseException, status: str = "failed") -> None:
    """Record the failure in ``run.json`` — only for a run this attempt started (or a directory
    without one): a finished run, or one another process is running, is left as it is."""
    from .execute import may_record_failure
    from .store.files import atomic_write_text

    if not may_record_failure(run_dir, error):
        return
    meta_path = run_dir / "run.json"
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except (OSError, ValueError):
        return  # unreadable: leave it for restart=true rather than overwrite what is there
    if not isinstance(meta, dict):
        return
    meta.update(status=status, error=f"{type(error).__name__}: {error}",
                finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_text(meta_path, json.dumps(meta, indent=2))


@hydra.main(version_base="1.3", config_path="pkg://sparse_run.conf", config_name="config")
def task(cfg: DictConfig) -> None:
    from .config import budget_note, explicit_keys
    from .engine import logger, preempt
    from .engine.distributed import MasksOutOfSync
    from .engine.train import Diverged
    from .execute import effective, execute

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    preempt.install()  # SIGTERM / SIGUSR1 / SIGUSR2: checkpoint at the next step, then stop or requeue
    try:
        # a single run was validated by prevalidate (same command line); each job of a sweep validates here
        eff = effective(cfg, explicit_keys(hc.overrides.task), validate=multirun)
        logger.check(eff.logger)
        note = budget_note(eff)
        if note:
            print(note)
        execute(eff, run_dir)
    except preempt.Preempted as e:
        _mark_failed(run_dir, e, status="preempted")
        print(f"sparse-run: {e}", file=sys.stderr)
        requeue = _submitit_requeue()
        if requeue is not None:  # submitit pickles this job again and requeues it (exits)
            requeue(e.signum, None)
        sys.exit(128 + e.signum)
    except (ConfigError, Diverged, MasksOutOfSync) as e:
        _mark_failed(run_dir, e)
        if multirun:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        line = disk_error_line(e, run_dir)
        try:
            _mark_failed(run_dir, e)
        except OSError:  # the disk that just failed may refuse this write too; the line below still says why
            pass
        if multirun or line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(1)
    except BaseException as e:
        _mark_failed(run_dir, e)
        raise
    finally:
        preempt.uninstall()


def _submitit_requeue() -> Any:
    """In a job started by a submitit launcher, submitit's own preemption handler (it calls the launcher's
    ``checkpoint()``, saves the resubmission and requeues the job); None elsewhere."""
    from .engine import preempt

    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    for sig in preempt.SIGNALS:
        handler = preempt.previous(sig)
        if getattr(handler, "__name__", "") == "checkpoint_and_try_requeue":
            return handler
    return None


def main() -> None:
    args = sys.argv[1:]
    info = any(a in ("--help", "-h", "--hydra-help", "--info", "-c", "--cfg")
               or a.startswith(("--info", "--cfg", "--shell-completion")) for a in args)
    try:
        check_unquoted_non_ascii(args)
        check_overrides(args)
        if any(a in ("-m", "--multirun") for a in args) and os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
            raise ConfigError("--multirun", "a data-parallel launch (WORLD_SIZE > 1) trains one run; allowed: sweep "
                                            "with --multirun and a launcher (docs/scaling.md), each job one process")
        if not info:
            prevalidate(args, multirun=any(a in ("-m", "--multirun") for a in args))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # Hydra / OmegaConf composition errors: keep them to one line too
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if not isinstance(e, (HydraException, OmegaConfBaseException)):
            raise
        typed = schema_error(e)  # a value of the wrong type, e.g. in an experiment's YAML
        if typed is not None:
            print(f"error: {typed}", file=sys.stderr)
            sys.exit(2)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {first}", file=sys.stderr)
        sys.exit(2)
    rank = os.environ.get("RANK", "0")
    if rank not in ("", "0"):  # a data-parallel run's other ranks: rank 0 alone writes the run directory
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    try:
        task()
    finally:
        # Hydra skips on_multirun_end when a job failed: aggregate what the sweep left anyway.
        from .report import ReportCallback, report

        for sweep in sorted(ReportCallback.started):
            if Path(sweep).is_dir():
                report(Path(sweep))
        ReportCallback.started.clear()


if __name__ == "__main__":
    main()
