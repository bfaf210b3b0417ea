"""Reporting: result files → pandas tables → figures, for one run, a sweep or a whole results root.

Reads result FILES only (the schema in ``store.schema``), so it works on runs made by older versions; it
imports neither the engine, the methods nor the studies (import-linter checks it), only ``store`` and
``config``. Modules: ``collect`` (gather runs, configuration groups), ``tables``, ``figures`` (run figures),
``nm`` / ``rnn`` / ``hardware`` (their experiments' figures), ``graph_stats`` (graph-property correlations),
``sweep`` (``sparse-run-report`` and the Hydra callback).
"""
from importlib import import_module
from typing import Any

# Loaded on first use (PEP 562): matplotlib, pandas and scipy cost ~3 s, and every CLI start would pay them.
_HOME = {"run_figures": "figures", "save_figure": "plot", "save_png": "plot", "hardware_figure": "hardware",
         "read_hardware": "hardware", "ReportCallback": "sweep", "main": "sweep", "report": "sweep",
         "console_table": "tables"}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOME[name]}", __name__), name)
