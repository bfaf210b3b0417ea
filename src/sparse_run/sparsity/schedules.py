"""Schedules: when pruning happens and to which density.

- ``iterative_density``: the density ladder of iterative pruning at a fixed per-round rate (LTH's P_m);
- ``levels``: the densities a multi-level runner (one-shot, at-init, gradual) visits, one per ``round``;
- ``cubic_sparsity`` / ``gradual_events``: Zhu & Gupta's gradual schedule, applied every Δt steps;
- ``exponential_densities``: SynFlow's per-round densities on its way to the target.

The methods (``methods.REGISTRY``, one per ``schedule.kind``) walk these.
"""
from __future__ import annotations

from typing import Any


def iterative_density(sizes: dict[str, int], rates: dict[str, float], rounds: int) -> float:
    """P_m(k) = Σ_l n_l (1 − p_l)^k / Σ_l n_l: fraction of prunable weights left after k rounds."""
    total = sum(sizes.values())
    return sum(n * (1.0 - rates[name]) ** rounds for name, n in sizes.items()) / total


def levels(sched: Any) -> list[float]:
    """Densities (fraction kept) of a multi-level schedule, in the config's order.

    Taken from ``densities``, else ``sparsities`` (1 − density), else ``final_sparsity`` (a number
    or a list; the gradual schedule's end points).
    """
    if sched.densities is not None:
        return [float(d) for d in sched.densities]
    raw = sched.sparsities
    if raw is None:
        raw = sched.final_sparsity
    raw = [raw] if isinstance(raw, (int, float)) else list(raw)
    return [1.0 - float(s) for s in raw]


def cubic_sparsity(t: float, s_i: float, s_f: float, t0: float, t_end: float) -> float:
    """Zhu & Gupta: s_t = s_f + (s_i − s_f)(1 − (t − t0)/(t_end − t0))³, with t_end = t0 + nΔt.

    s_i before t0, s_f from t_end on. Front-loaded: most weights go early, when there are many
    redundant ones, and the rate slows as the network has fewer left.
    """
    if t < t0:
        return float(s_i)
    if t >= t_end:
        return float(s_f)
    frac = (t - t0) / (t_end - t0)
    return float(s_f + (s_i - s_f) * (1.0 - frac) ** 3)


def gradual_events(t0: int, t_end: int, every: int) -> list[int]:
    """Steps at which masks are updated: t0, t0 + Δt, … and t_end itself (masks frozen after)."""
    steps = list(range(int(t0), int(t_end), max(1, int(every))))
    return steps + [int(t_end)] if not steps or steps[-1] != t_end else steps


def exponential_densities(density: float, rounds: int) -> list[float]:
    """SynFlow's schedule: density^(k/R) for k = 1 … R (the last one is the target)."""
    return [float(density) ** (k / rounds) for k in range(1, rounds + 1)]
