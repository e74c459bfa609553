"""tinytwin.dashboard: a local web page that follows runs while they run.

``tinytwin dashboard RUNS_DIR`` serves it (:mod:`tinytwin.dashboard.server`). Everything it
shows is read from the runs' ``results.db`` files through read-only SQLite connections
(:mod:`tinytwin.dashboard.data`), so watching a run can never disturb or damage it.
"""
