"""Shared fixtures: composing configs through the installed package, and running the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from hydra import compose, initialize_config_module

# measured kernel choices (engine.kernels.Memory) go to a file of this test process, not the user's cache
os.environ.setdefault("SPARSE_RUN_KERNELS", str(Path(os.environ.get("TMPDIR", "/tmp")) /
                                                f"sparse-run-test-kernels-{os.getpid()}.json"))

if os.environ.get("PYTEST_XDIST_WORKER"):  # make test: one worker per core, so one torch thread per process
    # (the workers and the CLI runs they start would otherwise each spin a thread per core: 2x oversubscribed)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

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


def run_main(monkeypatch, capsys, args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """``sparse-run ARGS`` in this process through the entry point's ``main``, for errors that come before Hydra
    starts (seconds cheaper than a subprocess); (exit code, stderr). Launcher variables not in ``env`` are unset."""
    from sparse_run import cli

    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "argv", ["sparse-run", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    return e.value.code, capsys.readouterr().err


def sigkill_inside(args: list[str], results: Path, experiment: str, inside: Callable[[str], bool]) -> Path:
    """Start ``sparse-run args`` into ``results``, SIGKILL it while an arm for which ``inside(arm key)`` holds has an
    in-flight checkpoint, and return that run's directory (its ``run.json`` still says running)."""
    import json
    import signal
    import time

    import torch

    proc = subprocess.Popen([CLI, *args, f"paths.results_dir={results}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, target = time.time() + 120, None
    while time.time() < deadline and proc.poll() is None:
        found = list((results / experiment).glob("*/checkpoints/inflight.pt")) if results.exists() else []
        try:  # an arm that finishes removes its checkpoint between the glob and the load (or it is mid-write)
            inflight = torch.load(found[0], weights_only=True) if found else None
        except (FileNotFoundError, RuntimeError, EOFError):
            inflight = None
        if inflight is not None and inside(inflight["arm"]):
            target = found[0].parent.parent
            break
        time.sleep(0.01)
    assert proc.poll() is None and target is not None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((target / "run.json").read_text())["status"] == "running"
    return target


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One end-to-end LTH smoke run shared by the schema tests."""
    root = tmp_path_factory.mktemp("smoke")
    run_cli("experiment=lottery_mnist", "budget=smoke", f"paths.results_dir={root}")
    return root / "lottery_mnist" / "budget=smoke"
