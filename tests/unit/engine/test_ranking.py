"""The ranking task of implicit-feedback data: Recall@K / NDCG@K on hand-made rankings, known interactions never
ranked, the chance level of a random ranking, BPR's loss, and the generator's per-user splits and negatives."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import compose_cfg
from sparse_run import models
from sparse_run.data import load
from sparse_run.data.implicit import negatives
from sparse_run.engine.tasks import Ranking, recall_ndcg


def test_recall_and_ndcg_of_a_hand_made_ranking():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    seen = torch.tensor([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    rel = torch.tensor([[0, 0, 1, 0, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    recall, ndcg = recall_ndcg(scores, seen, rel, k=2)
    # user 0: item 0 is seen, top-2 = items 1, 2 -> one of two relevant at rank 2; user 1: top-2 = 4, 3 -> none;
    # user 2 has nothing relevant and is skipped
    assert float(recall) == pytest.approx((0.5 + 0.0) / 2)
    ideal0 = 1 + 1 / math.log2(3)
    assert float(ndcg) == pytest.approx(((1 / math.log2(3)) / ideal0 + 0.0) / 2)


def test_a_seen_item_is_never_ranked_even_with_the_top_score():
    scores = torch.tensor([[9.0, 1.0, 0.0]])
    rel = torch.tensor([[1, 0, 0]], dtype=torch.bool)
    recall, _ = recall_ndcg(scores, rel.clone(), rel, k=1)
    assert float(recall) == 0.0


@pytest.fixture(scope="module")
def data():
    return load(compose_cfg("dataset=implicit_synth").dataset, "/nonexistent")


def test_generator_splits_every_user_about_80_20_and_is_deterministic(data):
    again = load(compose_cfg("dataset=implicit_synth").dataset, "/nonexistent")
    assert torch.equal(data.train_x, again.train_x) and torch.equal(data.test_x, again.test_x)
    users = data.spec.num_users
    per = [torch.bincount(x[:, 0], minlength=users).float() for x in (data.train_x, data.val_x, data.test_x)]
    total = sum(per)
    assert 27 < float(total.mean()) < 33 and (per[2] >= 1).all()
    assert float((per[2] / total).mean()) == pytest.approx(0.2, abs=0.02)
    pairs = torch.cat([data.train_x, data.val_x, data.test_x])
    assert torch.unique(pairs[:, 0] * 10_000 + pairs[:, 1]).numel() == pairs.shape[0]  # no pair in two splits


def test_chance_level_is_a_random_rankings_recall_and_a_random_model_stays_below_it(data):
    task = Ranking(data)
    level = task.chance(data, 3.0)
    mean = task.chance(data, 0.0)
    assert 20 / 1000 < mean < 20 / 950 and mean < level < 2 * mean
    cfg = compose_cfg("experiment=dsl_recsys")
    model = models.build(cfg.model, data.spec, seed=0)
    _, _, test_recall, extra = task.evaluate(model, data)
    assert float(test_recall) < level and 0 <= float(extra["test_ndcg"]) < 1


def test_bpr_loss_and_negatives_are_keyed_on_seed_and_step(data):
    sample = negatives(data.spec.num_items)
    x = data.train_x[:64]
    a, b, c = sample(x, 0, 5), sample(x, 0, 5), sample(x, 0, 6)
    assert a.shape == (64, 3) and torch.equal(a, b) and not torch.equal(a, c) and torch.equal(a[:, :2], x)
    task = Ranking(data)
    assert float(task.loss(torch.zeros(4), torch.zeros(4))) == pytest.approx(math.log(2))
    assert float(task.loss(torch.full((4,), 10.0), torch.zeros(4))) < 1e-4
