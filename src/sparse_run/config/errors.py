"""Config errors and the checks every layer uses: a bad input becomes one line naming the field and what is allowed."""
from __future__ import annotations

import math
from typing import Any, Iterable


class ConfigError(ValueError):
    """A user-facing error about one config field; printed as a single line by the CLI."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message

    def __reduce__(self):  # picklable across launcher processes (submitit, joblib)
        return (type(self), (self.field, self.message))


def choice(value: Any, field: str, allowed: Iterable[Any]) -> Any:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(field, f"got {value!r}; allowed: {', '.join(map(str, allowed))}")
    return value


def number(value: Any, field: str, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> Any:
    """Check a numeric field against an interval; ``lo_open`` / ``hi_open`` exclude the ends."""
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        kind = "an integer" if integer else "a number"
        raise ConfigError(field, f"got {value!r}; must be {kind}")
    if not math.isfinite(value):  # nan passes every comparison below; inf is never a usable setting
        raise ConfigError(field, f"got {value!r}; must be a finite number")
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    interval = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ConfigError(field, f"got {value!r}; must be in {interval}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ConfigError(field, f"got {value!r}; must be in {interval}")
    return value


def finite_floats(value: Any, field: str = "") -> None:
    """Reject nan / inf anywhere in a plain (resolved) config: a non-finite float is never a
    meaningful setting, and fields without a range check of their own would hand it to torch."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(field, f"got {value!r}; must be a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            finite_floats(v, f"{field}.{k}" if field else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            finite_floats(v, f"{field}[{i}]")
