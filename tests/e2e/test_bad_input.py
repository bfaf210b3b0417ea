"""Bad input and hostile values: one line naming the field or file, exit 2 (config) or 1 (machine),
nothing written; paths stay inside paths.results_dir; non-finite numbers never reach torch."""
from __future__ import annotations

import errno
import os
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import compose_cfg, run_cli
from sparse_run import cli
from sparse_run import execute as execute_mod
from sparse_run.config import ConfigError
from sparse_run.execute import effective

SMOKE = ("experiment=lottery_mnist", "budget=smoke", "threads=1", "progress=false")


def one_line_error(proc, field: str, *texts: str, code: int = 2) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == code, proc.stderr[-2000:]
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and field in err, err
    for t in texts:
        assert t in err, err
    return err


@pytest.mark.parametrize("args, field, texts", [
    (["method.schedule.rat=0.5"], "method.schedule.rat", ["did you mean method.schedule.rate?"]),
    (["train.stepz=3"], "train.stepz", ["did you mean train.steps?"]),
    (["name=café"], "name", ["name='café'"]),
    (["name=../../x"], "name", ["allowed: "]),
    (["name=a/b"], "name", ["allowed: "]),
    (["train.lr=nan"], "train.lr", ["finite"]),
    (["train.gamma=inf"], "train.gamma", ["finite"]),
    (["train.momentum=nan", "train.optimizer=sgd"], "train.momentum", ["finite"]),
    (["dataset.root={tmp}/typo"], "dataset.root", ["does not exist", "allowed: "]),
], ids=["misspelled_key", "misspelled_train_key", "unquoted_non_ascii_name", "name_escapes", "name_nests",
        "nan_lr", "inf_gamma", "nan_momentum", "typo_dataset_root"])
def test_bad_value_is_one_line_naming_the_field_and_writes_nothing(tmp_path, args, field, texts):
    results = tmp_path / "results"
    args = [a.format(tmp=tmp_path) for a in args]
    proc = run_cli(*SMOKE, *args, f"paths.results_dir={results}", check=False, timeout=120)
    one_line_error(proc, field, *texts)
    assert not results.exists() and sorted(tmp_path.iterdir()) == [], "a rejected run must not write anything"


@pytest.mark.parametrize("bad, field", [("method.schedule.rat=0.5", "method.schedule.rat"), ("name=../x", "name")],
                         ids=["misspelled_key", "name_escapes"])
def test_multirun_checks_keys_and_paths_before_the_sweep_starts(tmp_path, bad, field):
    results = tmp_path / "results"
    proc = run_cli("--multirun", *SMOKE, bad, "seed=0,1", f"paths.results_dir={results}", check=False, timeout=120)
    one_line_error(proc, field)
    assert sorted(tmp_path.iterdir()) == []


def test_quoted_non_ascii_name_is_accepted_as_one_directory():
    eff = effective(compose_cfg(*SMOKE, "name='café'"))
    assert eff.name == "café"
    cli.check_unquoted_non_ascii(["name='café'", "x=['é', \"ü\"]", "--multirun"])  # quoted anywhere: fine
    with pytest.raises(ConfigError, match=r"^x: got \"\['a'\]é\""):
        cli.check_unquoted_non_ascii(["x=['a']é"])


def test_empty_results_dir_is_refused_before_anything_is_written():
    """An empty paths.results_dir would put runs at /<name>/ (checked in-process: a regression must
    not write at / from the test suite)."""
    with pytest.raises(ConfigError, match=r"^paths.results_dir: got ''; allowed: a non-empty directory path"):
        cli.prevalidate([*SMOKE, "paths.results_dir="])
    with pytest.raises(ConfigError, match=r"^paths.results_dir: got ''"):
        effective(compose_cfg(*SMOKE, "paths.results_dir="))


@pytest.mark.parametrize("value, texts", [("{file}", ["is not a directory"]), ("{file}/sub", ["cannot be created"])],
                         ids=["a_file", "below_a_file"])
def test_results_dir_must_be_a_usable_directory(tmp_path, value, texts):
    f = tmp_path / "plain-file"
    f.write_text("keep me\n")
    proc = run_cli(*SMOKE, f"paths.results_dir={value.format(file=f)}", check=False, timeout=120)
    one_line_error(proc, "paths.results_dir", *texts)
    assert f.read_text() == "keep me\n" and sorted(tmp_path.iterdir()) == [f]


