"""Schedules: when pruning happens and to which density.

``iterative_density`` is the density ladder of iterative pruning at a fixed per-round rate
(LTH's P_m); the pipeline walks the rounds and reacts to each event.
"""
from __future__ import annotations


def iterative_density(sizes: dict[str, int], rates: dict[str, float], rounds: int) -> float:
    """P_m(k) = Σ_l n_l (1 − p_l)^k / Σ_l n_l: fraction of prunable weights left after k rounds."""
    total = sum(sizes.values())
    return sum(n * (1.0 - rates[name]) ** rounds for name, n in sizes.items()) / total
