"""The parameter-sharing report: "best pruning" is chosen on validation accuracy, never test accuracy, and the
paired difference uses that criterion's test accuracy, per run and seed."""
from __future__ import annotations

import pandas as pd
import pytest

from sparse_run.report import sharing


def _rows():
    rows = []
    for seed, (snip_val, snip_test, syn_val, syn_test, rps) in enumerate([(0.90, 0.80, 0.85, 0.95, 0.91),
                                                                         (0.70, 0.71, 0.80, 0.79, 0.83)]):
        base = {"run_dir": "r", "seed": seed, "round": 1, "target_density": 0.01, "status": "ok"}
        rows += [{**base, "variant": "sparse", "method": "snip", "val_acc": snip_val, "test_acc": snip_test},
                 {**base, "variant": "sparse", "method": "synflow", "val_acc": syn_val, "test_acc": syn_test},
                 {**base, "variant": "stable_rps", "method": "stable_rps", "val_acc": 0.9, "test_acc": rps,
                  "mapper": "random_fold", "init_std": 0.04}]
    return pd.DataFrame(rows)


def test_best_pruning_is_picked_on_validation_accuracy():
    df = sharing.arms(_rows())
    best = sharing.best_pruning(df).set_index("seed")
    assert best.method.tolist() == ["snip", "synflow"]  # seed 0: SNIP wins on val (its test is worse)
    p = sharing.paired(df, "stable_rps", "best")
    assert p.n.tolist() == [2] and p.compression.tolist() == [100.0]
    assert p.mean_pp.iloc[0] == pytest.approx(((0.91 - 0.80) + (0.83 - 0.79)) / 2 * 100)


def test_figures_draw_the_accuracy_and_no_std_figure_for_one_std(tmp_path):
    made = sharing.figures(_rows(), f"{tmp_path}/", "t")
    assert [m.name for m in made] == ["rps_accuracy.png"] and made[0].stat().st_size > 10_000