def test_unwritable_results_dir_is_one_line(tmp_path, monkeypatch):
    """(A unit test: the suite may run as root, for whom every directory is writable.)"""
    target = tmp_path / "ro" / "results"
    real = os.access
    monkeypatch.setattr(cli.os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
    with pytest.raises(ConfigError, match=r"^paths.results_dir: .* is not writable .*allowed: a writable directory$"):
        cli.check_writable_dir(target, "paths.results_dir")
    monkeypatch.undo()
    cli.check_writable_dir(tmp_path / "fine", "paths.results_dir")  # writable: no error, nothing created
    assert not (tmp_path / "fine").exists()


def test_results_dir_where_no_file_can_be_created_is_one_line(tmp_path):
    """/proc accepts no new files, even from root (for whom os.access always says yes)."""
    proc = run_cli("experiment=lottery_mnist", "budget=smoke", "paths.results_dir=/proc/sparse-run-x", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: paths.results_dir: /proc/sparse-run-x cannot be written")


def test_wandb_online_without_a_key_is_one_line_before_any_write(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    results = tmp_path / "results"
    env = {"WANDB_API_KEY": "", "HOME": str(home), "NETRC": str(home / ".netrc"), "WANDB_CONFIG_DIR": str(home),
           "SPARSE_RUN_DATA": str(tmp_path / "data")}
    proc = run_cli(*SMOKE, "logger=wandb", "logger.mode=online", f"paths.results_dir={results}", check=False,
                   timeout=120, env=env)
    one_line_error(proc, "logger.mode", "API key", "allowed without one: offline, disabled")
    assert not results.exists()


def test_slash_in_an_override_value_stays_one_directory(tmp_path):
    """Override values name the run directory; a '/' in one must not nest directories (or escape)."""
    assert cli.run_id("dataset.root=/a/b,seed=1") == "dataset.root=%2Fa%2Fb,seed=1"
    assert cli.run_id("x=50%/y") == "x=50%25%2Fy" and cli.run_id("") == "default"
    long = cli.run_id("method.schedule.sparsities=[" + ",".join(["0.5"] * 200) + "]")
    assert len(long.encode()) <= cli.MAX_DIRNAME and "/" not in long
    data_root = tmp_path / "data" / "nested"
    data_root.mkdir(parents=True)
    results = tmp_path / "results"
    run_cli("method=dense", "budget=smoke", "dataset=synthetic_mnist", "threads=1", "progress=false",
            f"dataset.root={data_root}", f"paths.results_dir={results}", timeout=300)
    runs = [p for p in (results / "default").iterdir()]
    assert len(runs) == 1 and (runs[0] / "summary.csv").exists(), runs
    assert runs[0].name.startswith("budget=smoke,dataset.root=%2F") and "%2Fnested" in runs[0].name


def test_explicit_dataset_root_that_exists_is_used(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    from sparse_run.data import sources as data

    cfg = compose_cfg("dataset.root=" + str(root))
    assert data._root(cfg.dataset, cfg.paths.data_dir) == root
    assert data._root(compose_cfg().dataset, str(tmp_path / "fresh")) == tmp_path / "fresh"  # default: created later


def test_non_finite_numbers_are_rejected_in_every_float_field():
    for override, field in (("train.lr=nan", "train.lr"), ("train.gamma=-inf", "train.gamma"),
                            ("train.milestones=[0.5,nan]", "train.milestones[1]"),
                            ("budget.steps_scale=inf", "budget.steps_scale"),
                            ("dataset.std=nan", "dataset.std"), ("+model.extra=nan", "model.extra")):
        with pytest.raises(ConfigError, match=rf"^{re.escape(field)}: got .*finite"):
            effective(compose_cfg("experiment=lottery_mnist", override))


def test_disk_full_during_a_run_is_one_line_and_keeps_what_was_written(tmp_path, monkeypatch, capsys):
    """ENOSPC from the results writer: exit 1 with one line naming the file; earlier files intact."""
    results = tmp_path / "results"
    run_dir = results / "lottery_mnist" / "budget=smoke"
    written = {}

    def full_disk(cfg, run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.csv").write_text("round,variant\n0,dense\n")
        written["summary"] = (run_dir / "summary.csv").read_text()
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "metrics.jsonl"))

    monkeypatch.setattr(execute_mod, "execute", full_disk)
    monkeypatch.setattr(sys, "argv", ["sparse-run", *SMOKE, f"paths.results_dir={results}"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: disk full at ") and "metrics.jsonl" in err
    assert (run_dir / "summary.csv").read_text() == written["summary"]
    meta = yaml.safe_load((run_dir / "run.json").read_text())
    assert meta["status"] == "failed" and "No space left" in meta["error"]


def test_torch_save_on_a_full_disk_is_one_line_too(tmp_path, monkeypatch, capsys):
    """torch.save reports ENOSPC as a RuntimeError; with under 1 MiB free it still reads as disk full."""
    import shutil

    def full_disk(cfg, run_dir):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed\n(more lines)")

    monkeypatch.setattr(execute_mod, "execute", full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    monkeypatch.setattr(sys, "argv", ["sparse-run", *SMOKE, f"paths.results_dir={tmp_path}"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: disk full under ") and "file write failed" in err


def test_other_os_errors_still_raise():
    assert cli.disk_error_line(OSError(errno.ENOENT, "gone")) is None
    assert cli.disk_error_line(RuntimeError("a bug"), Path("/tmp")) is None  # plenty of space: a real error
    line = cli.disk_error_line(OSError(errno.EDQUOT, "Disk quota exceeded", "/r/x.pt"))
    assert line.startswith("disk quota exceeded at /r/x.pt")


def test_diverged_run_is_flagged_at_chance(tmp_path):
    """Adam at lr=1e6 'completes' at chance: its rows say status=at_chance and the console warns."""
    results = tmp_path / "results"
    proc = run_cli("method=dense", "budget=smoke", "budget.chance_check=true", "dataset=synthetic_mnist",
                   "threads=1", "progress=false", "train.lr=1e6", f"paths.results_dir={results}", timeout=300,
                   check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = pd.read_csv(next(results.rglob("summary.csv")))
    assert list(summary.status) == ["at_chance"], summary[["variant", "test_acc", "status"]]
    assert "ended at chance" in proc.stderr and "status=at_chance" in proc.stderr


def test_chance_level_is_the_majority_share_plus_three_standard_errors():
    import torch

    from sparse_run.engine.train import chance_accuracy

    balanced = torch.arange(10).repeat(1000)  # CIFAR-10's test set: 1,000 per class
    assert chance_accuracy(balanced) == pytest.approx(0.1 + 3 * (0.1 * 0.9 / 10_000) ** 0.5)
    skewed = torch.cat([torch.zeros(1135), torch.ones(8865)]).long()
    assert chance_accuracy(skewed) == pytest.approx(0.8865 + 3 * (0.8865 * 0.1135 / 10_000) ** 0.5)
