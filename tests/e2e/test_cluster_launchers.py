"""Sweep launchers shipped in conf/hydra/launcher: ``slurm`` (submitit) renders the documented sbatch options and
refuses to start without what it needs; ``gpus`` runs one job per visible GPU."""
from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_module

import sparse_run.cli  # noqa: F401 - registers the resolvers the launcher configs use (gpu_count)
from conftest import run_main

SWEEP = ["--multirun", "experiment=lottery_mnist", "budget=smoke", "seed=0,1"]


def _launcher(*overrides: str):
    with initialize_config_module(version_base="1.3", config_module="sparse_run.conf"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True).hydra.launcher


def test_slurm_launcher_config_renders_to_the_documented_sbatch_options(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string  # the script submitit submits

    lc = _launcher("hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    script = _make_sbatch_string(command="python -u x.py", folder=tmp_path, partition=lc.partition,
                                 time=lc.timeout_min, gpus_per_task=lc.gpus_per_task, cpus_per_task=lc.cpus_per_task,
                                 mem=f"{lc.mem_gb}GB", ntasks_per_node=lc.tasks_per_node,
                                 signal_delay_s=lc.signal_delay_s, array_parallelism=lc.array_parallelism,
                                 map_count=100)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=240", "#SBATCH --gpus-per-task=1",
                 "#SBATCH --signal=USR2@120", "#SBATCH --array=0-99%64", "#SBATCH --open-mode=append"):
        assert line in script, line
    assert lc.max_num_timeout == 20 and lc._target_.endswith("SlurmLauncher")


@pytest.mark.parametrize("extra, field", [([], "hydra.launcher.partition"),
                                          (["hydra.launcher.partition=gpu"], "hydra/launcher")])
def test_slurm_sweep_without_its_options_or_without_slurm_is_a_one_line_error(tmp_path, monkeypatch, capsys, extra,
                                                                              field):
    if field == "hydra/launcher" and any(os.access(os.path.join(d, "sbatch"), os.X_OK)
                                         for d in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.skip("this machine has SLURM")
    code, err = run_main(monkeypatch, capsys, [*SWEEP, "hydra/launcher=slurm", *extra, f"paths.results_dir={tmp_path}"])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {field}:"), err
    assert not any(tmp_path.iterdir())


def test_gpus_launcher_runs_one_job_per_visible_gpu():
    import torch

    lc = _launcher("hydra/launcher=gpus")
    assert lc.n_jobs == max(1, torch.cuda.device_count()) and lc._target_.endswith("JoblibLauncher")
