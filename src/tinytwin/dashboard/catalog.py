"""The list of runs under the dashboard's folder, kept fresh cheaply.

A runs folder can hold hundreds of run folders; re-opening every database on each refresh
would be wasteful, so each run's summary row is cached against a stamp made of the file's
and its WAL's modification times (:func:`tinytwin.dashboard.data.db_signature`) and
re-read only when that changes. A run that cannot be read stays in the list with its error,
and the error is logged once, not on every refresh.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from tinytwin.dashboard.data import RunDataError, RunDB, db_signature, find_runs

log = logging.getLogger("tinytwin.dashboard")


class RunCatalog:
    """Run folders under ``root``, each addressed by its path relative to ``root`` (its key)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._cache: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    def warn_once(self, message: str) -> None:
        """Log a bad-input message the first time it is seen (pages poll; the log must not flood)."""
        with self._lock:
            if message in self._logged:
                return
            self._logged.add(message)
        log.warning(message)

    def key_of(self, run_dir: Path) -> str:
        rel = run_dir.resolve().relative_to(self.root).as_posix()
        return rel or "."

    def resolve(self, key: str) -> Path:
        """The run folder of ``key``; refuses keys that leave the root or name no run."""
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise RunDataError(f"run {key!r} is outside {self.root}")
        if not (path / "results.db").is_file():
            raise RunDataError(f"no run {key!r} in {self.root}")
        return path

    def open(self, key: str) -> RunDB:
        """Open a run read-only; a bad database is logged once and re-raised for the page."""
        try:
            return RunDB(self.resolve(key) / "results.db")
        except RunDataError as exc:
            self.warn_once(str(exc))
            raise

    def runs(self) -> list[dict[str, Any]]:
        """One entry per run folder, newest first; unreadable ones carry an ``error``."""
        out = []
        found = find_runs(self.root)
        keys = {self.key_of(d) for d in found}
        for gone in [k for k in self._cache if k not in keys]:  # deleted run folders
            del self._cache[gone]
        for run_dir in found:
            key = self.key_of(run_dir)
            stamp = db_signature(run_dir)
            hit = self._cache.get(key)
            if hit is None or hit[0] != stamp:
                hit = (stamp, self._read(key, run_dir))
                self._cache[key] = hit
            out.append(hit[1])
        out.sort(key=lambda r: r.get("started_at") or 0, reverse=True)
        return out

    def listing(self) -> dict[str, Any]:
        """What the page's run list shows: the runs, and a note when there are none (logged once)."""
        runs = self.runs()
        note = None
        if not self.root.is_dir():
            note = f"{self.root} does not exist (yet); runs appear here once it holds some."
            self.warn_once(f"{self.root}: folder does not exist")
        elif not runs:
            note = (
                f"No runs in {self.root} yet. Start one with `tinytwin run EXPERIMENT.yaml --out {self.root}`; "
                "it appears here as soon as its first row is written."
            )
            self.warn_once(f"{self.root}: no runs (no results.db) found")
        return {"root": str(self.root), "runs": runs, "note": note}

    def signature(self) -> tuple:
        """Changes whenever a run appears, disappears or commits anything."""
        return tuple((self.key_of(d), db_signature(d)) for d in find_runs(self.root))

    def _read(self, key: str, run_dir: Path) -> dict[str, Any]:
        entry: dict[str, Any] = {"key": key, "folder": run_dir.name}
        try:
            db = RunDB(run_dir / "results.db")
        except RunDataError as exc:
            self.warn_once(str(exc))
            return {**entry, "error": str(exc), "name": run_dir.name}
        try:
            info = db.info()
        except RunDataError as exc:
            self.warn_once(str(exc))
            return {**entry, "error": str(exc), "name": run_dir.name}
        finally:
            db.close()
        fields = ("run_id", "name", "twin", "seed", "status", "rounds_planned", "rounds_done", "started_at")
        return {**entry, **{k: info[k] for k in fields}, "num_devices": info["num_devices"]}
