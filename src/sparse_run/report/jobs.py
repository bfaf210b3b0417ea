"""Which jobs of a sweep finished, failed, are unfinished or never started — read from the run directories and
the sweep's ``multirun.yaml``, never from Hydra's end-of-sweep callback (skipped when a job fails, and never
reached when the launching process dies or a cluster job is still queued).

The expected jobs are the sweep's overrides expanded as Hydra's basic sweeper does (``hydra.sweeper.params``,
then the command line's, a later value for a key replacing an earlier one) and named as ``hydra.sweep.subdir``
names them (``store.names.run_id`` of the ``override_dirname``). That expansion uses two Hydra internals; if they
move, the report still lists every job that left a directory and says it cannot list missing ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from sparse_run.store.names import run_id

COLUMNS = ["sweep", "job", "status", "error"]


def expected(sweep_dir: Path) -> list[str] | None:
    """The run directory names the sweep recorded in ``sweep_dir/multirun.yaml`` creates; None if unknown."""
    try:
        from hydra._internal.config_loader_impl import get_overrides_dirname
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        cfg: Any = OmegaConf.load(sweep_dir / "multirun.yaml")  # YAML only: nothing in it can run code
        hydra = cfg.hydra
        if "sweeper" in hydra and hydra.sweeper.get("_target_", "").split(".")[-1] != "BasicSweeper":
            return None  # another sweeper (optuna …) picks its jobs as it goes
        params = hydra.sweeper.get("params") or {}
        parser = OverridesParser.create()
        args = [f"{k}={v}" for k, v in params.items()] + list(hydra.overrides.task)
        jobs = BasicSweeper.split_arguments(parser.parse_overrides(args), None)[0]
        opts = hydra.job.config.override_dirname
        return [run_id(get_overrides_dirname(parser.parse_overrides(job), list(opts.exclude_keys), opts.item_sep,
                                             opts.kv_sep)) for job in jobs]
    except Exception:  # noqa: BLE001 - an unreadable or foreign multirun.yaml, or moved Hydra internals
        return None


def sweeps(root: Path) -> list[Path]:
    return sorted(p.parent for p in Path(root).rglob("multirun.yaml") if "report" not in p.parts)


def status(root: Path, present: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per job of every sweep under ``root``: its status from ``present`` (run dir → run.json fields), or
    ``missing`` for an expected job that left no directory; a sweep whose jobs cannot be expanded lists only those
    present, with one ``unknown`` row saying so."""
    out = []
    for sweep in sweeps(root):
        names = expected(sweep)
        if names is None:
            out.append({"sweep": str(sweep), "job": "", "status": "unknown",
                        "error": "multirun.yaml could not be expanded: jobs that never started are not listed"})
            names = sorted(Path(d).name for d in present if Path(d).parent == sweep)
        for name in names:
            meta = present.get(str(sweep / name))
            if meta is None:
                out.append({"sweep": str(sweep), "job": name, "status": "missing", "error": "never started"})
            else:
                out.append({"sweep": str(sweep), "job": name, "status": meta.get("status", "failed"),
                            "error": meta.get("error", "") or ""})
    return out
