"""The ``search`` command: Optuna picks each trial's settings, tinytwin runs them (tinytwin.sweep.search).

Optuna is an optional extra (``pip install 'tinytwin[search]'``); without it the command says so
in one line. Errors follow the CLI's rule: one line, exit 2, nothing written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from tinytwin.errors import TinyTwinError

console = Console()


def search(
    spec_file: Path = typer.Argument(..., help="experiment file (YAML)", metavar="SPEC_FILE"),
    param: list[str] | None = typer.Option(
        None, "--param", help="a searched key: algorithm.lr=1e-3..0.3:log | key=1..5:int | key=A,B"
    ),
    trials: int = typer.Option(10, "--trials", help="number of trials"),
    seeds: int = typer.Option(1, "--seeds", help="runs per trial (seed, seed+1, ...); the objective is their mean"),
    objective: str = typer.Option("final_accuracy", "--objective", help="a summary figure, e.g. final_accuracy"),
    direction: str = typer.Option("maximize", "--direction", help="maximize or minimize"),
    constraint: list[str] | None = typer.Option(
        None, "--constraint", help="a bound a trial must meet: energy_j_total<=500 (else infeasible)"
    ),
    set_: list[str] | None = typer.Option(None, "--set", help="override a key of the base experiment"),
    out: Path = typer.Option(Path("runs"), "--out", help="folder for the search folder"),
    quiet: bool = typer.Option(False, "--quiet", help="no line per trial"),
) -> None:
    """Search settings with Optuna (TPE): each trial runs the experiment, the best trial is printed."""
    from tinytwin.sweep.search import build_search, run_search

    plan = build_search(spec_file, set_ or [], param or [], trials, seeds, objective, direction, constraint or [])
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise TinyTwinError(
            "search needs Optuna: pip install 'tinytwin[search]' (or scripts/setup_env.sh search)"
        ) from None

    def on_trial(row: dict[str, Any]) -> None:
        if not quiet:
            values = ", ".join(f"{p.key}={row[p.key]!r}" for p in plan.params)
            shown = "—" if row["value"] is None else f"{row['value']:.6g}"
            console.print(f"trial {row['trial']}: {values} -> {plan.objective} {shown} ({row['state']}) {row['note']}")

    search_dir, best = run_search(plan, out, on_trial)
    console.print(f"search folder: {search_dir}")
    if best is None:
        console.print("[red]no feasible trial[/]: every trial failed or broke a constraint (trials.csv)")
        raise typer.Exit(1)
    values = ", ".join(f"{p.key}={best[p.key]!r}" for p in plan.params)
    console.print(f"best: trial {best['trial']}: {values} -> {plan.objective} {best['value']:.6g}")


def register(app: typer.Typer) -> None:
    app.command("search")(search)
