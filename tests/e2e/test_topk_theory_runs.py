"""The Top-K gating MoE simulation end to end: ``experiment=topk_moe_theory budget=smoke`` fits every model to the
same data sets and writes fits.csv, slopes.csv (slopes with bootstrap intervals) and the figure; bad settings are
one line naming their field."""
from __future__ import annotations

import pandas as pd
import pytest

from conftest import compose_cfg, run_cli
from sparse_run.config import ConfigError
from sparse_run.execute import effective


def test_topk_theory_smoke_writes_fits_slopes_and_figure(tmp_path):
    run_cli("experiment=topk_moe_theory", "budget=smoke", "threads=1", "progress=false", f"paths.results_dir={tmp_path}",
            "method.schedule.sample_sizes=[200,800,3200]", "method.schedule.replications=3")
    d = next((tmp_path / "topk_moe_theory").iterdir())
    fits = pd.read_csv(d / "fits.csv")
    assert len(fits) == 3 * 3 * 3 and set(fits.fit) == {"k2_K1", "k3_K1", "k3_K2"}
    assert (fits.voronoi >= 0).all() and fits.hellinger.between(0, 1).all()
    # every fit of an (n, rep) saw the same data: one truth log-likelihood per data set
    assert fits.groupby(["n", "rep"]).truth_loglik.nunique().eq(1).all()
    top1 = fits[fits.top_k == 1]
    assert (top1.loglik >= top1.truth_loglik - 1e-9).all()  # the exact profile MLE never loses to the truth
    s = pd.read_csv(d / "slopes.csv")
    assert len(s) == 6 and (s.slope_lo <= s.slope).all() and (s.slope <= s.slope_hi).all()
    assert s[s.fit == "k2_K1"].slope_vs_exact.isna().all() and s[s.fit != "k2_K1"].slope_vs_exact.notna().all()
    assert (d / "figures" / "topk_rates.png").stat().st_size > 10_000


@pytest.mark.parametrize("overrides, message", [
    (["method.schedule.sample_sizes=[1000,300,2000]"], r"^method.schedule.sample_sizes: got \[1000, 300, 2000\]; "
                                                       "strictly increasing"),
    (["method.schedule.sample_sizes=[1000,2000]"], r"^method.schedule.sample_sizes: got \[1000, 2000\]; at least 3"),
    (["method.schedule.fits=[k2_K1,three]"], r"^method.schedule.fits\[1\]: got 'three'; allowed: k<experts>_K<top_k>"),
    (["method.schedule.fits=[k2_K3]"], r"^method.schedule.fits\[0\]: got 'k2_K3'; needs experts >= 2 and 1 <= K"),
    (["method.schedule.replications=1"], r"^method.schedule.replications: got 1; must be in \[2, inf\]"),
], ids=["not_increasing", "too_few_sizes", "unknown_fit", "K_above_k", "one_replication"])
def test_bad_topk_theory_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        effective(compose_cfg("experiment=topk_moe_theory", *overrides), explicit=[o.split("=")[0] for o in overrides])
    assert "\n" not in str(err.value)
