"""The Lottery Ticket pipeline: its defining numbers and invariants."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from conftest import compose_cfg
from sparse_run import execute as execute_mod
from sparse_run import models
from sparse_run.data import DataSpec
from sparse_run.engine import run as run_mod
from sparse_run.execute import effective
from sparse_run.sparsity import MaskSet, iterative_density, prunable, prune_fraction, rate_scales
from sparse_run.sparsity.criteria import ScoreContext, magnitude
from sparse_run.store.schema import SUMMARY_COLUMNS

PAPER_LADDER = {3: 51.3, 7: 21.1, 12: 7.0, 15: 3.6, 18: 1.9}


def lenet():
    cfg = compose_cfg("experiment=lottery_mnist")
    model = models.build(cfg.model, DataSpec("mnist", (1, 28, 28), 10), seed=0)
    return cfg, model


def test_lenet_has_266200_prunable_weights():
    cfg, model = lenet()
    masks = MaskSet(prunable(model, cfg.method.policy))
    assert masks.numel() == 266_200
    assert [m.numel() for m in masks.masks.values()] == [235_200, 30_000, 1_000]


def test_density_ladder_matches_the_paper_analytically_and_in_practice():
    cfg, model = lenet()
    masks = MaskSet(prunable(model, cfg.method.policy))
    scales = rate_scales(model, cfg.method.policy, masks.names())
    assert list(scales.values()) == [1.0, 1.0, 0.5]  # output layer at half rate
    rates = {n: 0.2 * s for n, s in scales.items()}
    sizes = {n: m.numel() for n, m in masks.masks.items()}
    gen = torch.Generator().manual_seed(0)
    for r in range(1, 19):
        with torch.no_grad():  # pretend training moved the weights
            for p in masks.params.values():
                p.add_(torch.randn(p.shape, generator=gen) * 0.01)
        masks.set(prune_fraction(magnitude(ScoreContext(model, masks, gen)), masks, 0.2, scales, "layerwise"))
        if r in PAPER_LADDER:
            assert round(100 * iterative_density(sizes, rates, r), 1) == PAPER_LADDER[r]
            assert round(100 * masks.density(), 1) == PAPER_LADDER[r]
            # achieved equals the analytic target within one weight per layer per round
            for n, m in masks.masks.items():
                assert abs(int(m.sum()) - sizes[n] * (1 - rates[n]) ** r) <= r


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_masked_weights_stay_exactly_zero_after_optimizer_steps(optimizer, tmp_path):
    from sparse_run.data import DataBundle
    from sparse_run.engine.train import train

    cfg, model = lenet()
    masks = MaskSet(prunable(model, cfg.method.policy))
    gen = torch.Generator().manual_seed(1)
    masks.set({n: torch.rand(m.shape, generator=gen) < 0.1 for n, m in masks.masks.items()})
    x = torch.randn(600, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (600,), generator=gen)
    data = DataBundle(DataSpec("toy", (1, 28, 28), 10), x, y, x[:100], y[:100], x[:100], y[:100])
    tcfg = cfg.train.copy()
    tcfg.update(optimizer=optimizer, momentum=0.9, weight_decay=1e-3, lr=0.01)
    train(model, masks, data, tcfg, steps=30, eval_every=10, seed=0)
    assert masks.violations() == {}
    assert all(int(m.sum()) > 0 for m in masks.masks.values())
    # and after a reload of the saved weights and masks
    path = tmp_path / "ck.pt"
    torch.save({"model": model.state_dict(), "masks": masks.state_dict()}, path)
    _, fresh = lenet()
    ck = torch.load(path, weights_only=True)
    fresh.load_state_dict(ck["model"])
    reloaded = MaskSet(prunable(fresh, cfg.method.policy))
    reloaded.load_state_dict(ck["masks"])
    assert reloaded.violations() == {}


def test_rewinding_restores_theta0_for_survivors(monkeypatch, tmp_path):
    """Every ticket round starts from exactly θ0 ⊙ m, and reinit from a fresh draw with the same mask."""
    starts = []
    real_train = run_mod.train

    def spy(model, masks, *args, **kwargs):
        starts.append(({k: v.clone() for k, v in model.state_dict().items()},
                       {n: m.clone() for n, m in masks.masks.items()}, kwargs["desc"]))
        return real_train(model, masks, *args, **kwargs)

    monkeypatch.setattr(run_mod, "train", spy)
    cfg = effective(compose_cfg("experiment=lottery_mnist", "budget=smoke", f"paths.results_dir={tmp_path}"))
    execute_mod.execute(cfg, tmp_path / "run")
    theta0 = models.build(cfg.model, DataSpec("mnist", (1, 28, 28), 10), seed=cfg.seed).state_dict()
    tickets = [s for s in starts if "ticket" in s[2] or "dense" in s[2]]
    assert len(tickets) == 3
    for state, masks, desc in tickets:
        for name, value in state.items():
            expected = theta0[name] * masks[name] if name in masks else theta0[name]
            assert torch.equal(value, expected), f"{desc}: {name} is not θ0 ⊙ m"
    reinit = [s for s in starts if "reinit" in s[2]]
    assert reinit and torch.equal(reinit[0][1]["hidden.0.weight"], tickets[-1][1]["hidden.0.weight"])
    assert not torch.equal(reinit[0][0]["hidden.0.weight"], tickets[-1][0]["hidden.0.weight"])


def test_smoke_run_writes_the_schema(smoke_run):
    summary = pd.read_csv(smoke_run / "summary.csv")
    assert list(summary.columns[: len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    assert set(summary.variant) == {"dense", "ticket", "reinit"}
    assert summary.query("variant == 'dense'").density.tolist() == [1.0]
    assert (summary.density.diff().dropna() <= 0).all()
    assert (summary.nonzeros == (summary.density * summary.prunable).round()).all()
    assert summary.test_acc.between(0.5, 1).all()  # it learned something, even in 200 steps
    lines = [json.loads(ln) for ln in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "train_loss", "val_loss", "val_acc", "test_acc", "round", "variant"} <= set(lines[0])
    assert len(lines) == 2 * len(summary)  # budget=smoke evaluates twice per arm
    layers = pd.read_csv(smoke_run / "layers.csv")
    assert (layers.nonzeros == (layers.target_density * layers.numel).round()).all()
    assert (smoke_run / "figures" / "accuracy_vs_density.png").stat().st_size > 10_000
    assert (smoke_run / "config.yaml").exists() and (smoke_run / "masks" / "round_02.pt").exists()
    meta = json.loads((smoke_run / "run.json").read_text())
    assert meta["status"] == "complete"
    # the early-stop columns are consistent with the evaluation history
    hist = pd.DataFrame(lines)
    for _, row in summary.iterrows():
        h = hist[(hist["round"] == row["round"]) & (hist.variant == row.variant)]
        best = h.loc[h.val_loss.idxmin()]
        assert best.step == row.early_stop_step and abs(best.test_acc - row.test_acc_at_early_stop) < 1e-4
