"""train.replicates=K: K seeds in one vectorised pass give what K single runs give."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import compose_cfg
from sparse_run import execute as execute_mod
from sparse_run import models
from sparse_run.config import ConfigError
from sparse_run.data import DataBundle, DataSpec
from sparse_run.engine import lanes
from sparse_run.engine.replicates import Lane, train_replicates
from sparse_run.engine.train import train
from sparse_run.execute import effective
from sparse_run.sparsity import MaskSet, prunable

SPEC = DataSpec("toy", (1, 28, 28), 10)
TOL = {"rtol": 1e-5, "atol": 1e-6}  # on CPU the lanes are bit-identical; this leaves room for other BLAS


def toy_data(n: int = 600) -> DataBundle:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(n, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return DataBundle(SPEC, x, y, x[:200], y[:200], x[200:400], y[200:400])


def lenet_lane(seed: int, policy, density: float = 0.3) -> tuple[nn.Module, MaskSet]:
    cfg = compose_cfg("experiment=lottery_mnist")
    model = models.build(cfg.model, SPEC, seed)
    masks = MaskSet(prunable(model, policy))
    gen = torch.Generator().manual_seed(1000 + seed)
    masks.set({n: torch.rand(m.shape, generator=gen) < density for n, m in masks.masks.items()})
    return model, masks


def tcfg(**kw):
    # lanes compute dense; a single run at 30 % density could measure a sparse kernel faster and sum in another order
    t = compose_cfg("experiment=lottery_mnist").train.copy()
    t.update(batch_size=20, sparse_kernel="dense", **kw)
    return t


OPTIMIZERS = {
    "adam": dict(optimizer="adam", lr=1e-3),
    "sgd_momentum_wd_step": dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3,
                                 lr_schedule="step", milestones=[0.3, 0.6]),
    "sgd_nesterov_cosine_warmup": dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True,
                                       lr_schedule="cosine", warmup_steps=5),
    "adamw_wd": dict(optimizer="adamw", lr=1e-3, weight_decay=0.01),
}


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_vectorised_lanes_equal_single_train_calls(opt):
    policy = compose_cfg("experiment=lottery_mnist").method.policy
    t, data, seeds = tcfg(**OPTIMIZERS[opt]), toy_data(), [3, 4, 5]
    singles = []
    for s in seeds:
        model, masks = lenet_lane(s, policy)
        singles.append((model, train(model, masks, data, t, steps=40, eval_every=15, seed=s)))
    lanes_ = [Lane(*lenet_lane(s, policy), seed=s) for s in seeds]
    results = train_replicates(lanes_, data, t, steps=40, eval_every=15)
    for (model, ref), lane, res in zip(singles, lanes_, results):
        for (name, a), b in zip(model.named_parameters(), lane.model.parameters()):
            torch.testing.assert_close(b, a, **TOL, msg=name)
        assert lane.masks.violations() == {}
        assert [r["step"] for r in res.history] == [15, 30, 40]
        pd.testing.assert_frame_equal(pd.DataFrame(res.history), pd.DataFrame(ref.history), rtol=1e-5)
        assert (res.early_stop_step, res.steps) == (ref.early_stop_step, ref.steps)
    # lanes own their weights again (no view into the stacked tensors survives the pass)
    p0 = next(lanes_[0].model.parameters())
    assert p0.data.untyped_storage().nbytes() == p0.numel() * p0.element_size()


def test_masked_weights_stay_zero_at_every_step_and_hooks_see_live_lanes():
    policy = compose_cfg("experiment=lottery_mnist").method.policy
    lanes_ = [Lane(*lenet_lane(s, policy, density=0.1), seed=s) for s in (0, 1)]
    seen = []

    def hook(step: int, model: nn.Module, masks: MaskSet) -> None:
        assert masks.violations() == {}
        seen.append((step, float(next(model.parameters()).detach().abs().sum())))
        if step == 5:  # a gradual schedule prunes inside a hook: the stack must pick it up
            masks.set({n: m & (torch.arange(m.numel()).view_as(m) % 2 == 0) for n, m in masks.masks.items()})

    for lane in lanes_:
        lane.hooks = [hook]
    train_replicates(lanes_, toy_data(), tcfg(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3),
                     steps=10, eval_every=5)
    assert len(seen) == 20 and len({v for _, v in seen}) > 2  # weights moved, lane by lane
    for lane in lanes_:
        assert lane.masks.violations() == {}
        w = lane.masks.params["hidden.0.weight"].detach().flatten()
        assert bool((w[1::2] == 0).all())  # what the hook pruned stayed pruned


def test_lane_state_is_train_state_a_lane_resumes_under_train():
    """capture/checkpoint states use train()'s format: LTR rewinds and resume work across trainers."""
    policy = compose_cfg("experiment=lottery_mnist").method.policy
    t, data = tcfg(), toy_data()
    captured = {}
    lanes_ = [Lane(*lenet_lane(s, policy), seed=s, capture=(12, lambda st, s=s: captured.__setitem__(s, st)))
              for s in (0, 1)]
    train_replicates(lanes_, data, t, steps=30, eval_every=10)
    for s, lane in zip((0, 1), lanes_):
        model, masks = lenet_lane(s, policy)
        train(model, masks, data, t, steps=30, eval_every=10, seed=s, resume=copy.deepcopy(captured[s]))
        for a, b in zip(model.parameters(), lane.model.parameters()):
            torch.testing.assert_close(a, b, **TOL)
    # and the vectorised trainer resumes from those states too
    again = [Lane(*lenet_lane(s, policy), seed=s, resume=captured[s]) for s in (0, 1)]
    train_replicates(again, data, t, steps=30, eval_every=10)
    for a_lane, b_lane in zip(again, lanes_):
        for a, b in zip(a_lane.model.parameters(), b_lane.model.parameters()):
            torch.testing.assert_close(a, b, **TOL)


class TinyConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=3)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_any_architecture_through_vmap_matches_train():
    policy = compose_cfg("experiment=lottery_mnist").method.policy
    t, data = tcfg(), toy_data()

    def lane(seed: int) -> tuple[nn.Module, MaskSet]:
        torch.manual_seed(seed)
        model = TinyConv()
        masks = MaskSet(prunable(model, policy))
        masks.set({n: torch.rand(m.shape, generator=torch.Generator().manual_seed(seed)) < 0.5
                   for n, m in masks.masks.items()})
        return model, masks

    refs = []
    for s in (0, 1):
        model, masks = lane(s)
        refs.append((model, train(model, masks, data, t, steps=20, eval_every=10, seed=s)))
    lanes_ = [Lane(*lane(s), seed=s) for s in (0, 1)]
    out = train_replicates(lanes_, data, t, steps=20, eval_every=10)
    for (model, ref), ln, res in zip(refs, lanes_, out):
        for a, b in zip(model.parameters(), ln.model.parameters()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        assert ln.masks.violations() == {}
        assert [r["val_acc"] for r in res.history] == pytest.approx([r["val_acc"] for r in ref.history], abs=0.011)


def test_replicates_validation_is_one_line_and_before_work():
    with pytest.raises(ConfigError, match=r"^train.replicates: got 0; must be in \[1, inf\]$"):
        effective(compose_cfg("experiment=lottery_mnist", "train.replicates=0"))
    cfg = OmegaConf.create({"train": {"replicates": 2, "optimizer": "adam"}, "method": {"schedule": {"kind": "gradual"}}})
    with pytest.raises(ConfigError, match="replicates > 1 support: none, iterative"):
        lanes.check_config(cfg, ("none", "iterative"))
    cfg.method.schedule.kind = "none"
    cfg.train.optimizer = "lars"
    with pytest.raises(ConfigError, match="train.optimizer: got 'lars' with train.replicates > 1"):
        lanes.check_config(cfg, ("none", "iterative"))


# -- the pipeline: one K-replicate run directory vs K single runs ---------------------------------

@pytest.fixture(scope="module")
def smoke_cfg():
    return compose_cfg("experiment=lottery_mnist", "budget=smoke", "threads=1", "progress=false",
                       "train.steps=5000")  # smoke scale: 20 steps per arm, rounds 0-2, reinit control at 2


def _execute(base, root: Path, **overrides) -> Path:
    cfg = base.copy()
    # no shared-stage cache: every single run trains its own dense round (an honest comparison)
    overrides = {"cache": False, "paths.results_dir": str(root), **overrides}
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    name = ",".join(f"{k}={v}" for k, v in overrides.items() if k not in ("cache", "paths.results_dir"))
    return execute_mod.execute(effective(cfg), root / name)


def _compare(k_dir: Path, single_dirs: list[Path], seeds: list[int], rounds: int) -> None:
    got = pd.read_csv(k_dir / "summary.csv")
    want = pd.concat([pd.read_csv(d / "summary.csv") for d in single_dirs], ignore_index=True)
    assert got.seed.tolist() == [s for s in seeds for _ in range(len(got) // len(seeds))]
    accs = ["test_acc", "val_acc", "test_acc_at_early_stop"]
    exact = [c for c in want.columns if c not in ["wall_s", *accs]]
    pd.testing.assert_frame_equal(got[exact], want[exact])
    pd.testing.assert_frame_equal(got[accs], want[accs], atol=1e-6, rtol=0)
    got_m = [json.loads(ln) for ln in (k_dir / "metrics.jsonl").read_text().splitlines()]
    want_m = [json.loads(ln) for d in single_dirs for ln in (d / "metrics.jsonl").read_text().splitlines()]
    values = ("train_loss", "val_loss", "val_acc", "test_acc")
    assert [{k: v for k, v in m.items() if k not in values} for m in got_m] == \
        [{k: v for k, v in m.items() if k not in values} for m in want_m]
    for key in values:
        assert [m[key] for m in got_m] == pytest.approx([m[key] for m in want_m], rel=1e-5, abs=1e-6)
    if rounds:
        layers = pd.read_csv(k_dir / "layers.csv")
        pd.testing.assert_frame_equal(layers.drop(columns="seed"),
                                      pd.concat([pd.read_csv(d / "layers.csv") for d in single_dirs], ignore_index=True))
    for s, d in zip(seeds, single_dirs):  # identical masks, every round
        for r in range(rounds + 1 if rounds else 0):
            a = torch.load(k_dir / f"seeds/{s}/masks/round_{r:02d}.pt", weights_only=True)
            b = torch.load(d / f"masks/round_{r:02d}.pt", weights_only=True)
            assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert not list((k_dir / "seeds").rglob("summary.csv"))  # globbing summary.csv counts each row once
    assert json.loads((k_dir / "run.json").read_text())["status"] == "complete"
    assert (k_dir / "checkpoints/final.pt").exists()


def test_two_replicates_report_what_two_single_runs_report(tmp_path, smoke_cfg):
    """LTH with rewind to init and the reinit control: rounds in lock-step, own weights, own masks."""
    k_dir = _execute(smoke_cfg, tmp_path, seed=4, **{"train.replicates": 2})
    singles = [_execute(smoke_cfg, tmp_path, seed=s) for s in (4, 5)]
    _compare(k_dir, singles, [4, 5], rounds=2)
    assert set(pd.read_csv(k_dir / "summary.csv").variant) == {"dense", "ticket", "reinit"}


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    {"method.schedule.rewind": "init"},
    {"method.schedule.rewind": "step", "method.schedule.rewind_step": 2000},  # LTR: lanes capture and rewind
    {"method.schedule.rewind": "none", "train.optimizer": "sgd", "train.lr": 0.05, "train.momentum": 0.9},
], ids=["lth", "ltr", "finetune_sgd"])
def test_three_replicates_report_what_three_single_runs_report(tmp_path, smoke_cfg, overrides):
    k_dir = _execute(smoke_cfg, tmp_path, seed=4, **{"train.replicates": 3}, **overrides)
    singles = [_execute(smoke_cfg, tmp_path, seed=s, **overrides) for s in (4, 5, 6)]
    _compare(k_dir, singles, [4, 5, 6], rounds=2)


def test_dense_schedule_with_replicates(tmp_path):
    base = compose_cfg("method=dense", "budget=smoke", "threads=1", "progress=false", "train.steps=5000")
    k_dir = _execute(base, tmp_path, seed=1, **{"train.replicates": 2})
    singles = [_execute(base, tmp_path, seed=s) for s in (1, 2)]
    _compare(k_dir, singles, [1, 2], rounds=0)


@pytest.mark.slow  # the first torch.compile costs ~15 s on this CPU (inductor builds C++ kernels)
def test_compile_true_trains_like_eager_single_and_replicates():
    policy = compose_cfg("experiment=lottery_mnist").method.policy
    data, eager, compiled = toy_data(), tcfg(), tcfg(compile=True)
    for arm in range(2):  # a second arm (fresh model, as every pipeline arm) reuses the compiled code
        ref_model, ref_masks = lenet_lane(arm, policy)
        ref = train(ref_model, ref_masks, data, eager, steps=30, eval_every=15, seed=arm)
        model, masks = lenet_lane(arm, policy)
        res = train(model, masks, data, compiled, steps=30, eval_every=15, seed=arm)
        assert masks.violations() == {}
        for a, b in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert res.final_test_acc == pytest.approx(ref.final_test_acc, abs=0.011)
    lanes_c = [Lane(*lenet_lane(s, policy), seed=s) for s in (0, 1)]
    lanes_e = [Lane(*lenet_lane(s, policy), seed=s) for s in (0, 1)]
    train_replicates(lanes_c, data, compiled, steps=30, eval_every=15)
    train_replicates(lanes_e, data, eager, steps=30, eval_every=15)
    for lc, le in zip(lanes_c, lanes_e):
        assert lc.masks.violations() == {}
        for a, b in zip(lc.model.parameters(), le.model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_lanes_reuse_a_single_runs_cached_dense_stage_and_fall_back_into_step(tmp_path, smoke_cfg, monkeypatch):
    single = _execute(smoke_cfg, tmp_path, seed=5, cache=True)  # caches seed 5's dense stage
    groups = []
    real = lanes._train_group
    monkeypatch.setattr(lanes, "_train_group", lambda reqs: groups.append([r.lane.seed for r in reqs]) or real(reqs))
    k_dir = _execute(smoke_cfg, tmp_path, seed=4, cache=True, **{"train.replicates": 2})
    assert groups[0] == [4]  # seed 5's dense round came from the cache; seed 4 trains its own
    assert all(g == [4, 5] for g in groups[1:]) and len(groups) == 4  # then both lanes in step
    got = pd.read_csv(k_dir / "summary.csv")
    want = pd.read_csv(single / "summary.csv")
    cols = ["round", "variant", "nonzeros", "test_acc", "early_stop_step"]
    pd.testing.assert_frame_equal(got[got.seed == 5][cols].reset_index(drop=True), want[cols])


class TinyRGBConv(nn.Module):
    """A small conv net for 3×32×32 inputs without buffers (replicates exclude batch norm)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 5, stride=3)
        self.fc = nn.Linear(4 * 10 * 10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_lanes_equal_single_runs_with_augmentation_on():
    """dataset.augment (crop + flip) applies to every lane exactly as to a single run with its seed."""
    from sparse_run import data as data_mod

    dcfg = compose_cfg("dataset=synthetic_cifar10").dataset
    assert dcfg.augment.crop_padding == 4 and dcfg.augment.hflip
    data = data_mod.load(dcfg, "/nonexistent", train_subset=400, eval_subset=200)
    assert data.augment is not None
    policy = compose_cfg("experiment=lottery_mnist").method.policy
    t = tcfg(optimizer="sgd", lr=0.05, momentum=0.9, linear_kernel="aten")

    def lane(seed: int) -> tuple[nn.Module, MaskSet]:
        torch.manual_seed(seed)
        model = TinyRGBConv()
        masks = MaskSet(prunable(model, policy))
        masks.set({n: torch.rand(m.shape, generator=torch.Generator().manual_seed(seed)) < 0.5
                   for n, m in masks.masks.items()})
        return model, masks

    seeds = (0, 1)
    refs = []
    for s in seeds:
        model, masks = lane(s)
        refs.append((model, train(model, masks, data, t, steps=12, eval_every=6, seed=s)))
    lanes_ = [Lane(*lane(s), seed=s) for s in seeds]
    out = train_replicates(lanes_, data, t, steps=12, eval_every=6)
    for (model, ref), ln, res in zip(refs, lanes_, out):
        for a, b in zip(model.parameters(), ln.model.parameters()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        assert [r["train_loss"] for r in res.history] == pytest.approx([r["train_loss"] for r in ref.history],
                                                                        rel=1e-4)


class _CountingHook:
    """A stateful hook with eval metrics: what N:M's SAD tracker looks like to the loop."""

    def __init__(self):
        self.calls = 0

    def __call__(self, step: int, model: nn.Module, masks: MaskSet) -> None:
        self.calls += 1

    def eval_metrics(self, step: int) -> dict[str, float]:
        return {"hook_calls": float(self.calls)}

    def state_dict(self) -> dict[str, int]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.calls = state["calls"]


def test_replicate_lanes_record_hook_metrics_and_checkpoint_hook_state_like_train():
    """One loop: what train() does with a hook (eval metrics in records, hook state in checkpoints,
    restored on resume) the lock-step lanes do too."""
    policy = compose_cfg("experiment=lottery_mnist").method.policy
    t, data = tcfg(checkpoint_every=10), toy_data()
    saved: dict[int, dict] = {}
    model, masks = lenet_lane(0, policy)
    single = train(model, masks, data, t, steps=20, eval_every=10, seed=0, hooks=[_CountingHook()])
    lanes_ = [Lane(*lenet_lane(s, policy), seed=s, hooks=[_CountingHook()],
                   checkpoint=lambda st, s=s: saved.__setitem__(s, copy.deepcopy(st))) for s in (0, 1)]
    res = train_replicates(lanes_, data, t, steps=20, eval_every=10)
    assert [r["hook_calls"] for r in single.history] == [10.0, 20.0]
    for r in res:
        assert [h["hook_calls"] for h in r.history] == [10.0, 20.0]
    assert saved[1]["hooks"] == [{"calls": 10}]
    again = [Lane(*lenet_lane(s, policy), seed=s, hooks=[_CountingHook()], resume=saved[s]) for s in (0, 1)]
    res2 = train_replicates(again, data, t, steps=20, eval_every=10)
    assert [h["hook_calls"] for h in res2[1].history] == [10.0, 20.0]  # resumed at 10, not restarted at 0


def test_grad_clip_lanes_equal_single_runs():
    """train.grad_clip clips each lane's own global norm, as a single run clips its gradient."""
    policy = compose_cfg("experiment=lottery_mnist").method.policy
    t, data, seeds = tcfg(optimizer="sgd", lr=0.5, momentum=0.9, grad_clip=0.05), toy_data(), [3, 4]
    singles = []
    for s in seeds:
        model, masks = lenet_lane(s, policy)
        train(model, masks, data, t, steps=15, eval_every=15, seed=s)
        singles.append(model)
    lanes_ = [Lane(*lenet_lane(s, policy), seed=s) for s in seeds]
    train_replicates(lanes_, data, t, steps=15, eval_every=15)
    unclipped = [Lane(*lenet_lane(s, policy), seed=s) for s in seeds]
    train_replicates(unclipped, data, tcfg(optimizer="sgd", lr=0.5, momentum=0.9), steps=15, eval_every=15)
    for model, lane, free in zip(singles, lanes_, unclipped):
        for a, b, c in zip(model.parameters(), lane.model.parameters(), free.model.parameters()):
            torch.testing.assert_close(b, a, **TOL)
        assert not all(torch.equal(a, c) for a, c in zip(model.parameters(), free.model.parameters()))


def test_grad_clip_is_accepted_with_replicates_now_that_lanes_clip_per_lane():
    eff = effective(compose_cfg("experiment=lottery_mnist", "train.replicates=2", "train.grad_clip=1.0"))
    assert eff.train.grad_clip == 1.0 and eff.train.replicates == 2
