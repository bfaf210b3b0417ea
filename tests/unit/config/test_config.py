"""Every config composes and validates; the package ships its configs."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib import resources

import pytest
import yaml

from conftest import REPO, compose_cfg, run_cli
from sparse_run.cli import groups
from sparse_run.execute import effective

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
    # every module of every layer package (pyproject's packages list names them one by one)
    src = REPO / "src"
    modules = {p.relative_to(src).as_posix() for p in (src / "sparse_run").rglob("*.py") if "conf" not in p.parts}
    missing = modules - set(zipfile.ZipFile(wheel).namelist())
    assert not missing, f"modules missing from the wheel: {sorted(missing)}"


def test_explicit_command_line_steps_are_not_scaled_by_the_budget():
    from sparse_run.config import budget_note, explicit_keys

    args = ["experiment=lottery_mnist", "budget=smoke", "train.steps=200", "+method.schedule.rewind_step=50"]
    eff = effective(compose_cfg(*args[:3]), explicit_keys(args))
    assert eff.train.steps == 200 and eff.train.eval_every == 100  # budget.evals=2 still sets the cadence
    assert list(eff.budget.unscaled) == ["train.steps"]
    assert budget_note(eff) == ("sparse-run: budget=smoke leaves train.steps=200 as given on the command line "
                                "(explicit values are not scaled by the budget)")
    plain = effective(compose_cfg(*args[:3]))  # composed without the command line (e.g. tests): scaled
    assert plain.train.steps == 20 and "unscaled" not in plain.budget and budget_note(plain) is None
    # explicit keys the budget would not change are not listed; the experiment's own values still scale
    same = effective(compose_cfg("experiment=lottery_mnist", "budget=smoke", "method.schedule.rounds=1"),
                     explicit_keys(["method.schedule.rounds=1"]))
    assert "unscaled" not in same.budget and same.train.steps == 200


def test_cli_keeps_an_explicit_step_count_and_says_so(tmp_path):
    proc = run_cli("method=dense", "budget=smoke", "dataset=synthetic_mnist", "train.steps=60", "threads=1",
                   "progress=false", f"paths.results_dir={tmp_path}", timeout=300)
    assert "budget=smoke leaves train.steps=60 as given on the command line" in proc.stdout
    cfg = yaml.safe_load(next(tmp_path.rglob("config.yaml")).read_text())
    assert cfg["train"]["steps"] == 60 and cfg["budget"]["unscaled"] == ["train.steps"]
    import pandas as pd

    assert pd.read_csv(next(tmp_path.rglob("summary.csv"))).steps.tolist() == [60]


@pytest.mark.parametrize("budget", BUDGETS)
def test_resnet20_rewinds_late_at_the_full_learning_rate(budget):
    """Late rewinding (Frankle et al. 2019/2020; open_lth): rewind to iteration 500 of training at lr
    0.1, not to a point inside a warmup where the lr is ~1/40 of its peak and the weights are ~θ0."""
    import torch

    from sparse_run.engine.train import make_lr_schedule

    eff = effective(compose_cfg("experiment=lottery_resnet20_cifar10", f"budget={budget}"))
    t, s = eff.train, eff.method.schedule
    assert s.rewind == "step" and t.warmup_steps == 0 and t.lr == 0.1
    assert 0 < s.rewind_step < t.steps * 0.05  # early: a few % into training
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=t.lr)
    sched = make_lr_schedule(opt, t, int(t.steps))
    for _ in range(int(s.rewind_step)):
        opt.step()  # no gradient: a no-op, in the order torch expects
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(t.lr)  # the schedule's full rate at the rewind point
    if budget == "paper":
        assert (t.steps, s.rewind_step, t.batch_size) == (30000, 500, 128)


@pytest.mark.parametrize("experiment", ["lottery_vgg19_cifar10", "lottery_resnet20_cifar10"])
def test_late_rewinding_never_rewinds_into_a_warmup(experiment):
    """Every late-rewinding experiment rewinds to a point where the lr schedule is at its full rate."""
    eff = effective(compose_cfg(f"experiment={experiment}", "budget=paper"))
    assert eff.method.schedule.rewind == "step"
    assert eff.train.warmup_steps <= eff.method.schedule.rewind_step
