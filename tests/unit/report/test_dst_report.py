"""The DST report's paired differences: paired by run and seed (row order does not matter), one point per level,
no interval from one seed; the ΔT figure only when the runs differ in ΔT."""
from __future__ import annotations

import pandas as pd
import pytest

from sparse_run.report.dst import delta_t_figure, is_dst, paired


def _rows() -> pd.DataFrame:
    rows = []
    for seed, (rigl, static) in enumerate([(0.95, 0.90), (0.96, 0.93), (0.94, 0.92)]):
        for variant, acc in (("rigl", rigl), ("static", static)):
            rows.append({"run_dir": f"r{seed}", "seed": seed, "variant": variant, "target_density": 0.02,
                         "test_acc": acc, "delta_t": 100})
    return pd.DataFrame(rows)


def test_paired_differences_follow_the_seed_not_the_row_order():
    df = _rows()
    p = paired(df.sample(frac=1, random_state=3), "rigl", "static")
    assert len(p) == 1 and p.n.iloc[0] == 3
    assert p.mean_pp.iloc[0] == pytest.approx((5 + 3 + 2) / 3)
    assert p.lo.iloc[0] < p.mean_pp.iloc[0] < p.hi.iloc[0]
    one = paired(df[df.seed == 0], "rigl", "static")
    assert one.lo.iloc[0] == one.hi.iloc[0] == pytest.approx(5)


def test_delta_t_figure_needs_several_delta_t_and_dst_rows_are_recognised(tmp_path):
    df = _rows()
    assert is_dst(df) and not is_dst(df.assign(variant="sparse"))
    assert delta_t_figure(df, tmp_path / "x.png", "t") is None
    two = pd.concat([df, df.assign(delta_t=400, run_dir=df.run_dir + "b")])
    assert delta_t_figure(two, tmp_path / "x.png", "t").stat().st_size > 10_000
