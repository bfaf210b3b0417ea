"""Loggers (config group ``logger/``): a mirror of what the results files already record.

The run directory's files are the source of truth whatever the logger; ``logger=wandb`` mirrors
each evaluation and summary row to Weights & Biases (offline unless configured otherwise) and is
always finished, so jobs sharing a process in a multirun never log into each other's run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sparse_run.config.errors import ConfigError, choice

KINDS = ("csv", "wandb")
NO_KEY = ("logger.mode", "online needs a W&B API key and none is configured (WANDB_API_KEY, ~/.netrc or "
          "`wandb login`); allowed without one: offline, disabled")


def check(cfg: Any) -> None:
    """``logger=wandb logger.mode=online`` without credentials fails in ``wandb.init`` after the run
    directory exists; look for them first (environment, .netrc, wandb settings; no network)."""
    if cfg.kind != "wandb" or cfg.mode != "online":
        return
    import os

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return
    try:
        from wandb.sdk.lib.wbauth import authenticate

        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        found = authenticate.authenticate_session(host=host, source="sparse-run", prompt=False,
                                                  update_session=False)
    except ImportError:
        raise ConfigError("logger.kind", "wandb is not installed; allowed: csv, or pip install wandb") from None
    except Exception:  # noqa: BLE001 - wandb internals moved: leave it to wandb.init (caught in build)
        return
    if found is None:
        raise ConfigError(*NO_KEY)


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
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, dir=str(run_dir),
                              name=name, config=config, reinit="finish_previous", group=cfg.group)
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
    if kind != "wandb":
        return Logger()
    try:
        return WandbLogger(cfg, run_dir, config, name)
    except Exception as e:
        if type(e).__name__ in ("UsageError", "AuthenticationError"):  # wandb.errors: no or bad credentials
            raise ConfigError("logger.mode", f"{cfg.mode}: {str(e).splitlines()[0]}; allowed without "
                                             "credentials: offline, disabled") from None
        raise
