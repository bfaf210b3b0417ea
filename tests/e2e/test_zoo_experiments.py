"""The Lottery Ticket CIFAR-10 experiments: the paper's settings, runs at budget=smoke on the
synthetic stand-in when CIFAR-10 is absent, pruning rates per layer, BatchNorm under rewinding."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import yaml

from conftest import compose_cfg, run_cli
from sparse_run import execute as execute_mod
from sparse_run.engine import run as run_mod
from sparse_run.execute import effective

CONV = ["lottery_conv2_cifar10", "lottery_conv4_cifar10", "lottery_conv6_cifar10"]
GLOBAL = ["lottery_vgg19_cifar10", "lottery_resnet20_cifar10"]
# Shrunk so each run takes seconds on one thread: an eighth of the width, a few steps, small data.
TINY = ["model.width=0.125", "budget.steps_scale=1", "budget.min_steps=1", "train.steps=8", "train.warmup_steps=2",
        "budget.train_subset=240", "budget.eval_subset=60", "threads=1"]


def test_conv_experiments_are_the_papers_settings():
    for name, lr, steps, conv_rate in [(CONV[0], 2e-4, 20000, 0.1), (CONV[1], 3e-4, 25000, 0.1),
                                       (CONV[2], 3e-4, 30000, 0.15)]:
        c = effective(compose_cfg(f"experiment={name}"))
        assert (c.train.optimizer, c.train.lr, c.train.steps, c.train.batch_size) == ("adam", lr, steps, 60)
        assert c.dataset.name == "cifar10" and c.dataset.val_size == 5000 and c.method.schedule.rewind == "init"
        assert c.method.selection.scope == "layerwise" and c.method.schedule.rate == 0.2
        assert math.isclose(c.method.schedule.rate * c.method.policy.rate_scale["convs.*"], conv_rate)
        assert c.method.schedule.rate * c.method.policy.last_rate_scale == 0.1


def test_vgg_resnet_experiments_prune_conv_globally_with_late_rewinding():
    vgg = effective(compose_cfg(f"experiment={GLOBAL[0]}"))
    res = effective(compose_cfg(f"experiment={GLOBAL[1]}"))
    for c in (vgg, res):
        assert c.method.selection.scope == "global" and list(c.method.policy.layers) == ["conv"]
        assert c.method.schedule.rewind == "step" and c.method.schedule.rewind_step == 500
        assert c.train.optimizer == "sgd" and c.train.momentum == 0.9 and c.train.lr_schedule == "step"
        assert c.dataset.augment.crop_padding == 4 and c.dataset.augment.hflip
    assert (vgg.train.lr, vgg.train.batch_size, vgg.train.steps, vgg.train.warmup_steps) == (0.1, 64, 112480, 0)
    assert list(vgg.train.milestones) == [0.5, 0.75]
    assert (res.train.lr, res.train.batch_size, res.train.steps, res.train.warmup_steps) == (0.1, 128, 30000, 0)
    assert [round(m * 30000) for m in res.train.milestones] == [20000, 25000]


def run_tiny(name: str, tmp_path, *extra: str):
    cfg = effective(compose_cfg(f"experiment={name}", "budget=smoke", f"paths.results_dir={tmp_path}",
                                f"paths.data_dir={tmp_path / 'no-data'}", *TINY, *extra))
    return execute_mod.execute(cfg, tmp_path / "run")


@pytest.mark.parametrize("name", CONV + GLOBAL)
def test_experiment_runs_at_smoke_on_the_stand_in_and_prunes_as_the_paper(name, tmp_path, capsys):
    run = run_tiny(name, tmp_path, *(["method.schedule.rewind_step=2"] if name in GLOBAL else []))
    assert "running on synthetic_cifar10" in capsys.readouterr().out
    summary = pd.read_csv(run / "summary.csv")
    assert list(zip(summary["round"], summary.variant)) == [(0, "dense"), (1, "ticket"), (2, "ticket"), (2, "reinit")]
    assert set(summary.dataset) == {"synthetic_cifar10"} and summary.status.isin(["ok", "at_chance"]).all()
    assert yaml.safe_load((run / "config.yaml").read_text())["dataset"]["fallback_from"] == "cifar10"
    layers = pd.read_csv(run / "layers.csv")
    r1 = layers[layers["round"] == 1].set_index("layer")
    if name in CONV:  # layer-wise: conv 10 % (Conv-6: 15 %), fc 20 %, output 10 % of the survivors
        conv_rate = 0.15 if "conv6" in name else 0.1
        for layer, row in r1.iterrows():
            rate = conv_rate if layer.startswith("convs.") else 0.1 if layer == "out.weight" else 0.2
            assert row.nonzeros == row.numel - round(row.numel * rate), layer
    else:  # one threshold over all conv weights; classifier and BatchNorm never masked
        assert all(".bn" not in n and not n.startswith(("out.", "bn.")) for n in layers.layer)
        nnz = summary.set_index(["round", "variant"]).nonzeros
        total = int(summary.prunable.iloc[0])
        assert nnz[(1, "ticket")] == total - round(total * 0.2)
        assert nnz[(2, "ticket")] == nnz[(1, "ticket")] - round(nnz[(1, "ticket")] * 0.2) == nnz[(2, "reinit")]
        assert not r1.density.round(6).nunique() == 1  # global: layers end up with different densities


def test_batchnorm_statistics_are_rewound_with_the_weights(tmp_path, monkeypatch):
    """Rewinding loads θ_k's whole state_dict: BatchNorm running statistics included."""
    seen = []
    real_train = run_mod.train

    def spy(model, masks, *args, **kwargs):
        seen.append((kwargs["desc"], {k: v.clone() for k, v in model.state_dict().items()}, kwargs.get("resume")))
        result = real_train(model, masks, *args, **kwargs)
        seen[-1] += ({k: v.clone() for k, v in model.state_dict().items()},)
        return result

    monkeypatch.setattr(run_mod, "train", spy)
    # late rewinding (the experiment's own): survivors and BN statistics return to iteration 3
    one_round = ["budget.max_rounds=1", "budget.control_rounds=[]"]
    run_tiny(GLOBAL[1], tmp_path / "late", "method.schedule.rewind_step=3", *one_round)
    dense = seen[0]
    assert dense[0] == "round 0 dense" and int(dense[3]["bn.num_batches_tracked"]) == 8
    rewind = torch.load(tmp_path / "late" / "run" / "checkpoints" / "rewind.pt", weights_only=True)["model"]
    assert int(rewind["bn.num_batches_tracked"]) == 3 and not torch.equal(rewind["bn.running_mean"], dense[1]["bn.running_mean"])
    assert [d for d, *_ in seen] == ["round 0 dense", "round 1 ticket"]
    for desc, _, resume, _ in seen[1:]:
        if "ticket" in desc:
            for key in ("bn.running_mean", "bn.running_var", "blocks.0.bn2.running_var", "bn.num_batches_tracked"):
                assert torch.equal(resume["model"][key], rewind[key]), (desc, key)
    # rewinding to θ0: every ticket round starts from the initial statistics, not the trained ones
    seen.clear()
    run_tiny(GLOBAL[1], tmp_path / "init", "method.schedule.rewind=init", "method.schedule.rewind_step=0", *one_round)
    theta0 = seen[0][1]
    assert int(seen[0][3]["bn.num_batches_tracked"]) == 8
    tickets = [s for s in seen if "ticket" in s[0]]
    assert len(tickets) == 1
    for desc, start, resume, _ in tickets:
        assert resume is None
        for key in ("bn.running_mean", "bn.running_var", "blocks.6.shortcut.1.running_mean", "bn.num_batches_tracked"):
            assert torch.equal(start[key], theta0[key]), (desc, key)


@pytest.mark.slow
@pytest.mark.parametrize("name,extra", [(n, []) for n in CONV + GLOBAL[1:]] + [(GLOBAL[0], ["model.width=0.25"])])
def test_experiment_runs_at_plain_smoke_through_the_cli(name, extra, tmp_path):
    """The command a user types, on an empty data dir (VGG-19 at quarter width: full width is
    about an hour of CPU time at budget=smoke, see docs/papers/lottery.md)."""
    proc = run_cli(f"experiment={name}", "budget=smoke", "threads=1", f"paths.results_dir={tmp_path}",
                   f"paths.data_dir={tmp_path / 'no-data'}", *extra, timeout=3600)
    assert "running on synthetic_cifar10" in proc.stdout
    run = next((tmp_path / name).iterdir())
    summary = pd.read_csv(run / "summary.csv")
    assert len(summary) == 4 and set(summary.dataset) == {"synthetic_cifar10"}
    assert summary.test_acc.max() > 0.2  # learns something on the stand-in, even in a smoke run
