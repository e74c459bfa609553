"""Results store: one SQLite database per run, written as the run goes."""

from tinytwin.store.db import RunStore, open_store

__all__ = ["RunStore", "open_store"]
