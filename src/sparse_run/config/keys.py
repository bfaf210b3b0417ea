"""``key(default, help)``: a dataclass field with its one-line meaning, the one way schema fields are declared."""
from __future__ import annotations

from dataclasses import field, is_dataclass
from typing import Any


def key(default: Any, help: str) -> Any:  # noqa: A002 - "help" is the metadata's name
    """A field with its one-line meaning; lists and dicts get a fresh copy per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    if is_dataclass(default):
        return field(default_factory=type(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})
