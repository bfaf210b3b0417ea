"""Sparsity methods as compositions: importance criterion × selection × schedule, under a layer policy.

A paper's method is a config (``conf/method/*.yaml``) naming one of each; see docs/methods.md.
Pure functions on tensors and masks: imports ``config`` only (its errors), nothing that trains or records.
"""
from .criteria import CRITERIA, ScoreContext
from .masks import MaskSet
from .policy import prunable, rate_scales
from .selection import PATTERNS, SCOPES, keep_global, keep_top, prune_fraction, select
from .schedules import cubic_sparsity, gradual_events, iterative_density, levels

__all__ = ["CRITERIA", "ScoreContext", "MaskSet", "prunable", "rate_scales", "PATTERNS", "SCOPES", "keep_global",
           "keep_top", "prune_fraction", "select", "cubic_sparsity", "gradual_events", "iterative_density", "levels"]
