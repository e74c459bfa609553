"""tinytwin.report: turn a run's results.db into CSV files, PNG plots, an HTML report and comparisons.

``write_report(run_dir)`` is the one-call entry point the CLI uses after a run; the
others are exposed for scripts that want only part of it. Unit formatting for tables
lives in :mod:`tinytwin.report.format`.
"""

from tinytwin.report.compare import compare_runs
from tinytwin.report.export import export_csv
from tinytwin.report.html import write_report
from tinytwin.report.plots import make_plots

__all__ = ["compare_runs", "export_csv", "make_plots", "write_report"]
