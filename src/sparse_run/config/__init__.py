"""Configuration: the typed schema (``schema.py``), the error type, field checks, the budget rule and the generic
validation of a composed config.

The bottom layer: it imports nothing else from sparse_run, so every other layer may use it. Method-specific
settings are validated by their method (``methods.validate`` composes both, once per run).
"""
from .budget import apply_budget, budget_note, explicit_keys, to_dict
from .errors import ConfigError, choice, finite_floats, number

__all__ = ["ConfigError", "choice", "number", "finite_floats", "apply_budget", "budget_note", "explicit_keys",
           "to_dict"]
