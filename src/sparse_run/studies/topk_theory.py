"""The Top-K gating MoE simulation (``schedule.kind=topk_moe_theory``, ``experiment=topk_moe_theory``; Nguyen et al.,
ICLR 2024, ``../shared/papers.md`` §14): how fast maximum likelihood recovers a top-K sparse softmax gating Gaussian
MoE as the sample grows. Not a training pipeline: no network, no masks; the model and the fits are
``studies/topk_moe.py``.

For every sample size n of ``sample_sizes`` and replication r of ``replications`` one data set is drawn from the
truth (k* = 2 experts, K = 1) and every fit of ``fits`` (``k<experts>_K<top_k>``, e.g. ``k2_K1`` exact, ``k3_K1`` and
``k3_K2`` over-specified) is fitted to that same data set — so fits pair by (n, r). Each fit's Voronoi loss and
Hellinger distance to the truth go to ``fits.csv``; ``slopes.csv`` has, per fit and loss, the least-squares slope of
log(mean loss over replications) on log n, a bootstrap 95 % interval (replications resampled within each n, 1000
draws), and the slope minus the exact fit's on the same resamples (paired). The figure is ``figures/topk_rates.png``.
"""
from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from sparse_run.config import ConfigError, number
from sparse_run.engine.run import Run, derive_seed
from sparse_run.store.files import atomic_write_text
from sparse_run.store.schema import rows_to_csv

from . import topk_moe as tm

FIT = re.compile(r"^k(\d+)_K(\d+)$")
LOSSES = ("voronoi", "hellinger")
FIT_COLUMNS = ["fit", "experts", "top_k", "n", "rep", "loglik", "truth_loglik", "voronoi", "hellinger", "seconds"]
SLOPE_COLUMNS = ["experiment", "seed", "budget", "fit", "loss", "slope", "slope_lo", "slope_hi", "slope_vs_exact",
                 "slope_vs_exact_lo", "slope_vs_exact_hi", "n_min", "n_max", "replications", "exact"]
BOOTSTRAP = 1000


def parse_fit(name: str, field: str = "method.schedule.fits") -> tuple[int, int]:
    """``k3_K2`` → (3 experts, top-2)."""
    m = FIT.match(str(name))
    if not m:
        raise ConfigError(field, f"got {name!r}; allowed: k<experts>_K<top_k>, e.g. k2_K1, k3_K2")
    return int(m.group(1)), int(m.group(2))


def slope(ns: np.ndarray, losses: np.ndarray) -> float:
    """Least-squares slope of log(mean loss) on log n; ``losses`` [sizes, replications]."""
    return float(np.polyfit(np.log(ns), np.log(losses.mean(axis=1)), 1)[0])


def slopes(df: pd.DataFrame, exact: str, seed: int) -> list[dict[str, Any]]:
    """One row per fit and loss: the slope, its bootstrap interval, and the paired difference to ``exact``."""
    ns = np.array(sorted(df.n.unique()), dtype=float)
    reps = int(df.rep.nunique())
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, reps, size=(BOOTSTRAP, len(ns), reps))  # the same resamples for every fit: paired

    def table(fit: str, loss: str) -> np.ndarray:
        return df[df.fit == fit].pivot(index="n", columns="rep", values=loss).loc[ns].to_numpy()

    rows = []
    for fit in dict.fromkeys(df.fit):
        for loss in LOSSES:
            t = table(fit, loss)
            boot = np.array([slope(ns, np.take_along_axis(t, d, axis=1)) for d in draws])
            row = {"fit": fit, "loss": loss, "slope": slope(ns, t), "slope_lo": float(np.percentile(boot, 2.5)),
                   "slope_hi": float(np.percentile(boot, 97.5)), "n_min": int(ns[0]), "n_max": int(ns[-1]),
                   "replications": reps, "exact": fit == exact}
            if fit != exact and exact in set(df.fit):
                e = table(exact, loss)
                diff = boot - np.array([slope(ns, np.take_along_axis(e, d, axis=1)) for d in draws])
                row.update(slope_vs_exact=row["slope"] - slope(ns, e), slope_vs_exact_lo=float(np.percentile(diff, 2.5)),
                           slope_vs_exact_hi=float(np.percentile(diff, 97.5)))
            rows.append(row)
    return rows


