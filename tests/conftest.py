"""Shared fixtures: composing configs through the installed package, and running the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "sparse-run")


def compose_cfg(*overrides: str):
    """The composed (not yet budgeted) config, exactly as ``sparse-run`` would see it."""
    with initialize_config_module(version_base="1.3", config_module="sparse_run.conf"):
        return compose(config_name="config", overrides=list(overrides))


def run_cli(*args: str, check: bool = True, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"sparse-run {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One end-to-end LTH smoke run shared by the schema tests."""
    root = tmp_path_factory.mktemp("smoke")
    run_cli("experiment=lottery_mnist", "budget=smoke", f"paths.results_dir={root}")
    return root / "lottery_mnist" / "budget=smoke"
