"""The DASS study end to end (``experiment=dass_search``): two searches derive their cells deterministically from the
seed, three arms are trained dense, pruned by learned scores to exact counts and fine-tuned; bad settings are one line
naming their field."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import compose_cfg, run_cli
from sparse_run.config import ConfigError
from sparse_run.execute import effective

FAST = ("method.schedule.search_steps=3", "method.schedule.score_steps=3", "method.schedule.finetune_steps=3",
        "train.steps=5", "threads=1", "progress=false")


def test_dass_smoke_derives_the_same_cells_from_the_seed_and_prunes_every_arm(tmp_path):
    cells = []
    for out in ("a", "b"):
        run_cli("experiment=dass_search", "budget=smoke", *FAST, f"paths.results_dir={tmp_path / out}")
        d = next((tmp_path / out / "dass_search").iterdir())
        cells.append({arm: g["edges"] for arm, g in json.loads((d / "genotypes.json").read_text()).items()})
    assert cells[0] == cells[1] and set(cells[0]) == {"dass", "darts"}
    assert all(len(node) == 2 for edges in cells[0].values() for node in edges)
    assert "sparseconv3" not in {op for node in cells[0]["darts"] for op, _ in node}
    s = pd.read_csv(d / "summary.csv")
    assert sorted(s.method.unique()) == ["darts", "dass", "hand"]
    layers = pd.read_csv(d / "layers.csv")
    for (arm, r), g in layers[layers.variant == "sparse"].groupby(["method", "round"]):
        assert g.nonzeros.sum() == round(g.total_target_density.iloc[0] * g.numel.sum())
    assert (d / "figures" / "accuracy.png").stat().st_size > 10_000


@pytest.mark.parametrize("overrides, message", [
    (["method.schedule.sparse_ratio=1.0"], r"^method.schedule.sparse_ratio: got 1.0; allowed: 0 <= p < 1$"),
    (["method.schedule.sparse_ratio=-0.1"], r"^method.schedule.sparse_ratio: got -0.1; allowed: 0 <= p < 1$"),
    (["method.schedule.ops=[skip,conv5,sparseconv3]"], r"^method.schedule.ops: got 'conv5'; allowed: skip, conv3"),
    (["method.schedule.ops=[skip,conv3]"], r"^method.schedule.ops: got \['skip', 'conv3'\]; allowed: a subset"),
    (["method.schedule.cells=3"], r"^method.schedule.cells: got 3; allowed: 1, 2$"),
    (["method.selection.scope=percentile"], r"^method.selection.scope: got 'percentile'"),
], ids=["p_one", "p_negative", "unknown_op", "no_sparse_op", "cells", "scope"])
def test_bad_dass_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        effective(compose_cfg("experiment=dass_search", *overrides), explicit=[o.split("=")[0] for o in overrides])
    assert "\n" not in str(err.value)
