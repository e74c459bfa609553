"""A sweep's plan: a base experiment, a grid of overrides and a number of seeds, expanded to runs.

Why seeds are handled apart from the grid: replicates must differ in seed while every arm
(grid cell) reuses the same seeds, so two arms are paired seed by seed and can be compared
with paired tests. Replicate ``r`` of every cell runs with ``seed = base seed + r``; the
spec's ``seed`` key (spec/schema.py) seeds the data partition, the initial model and
every per-device stream, so a replicate is a fresh draw of all of them.

Every run's spec is validated here, before anything is written, so a grid key that does
not exist or a value out of range is one line and exit 2 with no sweep folder left behind.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tinytwin.errors import SpecError, TinyTwinError
from tinytwin.spec import strict_yaml
from tinytwin.spec.load import apply_override, validate_spec

SEED_KEY = "seed"


@dataclass(frozen=True)
class RunPlan:
    """One run of a sweep: its id, its grid cell and the overrides and seed that make it."""

    run_id: str
    cell: int
    replicate: int
    overrides: dict[str, Any]
    seed: int

    @property
    def label(self) -> str:
        return cell_label(self.overrides)


@dataclass(frozen=True)
class SweepPlan:
    """The base experiment (as a raw mapping), the grid (key -> values) and the replicate count."""

    base: dict[str, Any]
    base_dir: Path
    grid: dict[str, list[Any]]
    seeds: int

    @property
    def base_seed(self) -> int:
        return int(self.base.get(SEED_KEY, 0) or 0)

    @property
    def name(self) -> str:
        return str(self.base.get("name") or "experiment")

    def cells(self) -> list[dict[str, Any]]:
        """Every combination of grid values, first key slowest, in the order the values were given."""
        keys = list(self.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.grid[k] for k in keys))]

    def runs(self) -> list[RunPlan]:
        """All runs, replicate-major within each cell: c00-r0, c00-r1, ..., c01-r0, ..."""
        return [
            RunPlan(f"c{c:02d}-r{r}", c, r, cell, self.base_seed + r)
            for c, cell in enumerate(self.cells())
            for r in range(self.seeds)
        ]


def cell_label(overrides: Mapping[str, Any]) -> str:
    """``algorithm.lr=0.05 partition.alpha=0.1``: a cell's name in tables and plots."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items()) or "base"


def run_raw(base: Mapping[str, Any], overrides: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The raw experiment of one run: the base with the cell's overrides and the replicate's seed."""
    raw = yaml.safe_load(yaml.safe_dump(dict(base)))  # a deep copy that stays plain YAML
    for key, value in overrides.items():
        apply_override(raw, f"{key}={json.dumps(value)}")
    raw[SEED_KEY] = seed
    return raw


def parse_grid_options(items: Iterable[str]) -> dict[str, list[Any]]:
    """``--grid algorithm.lr=0.05,0.1`` options as key -> values (each value parsed as YAML)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError("--grid", f"{item!r} must look like key.path=v1,v2, e.g. algorithm.lr=0.05,0.1")
        values = [v.strip() for v in text.split(",")] if text.strip() else []
        if not values or any(not v for v in values):
            raise SpecError(f"--grid {key}", "needs a non-empty list of values, e.g. algorithm.lr=0.05,0.1")
        if key in grid:
            raise SpecError(f"--grid {key}", "is given twice; list all its values in one option")
        grid[key] = [_yaml_value(v) for v in values]
    return grid


def _yaml_value(text: str) -> Any:
    """A grid value read as the experiment file's strict YAML 1.2 reads it (``on`` stays text)."""
    try:
        return strict_yaml.parse(text, f"--grid value {text!r}")
    except SpecError:
        return text


def load_sweep_file(path: Path) -> tuple[Path, dict[str, list[Any]], int | None]:
    """A sweep file: ``spec`` (path, relative to the sweep file), ``grid`` (key: [values]) and ``seeds``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TinyTwinError(f"cannot read {path}: {exc.strerror}") from None
    raw = strict_yaml.parse(strict_yaml.decode(data, str(path)), str(path))  # the experiment file's limits
    if not isinstance(raw, dict) or "spec" not in raw:
        raise SpecError("", f"{path} must be an experiment file, or a sweep file with keys spec, grid, seeds")
    unknown = set(raw) - {"spec", "grid", "seeds"}
    if unknown:
        raise SpecError(sorted(unknown)[0], "unknown key in a sweep file; allowed keys: spec, grid, seeds")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise SpecError("grid", "must map dotted keys to lists of values, e.g. algorithm.lr: [0.05, 0.1]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"grid.{key}", "needs a non-empty list of values")
    seeds = raw.get("seeds")
    if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool)):
        raise SpecError("seeds", f"must be a whole number >= 1 (got {seeds!r})")
    return (path.parent / str(raw["spec"])), {str(k): list(v) for k, v in grid.items()}, seeds


def is_sweep_file(path: Path) -> bool:
    """True when ``path`` is a sweep file (has a top-level ``spec`` key) rather than an experiment file."""
    try:
        raw = strict_yaml.parse(strict_yaml.decode(path.read_bytes(), str(path)), str(path))
    except (OSError, SpecError):
        return False
    return isinstance(raw, dict) and "spec" in raw and "fleet" not in raw


def build_plan(
    spec_file: Path, sets: Sequence[str], grid: dict[str, list[Any]], seeds: int
) -> tuple[SweepPlan, list[RunPlan]]:
    """Read the base experiment, check the grid and validate every run's spec; nothing is written."""
    from tinytwin.spec.load import load_spec

    if seeds < 1:
        raise SpecError("--seeds", f"must be >= 1 (got {seeds}); it is the number of replicates per grid cell")
    if SEED_KEY in grid:
        raise SpecError(f"--grid {SEED_KEY}", "seeds are set with --seeds (replicate r runs with seed + r)")
    _, base_yaml = load_spec(spec_file, sets)
    plan = SweepPlan(yaml.safe_load(base_yaml), spec_file.resolve().parent, grid, seeds)
    runs = plan.runs()
    for run in runs[:: plan.seeds]:  # one per cell: replicates differ only in the seed
        try:
            validate_spec(run_raw(plan.base, run.overrides, run.seed))
        except SpecError as exc:
            raise SpecError(exc.path, f"{exc.detail} (grid cell {run.label})") from None
    return plan, runs
