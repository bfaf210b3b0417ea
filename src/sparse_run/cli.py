"""``sparse-run``: the Hydra entry point.

Before Hydra creates any directory, the command line is checked (unknown group options) and, for
a single run, the composed config is validated, so bad input costs one line and writes nothing.
"""
from __future__ import annotations

import json
import sys
import time
from importlib import resources
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .validate import ConfigError

CONF_MODULE = "sparse_run.conf"
OmegaConf.register_new_resolver("run_id", lambda s: s or "default", replace=True)


def groups() -> dict[str, list[str]]:
    """Config groups shipped in the package and their options."""
    root = resources.files(CONF_MODULE)
    out: dict[str, list[str]] = {}
    for d in root.iterdir():
        if d.is_dir() and not d.name.startswith("_"):
            out[d.name] = sorted(f.name[:-5] for f in d.iterdir() if f.name.endswith(".yaml"))
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


def prevalidate(args: list[str]) -> None:
    """Compose and validate a single run's config before Hydra touches the disk."""
    from hydra import compose, initialize_config_module

    from .config import effective

    overrides = [a for a in args if not a.startswith("-")]
    with initialize_config_module(version_base="1.3", config_module=CONF_MODULE):
        cfg = compose(config_name="config", overrides=overrides)
    from . import data, hardware
    from .config import validate

    eff = effective(cfg)
    hardware.check(eff)  # may switch the method's pattern to what the target runs (announced)
    validate(eff)
    data._root(cfg.dataset, cfg.paths.data_dir)


def _mark_failed(run_dir: Path, error: BaseException) -> None:
    """Record the failure in ``run.json`` — only for a run this attempt started (or a directory
    without one): a finished run, or one another process is running, is left as it is."""
    from .pipeline import may_record_failure
    from .results import atomic_write_text

    if not may_record_failure(run_dir, error):
        return
    meta_path = run_dir / "run.json"
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except (OSError, ValueError):
        return  # unreadable: leave it for restart=true rather than overwrite what is there
    if not isinstance(meta, dict):
        return
    meta.update(status="failed", error=f"{type(error).__name__}: {error}",
                finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_text(meta_path, json.dumps(meta, indent=2))


@hydra.main(version_base="1.3", config_path="pkg://sparse_run.conf", config_name="config")
def task(cfg: DictConfig) -> None:
    from . import hardware
    from .config import effective
    from .pipeline import execute
    from .train import Diverged

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        from .config import validate

        eff = effective(cfg)
        hardware.check(eff)
        validate(eff)
        execute(eff, run_dir)
    except (ConfigError, Diverged) as e:
        _mark_failed(run_dir, e)
        if multirun:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    except BaseException as e:
        _mark_failed(run_dir, e)
        raise


def main() -> None:
    args = sys.argv[1:]
    try:
        check_overrides(args)
        if not any(a in ("-m", "--multirun", "--help", "-h", "--hydra-help", "--info", "-c", "--cfg")
                   or a.startswith(("--info", "--cfg", "--shell-completion")) for a in args):
            prevalidate(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # Hydra / OmegaConf composition errors: keep them to one line too
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if not isinstance(e, (HydraException, OmegaConfBaseException)):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {first}", file=sys.stderr)
        sys.exit(2)
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
