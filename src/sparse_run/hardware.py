"""Hardware targets (config group ``hardware/``): how the final sparse model is executed.

``cpu`` executes densely (zeros left in the weights) and measures nothing: it is the baseline
every sparse target is compared with.
"""
from __future__ import annotations

from typing import Any

from .validate import choice

TARGETS = ("cpu",)


def check(cfg: Any) -> None:
    """Reject target / method combinations the target cannot execute."""
    choice(cfg.hardware.name, "hardware.name", TARGETS)


def measure(run: Any) -> None:
    """Time the final model on the target (dense ``cpu``: nothing to measure)."""
    return None