def run_study(run: Run) -> None:
    """Runner for ``method.schedule.kind=topk_moe_theory``: simulate, fit, write fits.csv / slopes.csv / the figure."""
    cfg, s = run.cfg, run.cfg.method.schedule
    truth = tm.truth()
    fits = [(name, *parse_fit(name)) for name in s.fits]
    rows: list[dict[str, Any]] = list(run.extra_state.get("fits", []))  # resume: finished (n, rep) blocks kept
    done = {(r["n"], r["rep"]) for r in rows}
    for n in (int(v) for v in s.sample_sizes):
        for rep in range(int(s.replications)):
            if (n, rep) in done:
                continue
            x, y = tm.sample(truth, n, torch.Generator().manual_seed(derive_seed(run.seed, "data", n, rep)))
            truth_ll = float(tm.log_likelihood(truth, x, y)[0]) / n
            block = []
            for name, experts, top_k in fits:
                t0 = time.perf_counter()
                m, ll = tm.fit(x, y, experts, top_k, restarts=int(s.restarts), iterations=int(s.fit_steps),
                               gen=torch.Generator().manual_seed(derive_seed(run.seed, "fit", name, n, rep)))
                block.append({"fit": name, "experts": experts, "top_k": top_k, "n": n, "rep": rep, "loglik": ll,
                              "truth_loglik": truth_ll, "voronoi": tm.voronoi_loss(m, truth),
                              "hellinger": tm.hellinger(m, truth), "seconds": round(time.perf_counter() - t0, 3)})
            rows += block
            run.extra_state["fits"] = rows
            run.save_progress()
        print(f"sparse-run: topk_moe_theory n={n}: {int(s.replications)} replications fitted", flush=True)
    df = pd.DataFrame(rows)
    atomic_write_text(run.dir / "fits.csv", rows_to_csv(rows, FIT_COLUMNS))
    exact = next((name for name, k, top in fits if (k, top) == (truth.experts, truth.top_k)), "")
    srows = [{"experiment": cfg.name, "seed": run.seed, "budget": cfg.budget.name, **r}
             for r in slopes(df, exact, run.seed)]
    atomic_write_text(run.dir / "slopes.csv", rows_to_csv(srows, SLOPE_COLUMNS))
    title = (f"{cfg.name} (budget {cfg.budget.name}, seed {run.seed}): truth k* = 2, K = 1; {int(s.replications)} "
             f"replications per n; L-BFGS {int(s.fit_steps)} iterations, {int(s.restarts)} random + warm starts")
    from sparse_run.report.topk_theory import rates_figure  # here: report/ imports matplotlib (start-up)
    rates_figure(df, pd.DataFrame(srows), run.dir / "figures" / "topk_rates.png", title)
    for r in srows:
        print(f"  {r['fit']:<6} {r['loss']:<9} slope {r['slope']:+.3f} [{r['slope_lo']:+.3f}, {r['slope_hi']:+.3f}]")


def validate(cfg: Any) -> None:
    """One-line errors: sizes >= 50 and increasing (at least 3), >= 2 replications, fits k >= K >= 1 with k >= 2."""
    s = cfg.method.schedule
    sizes = list(s.sample_sizes or [])
    if len(sizes) < 3:
        raise ConfigError("method.schedule.sample_sizes", f"got {sizes}; at least 3 sample sizes (a slope)")
    for i, n in enumerate(sizes):
        number(n, f"method.schedule.sample_sizes[{i}]", lo=50, integer=True)
    if sorted(set(sizes)) != sizes:
        raise ConfigError("method.schedule.sample_sizes", f"got {sizes}; strictly increasing")
    number(s.replications, "method.schedule.replications", lo=2, integer=True)
    number(s.restarts, "method.schedule.restarts", lo=0, integer=True)
    number(s.fit_steps, "method.schedule.fit_steps", lo=1, integer=True)
    fits = list(s.fits or [])
    if not fits or len(set(fits)) != len(fits):
        raise ConfigError("method.schedule.fits", f"got {fits}; a non-empty list without repeats, e.g. [k2_K1, k3_K2]")
    for i, name in enumerate(fits):
        k, top = parse_fit(name, f"method.schedule.fits[{i}]")
        if k < 2 or not 1 <= top <= k:
            raise ConfigError(f"method.schedule.fits[{i}]", f"got {name!r}; needs experts >= 2 and 1 <= K <= experts")
        if top == 1 and k > 4:
            raise ConfigError(f"method.schedule.fits[{i}]", f"got {name!r}; top-1 fits scan change points, at most "
                                                            "4 experts")
