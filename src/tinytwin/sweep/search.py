"""Search mode: Optuna chooses the settings of each trial, tinytwin runs them.

``tinytwin search SPEC --param algorithm.lr=1e-3..0.3:log --trials 20 --seeds 2
--objective final_accuracy --constraint energy_j_total<=500`` asks Optuna (TPE, seeded with the
spec's seed, so a search is reproducible) for each trial's values, runs the trial once per seed
in its own run folder under the search folder, and tells Optuna the mean of the objective over
the seeds. A trial whose mean breaks a constraint is recorded as pruned (infeasible), a trial
whose run failed as failed; neither can be the best. The study lives in ``optuna.db`` (SQLite)
beside the runs, and ``trials.csv`` lists every trial.

Parameters: ``key=LOW..HIGH`` (float), ``key=LOW..HIGH:log`` (log-uniform float),
``key=LOW..HIGH:int`` (integer), ``key=A,B,C`` (a choice). Every key and both ends of every
range are validated as a run's spec before the search folder is created.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tinytwin.errors import SpecError, TinyTwinError
from tinytwin.sweep.grid import SEED_KEY, _yaml_value, run_raw

OBJECTIVES = ("final_accuracy", "best_accuracy", "energy_j_total", "sim_time_s", "bytes_up", "bytes_down")
_RANGE = re.compile(r"^\s*([-+0-9.eE]+)\s*\.\.\s*([-+0-9.eE]+)\s*(?::\s*(log|int))?\s*$")
_CONSTRAINT = re.compile(r"^\s*([a-z_]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class SearchParam:
    key: str
    kind: str  # float | log | int | choice
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high))
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log")

    def ends(self) -> list[Any]:
        """The values a trial can take at the extremes (validated before the search starts)."""
        if self.kind == "choice":
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.kind == "int" else [self.low, self.high]


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str
    bound: float

    def holds(self, value: float) -> bool:
        return value <= self.bound if self.op == "<=" else value >= self.bound


def parse_param(text: str) -> SearchParam:
    key, sep, rest = text.partition("=")
    key = key.strip()
    if not sep or not key or not rest.strip():
        raise SpecError(
            "--param", f"{text!r} must look like key=LOW..HIGH[:log|:int] or key=A,B, e.g. algorithm.lr=1e-3..0.3:log"
        )
    if key == SEED_KEY:
        raise SpecError("--param seed", "seeds are set with --seeds")
    m = _RANGE.match(rest)
    if m is None:
        choices = tuple(_yaml_value(v.strip()) for v in rest.split(","))
        if len(choices) < 2 or any(v == "" for v in choices):
            raise SpecError(
                f"--param {key}", f"{rest!r} is neither a range LOW..HIGH nor a list of two or more choices"
            )
        return SearchParam(key, "choice", choices=choices)
    try:
        low, high = float(m.group(1)), float(m.group(2))
    except ValueError:
        raise SpecError(f"--param {key}", f"{rest!r}: the ends of the range must be numbers") from None
    kind = m.group(3) or "float"
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise SpecError(f"--param {key}", f"the range {low:g}..{high:g} must have finite ends with LOW < HIGH")
    if kind == "log" and low <= 0:
        raise SpecError(f"--param {key}", "a log range needs LOW > 0")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise SpecError(f"--param {key}", "an :int range needs whole-number ends")
    return SearchParam(key, kind, low, high)


def parse_constraint(text: str) -> Constraint:
    m = _CONSTRAINT.match(text)
    if m is None or m.group(1) not in OBJECTIVES:
        raise SpecError(
            "--constraint",
            f"{text!r} must look like METRIC<=BOUND or METRIC>=BOUND with METRIC one of {', '.join(OBJECTIVES)}",
        )
    return Constraint(m.group(1), m.group(2), float(m.group(3)))


@dataclass(frozen=True)
class SearchPlan:
    base: dict[str, Any]
    base_dir: Path
    params: tuple[SearchParam, ...]
    trials: int
    seeds: int
    objective: str
    direction: str
    constraints: tuple[Constraint, ...]

    @property
    def name(self) -> str:
        return str(self.base.get("name") or "experiment")


def build_search(
    spec_file: Path,
    sets: Sequence[str],
    params: Sequence[str],
    trials: int,
    seeds: int,
    objective: str,
    direction: str,
    constraints: Sequence[str],
) -> SearchPlan:
    """Parse and check everything; nothing is written."""
    from tinytwin.spec.load import load_spec, validate_spec

    if not params:
        raise SpecError("--param", "give at least one, e.g. --param algorithm.lr=1e-3..0.3:log")
    if trials < 1:
        raise SpecError("--trials", f"must be >= 1 (got {trials})")
    if seeds < 1:
        raise SpecError("--seeds", f"must be >= 1 (got {seeds})")
    if objective not in OBJECTIVES:
        raise SpecError("--objective", f"{objective!r} is not one of {', '.join(OBJECTIVES)}")
    if direction not in ("maximize", "minimize"):
        raise SpecError("--direction", f"must be maximize or minimize, not {direction!r}")
    parsed = tuple(parse_param(p) for p in params)
    if len({p.key for p in parsed}) != len(parsed):
        raise SpecError("--param", "a key is given twice")
    if not spec_file.is_file():
        raise TinyTwinError(f"experiment file {spec_file} not found")
    _, base_yaml = load_spec(spec_file, list(sets))
    base = yaml.safe_load(base_yaml)
    for p in parsed:
        for value in p.ends():
            try:
                validate_spec(run_raw(base, {p.key: value}, int(base.get(SEED_KEY, 0) or 0)))
            except SpecError as exc:
                raise SpecError(exc.path, f"{exc.detail} (--param {p.key}={value!r})") from None
    plan_constraints = tuple(parse_constraint(c) for c in constraints)
    return SearchPlan(base, spec_file.resolve().parent, parsed, trials, seeds, objective, direction, plan_constraints)


TrialFn = Callable[[dict[str, Any]], None]


def run_search(plan: SearchPlan, out: Path, on_trial: TrialFn | None = None) -> tuple[Path, dict[str, Any] | None]:
    """Create the search folder, run every trial, write trials.csv; the folder and the best trial."""
    import optuna

    from tinytwin.sweep.worker import execute_task

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search_dir = out / f"{plan.name}-search-{time.strftime('%Y%m%d-%H%M%S')}"
    (search_dir / "runs").mkdir(parents=True, exist_ok=False)
    seed0 = int(plan.base.get(SEED_KEY, 0) or 0)
    study = optuna.create_study(
        study_name=plan.name,
        storage=f"sqlite:///{search_dir / 'optuna.db'}",
        direction="maximize" if plan.direction == "maximize" else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed0),
    )
    base_yaml = yaml.safe_dump(plan.base, sort_keys=False)
    rows = []
    for number in range(plan.trials):
        trial = study.ask()
        overrides = {p.key: p.suggest(trial) for p in plan.params}
        summaries, error = [], None
        for r in range(plan.seeds):
            run_id = f"t{number:03d}-r{r}"
            result = execute_task(
                {
                    "run_id": run_id,
                    "run_dir": str(search_dir / "runs" / run_id),
                    "base_yaml": base_yaml,
                    "base_dir": str(plan.base_dir),
                    "overrides": overrides,
                    "seed": seed0 + r,
                    "twin": "simulate",
                }
            )
            if result["status"] != "complete":
                error = result.get("error", "failed").splitlines()[0]
                break
            summaries.append(result["summary"])
        row = _tell(study, trial, plan, summaries, error) | {"trial": number, **overrides}
        rows.append(row)
        if on_trial is not None:
            on_trial(row)
    _write_trials(search_dir / "trials.csv", rows, plan)
    feasible = [r for r in rows if r["state"] == "complete"]
    if not feasible:
        return search_dir, None
    pick = max if plan.direction == "maximize" else min
    return search_dir, pick(feasible, key=lambda r: r["value"])


def _tell(
    study: Any, trial: Any, plan: SearchPlan, summaries: list[dict[str, Any]], error: str | None
) -> dict[str, Any]:
    """Tell Optuna the trial's outcome: the mean objective, or pruned (infeasible), or failed."""
    import optuna

    if error is not None:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return {"state": "failed", "value": None, "note": error}
    means = {
        m: statistics.mean(float(s[m]) for s in summaries)
        for m in {plan.objective, *(c.metric for c in plan.constraints)}
    }
    broken = [
        f"{c.metric} {means[c.metric]:.6g} breaks {c.op} {c.bound:g}"
        for c in plan.constraints
        if not c.holds(means[c.metric])
    ]
    for key, value in means.items():
        trial.set_user_attr(key, value)
    if broken:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return {"state": "infeasible", "value": means[plan.objective], "note": "; ".join(broken)}
    study.tell(trial, means[plan.objective])
    return {"state": "complete", "value": means[plan.objective], "note": ""}


def _write_trials(path: Path, rows: list[dict[str, Any]], plan: SearchPlan) -> None:
    fields = ["trial", *(p.key for p in plan.params), "state", "value", "note"]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
