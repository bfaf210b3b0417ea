"""Random Search end to end: ``experiment=random_search_mnist budget=smoke`` (3 candidates, 2 levels, 2 retrain
seeds) writes every candidate with both selection scores, retrains the winners by val loss (never test accuracy)
and the random mask at equal weight count and FLOPs on the same fresh seeds, reproducibly; bad settings are one line
naming their field before any work."""
from __future__ import annotations

import pandas as pd
import pytest

from conftest import compose_cfg, run_cli
from sparse_run.config import ConfigError
from sparse_run.execute import effective

ARGS = ("experiment=random_search_mnist", "budget=smoke", "threads=1", "progress=false",
        "method.schedule.candidates=3", "method.schedule.retrain_seeds=2", "method.schedule.units_removed=[0.5,0.9]")


@pytest.fixture(scope="module")
def rs_runs(tmp_path_factory):
    roots = []
    for name in ("a", "b"):
        root = tmp_path_factory.mktemp(f"rs_{name}")
        run_cli(*ARGS, f"paths.results_dir={root}")
        roots.append(next((root / "random_search_mnist").iterdir()))
    return roots


def test_rs_retrains_the_val_loss_winner_next_to_a_random_mask_of_equal_size(rs_runs):
    s = pd.read_csv(rs_runs[0] / "summary.csv")
    cands = s[s.variant == "candidate"]
    assert len(cands) == 2 * 2 * 4 and cands.score_init.notna().all() and cands.score_trained.notna().all()
    for (space, level), c in cands.groupby(["space", "units_removed"]):
        searched = c[~c.random_draw.astype(bool)]
        here = s[(s.space == space) & (s.units_removed == level)]
        best = here[here.variant == "rs_best"]
        assert set(best.cand) == {int(searched.loc[searched.score_trained.idxmin()].cand)}
        assert set(here[here.variant == "rs_best_init"].cand) == {int(searched.loc[searched.score_init.idxmin()].cand)}
        assert set(here[here.variant == "rs_worst"].cand) == {int(searched.loc[searched.score_trained.idxmax()].cand)}
        assert set(here[here.variant == "random_mask"].cand) == {3}
        retrained = here[here.variant.isin(["rs_best", "rs_best_init", "rs_worst", "random_mask"])]
        assert retrained.nnz_weights.nunique() == 1 and retrained.flops.nunique() == 1  # equal size and FLOPs
        assert sorted(retrained.seed.unique()) == [1000, 1001] and (retrained.steps == retrained.steps.max()).all()
    node = s[(s.space == "node") & (s.variant == "rs_best")]
    kept = {0.5: 784 * 150 + 150 * 50 + 50 * 10, 0.9: 784 * 30 + 30 * 10 + 10 * 10}
    assert all(node[node.units_removed == lv].nnz_weights.eq(n).all() for lv, n in kept.items())
    assert set(s[s.variant == "dense"].seed) == {1000, 1001}
    assert (rs_runs[0] / "figures" / "rs_accuracy.png").stat().st_size > 10_000


def test_rs_candidates_and_winners_are_reproducible_from_the_seed(rs_runs):
    cols = ["space", "units_removed", "variant", "cand", "seed", "score_init", "score_trained", "nnz_weights"]
    a, b = (pd.read_csv(r / "summary.csv")[cols] for r in rs_runs)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("override, message", [
    ("method.schedule.candidates=0", r"^method.schedule.candidates: got 0"),
    ("method.schedule.retrain_seeds=0", r"^method.schedule.retrain_seeds: got 0"),
    ("method.schedule.units_removed=[0.5,1.0]", r"^method.schedule.units_removed\[1\]: got 1.0"),
    ("method.schedule.spaces=[node,channel]", r"^method.schedule.spaces\[1\]: got 'channel'; allowed: node, weight"),
    ("model=lenet5", r"^model.arch: got 'convfc'; random_search removes hidden units of an MLP"),
], ids=["no_candidates", "no_retrain_seeds", "all_units_removed", "unknown_space", "conv_model"])
def test_bad_random_search_settings_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        effective(compose_cfg("experiment=random_search_mnist", override), explicit=[override.split("=")[0]])
    assert "\n" not in str(err.value)
