"""Reporting: result files → pandas tables → figures, for one run, a sweep or a whole results root.

Reads result FILES only (the schema in ``store.schema``), so it works on runs made by older versions; it
imports neither the engine, the methods nor the studies (import-linter checks it), only ``store`` and
``config``. Modules: ``collect`` (gather runs, configuration groups), ``tables``, ``figures`` (run figures),
``nm`` / ``rnn`` / ``hardware`` (their experiments' figures), ``graph_stats`` (graph-property correlations),
``sweep`` (``sparse-run-report`` and the Hydra callback).
"""
from .figures import run_figures
from .plot import save_figure, save_png
from .hardware import hardware_figure, read_hardware
from .sweep import ReportCallback, main, report
from .tables import console_table

__all__ = ["ReportCallback", "console_table", "hardware_figure", "main", "read_hardware", "report", "run_figures",
           "save_figure", "save_png"]
