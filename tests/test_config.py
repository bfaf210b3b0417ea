"""Every config composes and validates; the package ships its configs."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib import resources

import pytest

from conftest import REPO, compose_cfg, run_cli
from sparse_run.cli import groups
from sparse_run.config import effective

EXPERIMENTS = groups()["experiment"]
BUDGETS = groups()["budget"]


def test_groups_exist():
    g = groups()
    for name in ("model", "dataset", "method", "hardware", "train", "budget", "logger", "paths", "experiment"):
        assert g.get(name), f"config group {name}/ is missing or empty"
    assert {"paper", "quick", "smoke"} <= set(g["budget"])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("budget", BUDGETS)
def test_every_experiment_composes_and_validates(experiment, budget):
    cfg = compose_cfg(f"experiment={experiment}", f"budget={budget}")
    eff = effective(cfg)
    assert eff.name == experiment
    assert eff.train.steps >= 1 and eff.train.eval_every <= eff.train.steps


def test_lottery_mnist_is_the_paper_protocol():
    eff = effective(compose_cfg("experiment=lottery_mnist"))
    assert eff.budget.name == "paper"
    assert (eff.train.optimizer, eff.train.lr, eff.train.batch_size) == ("adam", 1.2e-3, 60)
    assert (eff.train.steps, eff.train.eval_every, eff.dataset.val_size) == (50000, 100, 5000)
    assert eff.method.schedule.rate == 0.2 and eff.method.policy.last_rate_scale == 0.5
    assert eff.method.schedule.rewind == "init" and eff.model.init == "glorot_normal"


def test_budget_scales_steps_and_caps_rounds():
    quick = effective(compose_cfg("experiment=lottery_mnist", "budget=quick"))
    assert quick.train.steps == 5000 and quick.train.eval_every == 250
    assert quick.method.schedule.rounds == 15
    assert list(quick.method.controls.rounds) == [3, 7, 12, 15]


def test_help_lists_groups_and_options():
    out = run_cli("--help").stdout
    for text in ("experiment: ", "lottery_mnist", "budget: paper, quick, smoke", "method: "):
        assert text in out


def test_configs_ship_inside_the_package():
    files = [p.name for p in resources.files("sparse_run.conf").joinpath("experiment").iterdir()]
    assert "lottery_mnist.yaml" in files


def test_wheel_contains_every_yaml(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("sparse_run-*.whl"))
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".yaml")}
    expected = {f"sparse_run/conf/{p.relative_to(REPO / 'conf')}" for p in (REPO / "conf").rglob("*.yaml")}
    assert expected and expected <= shipped
