"""MoE expert pruning end to end: ``experiment=moe_prune_mnist budget=smoke`` trains the MoE once and evaluates
every reduction without retraining, each with exactly the kept experts, the memory accounting and the figure; bad
settings are one line naming their field."""
from __future__ import annotations

import pandas as pd
import pytest

from conftest import compose_cfg, run_cli
from sparse_run.config import ConfigError
from sparse_run.execute import effective


def test_moe_prune_smoke_evaluates_every_reduction_of_one_trained_model(tmp_path):
    run_cli("experiment=moe_prune_mnist", "budget=smoke", "threads=1", "progress=false", f"paths.results_dir={tmp_path}")
    d = next((tmp_path / "moe_prune_mnist").iterdir())
    s = pd.read_csv(d / "summary.csv")
    assert (s.variant == "dense").sum() == 1 and s[s.variant == "dense"].steps.iloc[0] > 0
    red = s[s.variant != "dense"]
    assert set(red.variant) == {"random", "drop", "average", "matched_average", "dern"}
    assert (red.steps == 0).all() and sorted(red.experts_kept.unique()) == [2, 4]
    for n, g in red.groupby("experts_kept"):
        assert g.kept.map(lambda k: len(str(k).split())).eq(n).all()
        assert g[g.variant != "random"].kept.nunique() == 1  # the same most-routed experts for every reduction
        per_expert = 3 * 64 * 64 + 2 * 64 + 64
        assert (g.params_before - g.params_after).eq((8 - n) * per_expert).all()
    assert (d / "figures" / "moe_accuracy.png").stat().st_size > 10_000


@pytest.mark.parametrize("overrides, message", [
    (["method.schedule.experts_kept=[9]"], r"^method.schedule.experts_kept\[0\]: got 9; must be in \[2, 7\]"),
    (["method.schedule.experts_kept=[1]"], r"^method.schedule.experts_kept\[0\]: got 1"),
    (["method.schedule.reductions=[dern,merge]"], r"^method.schedule.reductions\[1\]: got 'merge'"),
    (["model=lenet_300_100"], r"^model.arch: got 'mlp'; expert_prune reduces a mixture of experts"),
    (["train.replicates=2"], r"^train.replicates: got 2 with model.arch=moe"),
], ids=["more_than_exist", "fewer_than_top_k", "unknown_reduction", "not_a_moe", "replicates"])
def test_bad_expert_prune_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        effective(compose_cfg("experiment=moe_prune_mnist", *overrides), explicit=[o.split("=")[0] for o in overrides])
    assert "\n" not in str(err.value)
