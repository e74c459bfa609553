"""The Python API: load an experiment, run it on a twin, get typed results back.

Why a separate entry point: notebooks and sweep scripts want a run as a value (its folder,
its summary, its per-round and per-device tables as DataFrames), not as console output.
It calls the same functions as ``tinytwin run`` and ``tinytwin emulate``, with the same
``--set`` override keys and the same one-line :class:`~tinytwin.errors.TinyTwinError`, so a
run started here is the run the CLI would have made (docs/api.md).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tinytwin.errors import SpecError, TinyTwinError

if TYPE_CHECKING:
    import pandas as pd

    from tinytwin.spec.schema import ExperimentSpec

RoundCallback = Callable[[int, dict[str, Any]], None]
TWINS = ("simulate", "emulate")


def override_items(overrides: Mapping[str, Any]) -> list[str]:
    """``{"algorithm.lr": 0.05}`` as the ``--set`` strings the CLI takes (values as JSON, a YAML subset)."""
    items = []
    for key, value in overrides.items():
        if not isinstance(key, str) or not key.strip():
            raise SpecError("overrides", f"{key!r} is not a dotted key such as 'algorithm.lr'")
        try:
            text = json.dumps(value, default=_plain)
        except TypeError:
            raise SpecError(key, f"{value!r} is not a plain value (number, string, bool, list, mapping)") from None
        items.append(f"{key}={text}")
    return items


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as Python values (a notebook's ``np.linspace`` grid); anything else is refused."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(type(value).__name__)


@dataclass(frozen=True)
class RunResult:
    """A finished run: its folder, its summary and its tables (read back from ``results.db``)."""

    run_dir: Path
    summary: dict[str, Any]
    rounds: pd.DataFrame
    devices: pd.DataFrame

    @property
    def final_accuracy(self) -> float | None:
        return self.summary.get("final_accuracy")


def read_tables(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``rounds`` and ``devices`` tables of a run folder, ordered by round and device.

    Column names are the store's (docs/results.md), except ``group`` (stored as ``grp``) and
    ``class_hist`` (a list per device, stored as JSON); ``run_id`` is dropped (one run per folder).
    """
    import pandas as pd

    db = Path(run_dir) / "results.db"
    if not db.is_file():
        raise TinyTwinError(f"{run_dir}: not a tinytwin run folder (no results.db)")
    conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        rounds = pd.read_sql_query("SELECT * FROM rounds ORDER BY round", conn)
        devices = pd.read_sql_query("SELECT * FROM devices ORDER BY device", conn)
    finally:
        conn.close()
    devices = devices.rename(columns={"grp": "group"})
    devices["class_hist"] = [json.loads(h) for h in devices.pop("class_hist_json")]
    return rounds.drop(columns="run_id"), devices.drop(columns="run_id")


@dataclass
class Experiment:
    """One experiment file with its overrides applied and validated.

    >>> exp = Experiment.from_yaml("examples/quickstart.yaml", overrides={"rounds": 3})
    >>> result = exp.run(out="runs")            # doctest: +SKIP
    >>> result.rounds[["round", "test_accuracy"]]  # doctest: +SKIP
    """

    spec: ExperimentSpec
    spec_yaml: str
    base_dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> Experiment:
        """Read ``path`` and apply ``overrides`` (dotted keys, as ``--set``); invalid input raises TinyTwinError."""
        from tinytwin.spec.load import load_spec

        overrides = dict(overrides or {})
        spec, spec_yaml = load_spec(path, override_items(overrides))
        return cls(spec, spec_yaml, Path(path).resolve().parent, overrides)

    @property
    def raw(self) -> dict[str, Any]:
        """The effective experiment as a plain mapping (what the run folder's spec.yaml holds)."""
        return yaml.safe_load(self.spec_yaml)

    def run(
        self,
        twin: str = "simulate",
        out: str | Path = "runs",
        on_round: RoundCallback | None = None,
        report: bool = False,
        time_scale: float = 0.01,
    ) -> RunResult:
        """Run every round on ``twin`` and return the result; ``on_round(round, info)`` follows each round.

        ``report=True`` also writes the CSV files, plots and report.html, as the CLI does
        by default; it is off here because a notebook usually plots the DataFrames itself.
        """
        if twin not in TWINS:
            raise TinyTwinError(f"twin must be one of {', '.join(TWINS)}, not {twin!r}")
        out = Path(out)
        if twin == "simulate":
            from tinytwin.engines.runner import start_run

            outcome = start_run(self.spec, self.spec_yaml, out, self.base_dir, on_round, report=report)
            run_dir, summary = outcome.run_dir, outcome.summary
        else:
            if time_scale < 0:
                raise TinyTwinError("time_scale must be >= 0")
            from tinytwin.emulate.coordinator import EmulateOptions, check_emulatable, start_emulation

            check_emulatable(self.spec)
            options = EmulateOptions(time_scale=time_scale)
            run_dir, summary = start_emulation(
                self.spec, self.spec_yaml, out, self.base_dir, options, on_round, report=report
            )
        rounds, devices = read_tables(run_dir)
        return RunResult(Path(run_dir), summary, rounds, devices)
