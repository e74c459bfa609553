"""tinytwin.report: turn a run's results.db into CSV files, PNG plots, an HTML report and comparisons.

``write_report(run_dir)`` is the one-call entry point the CLI uses after a run; the
others are exposed for scripts that want only part of it. Unit formatting for tables
lives in :mod:`tinytwin.report.format`.

The functions are loaded on first use: importing matplotlib costs most of a second, and
``tinytwin run --no-report`` or the summary table (which needs only ``format``) should not pay it.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_SOURCES = {
    "compare_runs": "tinytwin.report.compare",
    "export_csv": "tinytwin.report.export",
    "write_report": "tinytwin.report.html",
    "make_plots": "tinytwin.report.plots",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str) -> Any:
    if name in _SOURCES:
        return getattr(import_module(_SOURCES[name]), name)
    raise AttributeError(f"module 'tinytwin.report' has no attribute {name!r}")
