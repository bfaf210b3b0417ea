"""Loggers (config group ``logger/``): a mirror of what the results files already record.

The run directory's files are the source of truth whatever the logger; ``logger=wandb`` mirrors
each evaluation and summary row to Weights & Biases (offline unless configured otherwise) and is
always finished, so jobs sharing a process in a multirun never log into each other's run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .validate import choice

KINDS = ("csv", "wandb")


class Logger:
    """Base logger: the results writer already wrote CSV/JSONL, so nothing more to do."""

    def log_eval(self, record: dict[str, Any], context: dict[str, Any]) -> None:  # noqa: D401
        pass

    def log_row(self, row: dict[str, Any]) -> None:
        pass

    def finish(self, ok: bool = True) -> None:
        pass


class WandbLogger(Logger):
    def __init__(self, cfg: Any, run_dir: Path, config: dict[str, Any], name: str):
        import wandb

        self._wandb = wandb
        self.run = wandb.init(project=cfg.project, entity=cfg.get("entity"), mode=cfg.mode, dir=str(run_dir),
                              name=name, config=config, reinit="finish_previous", group=cfg.get("group"))
        self._rows: list[dict[str, Any]] = []

    def log_eval(self, record: dict[str, Any], context: dict[str, Any]) -> None:
        tag = f"r{context['round']}/{context['variant']}"
        self.run.log({f"{tag}/{k}": v for k, v in record.items() if k != "step"} | {f"{tag}/step": record["step"]})

    def log_row(self, row: dict[str, Any]) -> None:
        self._rows.append(row)

    def finish(self, ok: bool = True) -> None:
        if self._rows:
            cols = list(self._rows[0])
            self.run.log({"summary": self._wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in self._rows])})
        self.run.finish(exit_code=0 if ok else 1)


def build(cfg: Any, run_dir: Path, config: dict[str, Any], name: str) -> Logger:
    kind = choice(cfg.kind, "logger.kind", KINDS)
    return WandbLogger(cfg, run_dir, config, name) if kind == "wandb" else Logger()
