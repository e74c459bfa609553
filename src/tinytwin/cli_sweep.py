"""The ``sweep`` and ``sweep-report`` commands, registered on the ``tinytwin`` app by :func:`register`.

Kept out of cli.py so the sweep machinery stays one module away from the single-run
commands; cli.py calls ``register(app)`` once. Errors follow the CLI's rule: a
:class:`~tinytwin.errors.TinyTwinError` becomes one line and exit status 2, raised before
anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tinytwin.errors import TinyTwinError

console = Console()


def _plan_from_args(spec_file: Path, grid: list[str], sets: list[str], seeds: int | None) -> tuple[Any, Any]:
    """The sweep plan from an experiment file (+ --grid) or a sweep file (its grid, + --grid)."""
    from tinytwin.sweep.grid import build_plan, is_sweep_file, load_sweep_file, parse_grid_options

    cli_grid = parse_grid_options(grid)
    if is_sweep_file(spec_file):
        spec_path, file_grid, file_seeds = load_sweep_file(spec_file)
        merged = {**file_grid, **cli_grid}
        return build_plan(spec_path, sets, merged, seeds if seeds is not None else (file_seeds or 1))
    if not spec_file.is_file():
        raise TinyTwinError(f"experiment or sweep file {spec_file} not found")
    return build_plan(spec_file, sets, cli_grid, seeds if seeds is not None else 1)


def _progress_display(quiet: bool, label: str) -> tuple[Progress, Any]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("runs {task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    )
    failed = [0]

    def on_run(result: dict[str, Any], done: int, total: int) -> None:
        if result.get("status") == "failed":
            failed[0] += 1
        acc = (result.get("summary") or {}).get("final_accuracy")
        last = f"last {result['run_id']} acc {acc:.3f}" if acc is not None else ""
        status = f"({failed[0]} failed) {last}" if failed[0] else last
        progress.update(task, total=total, completed=done, status=status)

    task = progress.add_task(label, total=None, status="")
    return progress, on_run


def sweep(
    spec_file: Path | None = typer.Argument(None, help="experiment file, or a sweep file (spec, grid, seeds)"),
    grid: list[str] | None = typer.Option(None, "--grid", help="a grid axis: --grid algorithm.lr=0.05,0.1"),
    seeds: int | None = typer.Option(None, "--seeds", help="replicates per grid cell (seed, seed+1, ...)"),
    set_: list[str] | None = typer.Option(None, "--set", help="override a key of the base experiment"),
    twin: str = typer.Option("simulate", "--twin", help="simulate or emulate"),
    workers: int | None = typer.Option(None, "--workers", help="local worker processes (default min(2, cores))"),
    out: Path = typer.Option(Path("runs"), "--out", help="folder for the sweep folder"),
    ray: str | None = typer.Option(None, "--ray", help="run on Ray: 'auto' (a local instance) or HOST:PORT"),
    resume: Path | None = typer.Option(None, "--resume", help="finish a killed sweep folder (skips finished runs)"),
    time_scale: float = typer.Option(0.01, "--time-scale", help="emulate: wall seconds per modelled second"),
    target: float = typer.Option(0.8, "--target", help="target accuracy for time-to-target statistics"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress display"),
    no_report: bool = typer.Option(False, "--no-report", help="skip the sweep report (tinytwin sweep-report later)"),
    dashboard: bool = typer.Option(False, "--dashboard", help="serve the live dashboard of --out during the sweep"),
) -> None:
    """Run a grid of experiments over seeds: one run folder each, one index, resumable, parallel."""
    from tinytwin.sweep.executors import default_workers
    from tinytwin.sweep.runner import SweepOptions, resume_sweep, start_sweep

    if not 0.0 < target <= 1.0:
        raise TinyTwinError(f"--target must be an accuracy in (0, 1] (got {target})")
    options = SweepOptions(twin, workers if workers is not None else default_workers(), ray, time_scale)
    options.check()
    if dashboard:  # every run of the sweep, as its worker writes it (OUT/SWEEP/runs/RUN)
        from tinytwin.cli_dashboard import start_dashboard

        start_dashboard(resume if resume is not None else out)
    if resume is not None:
        if spec_file is not None or grid or seeds is not None or set_:
            raise TinyTwinError("--resume takes the sweep folder only; its grid and seeds are in its index")
        progress, on_run = _progress_display(quiet, f"sweep {resume.name} (resumed)")
        with progress:
            sweep_dir = resume_sweep(resume, options, on_run)
    else:
        if spec_file is None:
            raise TinyTwinError("pass an experiment or sweep file (or --resume SWEEP_DIR)")
        plan, runs = _plan_from_args(spec_file, grid or [], set_ or [], seeds)
        progress, on_run = _progress_display(quiet, f"sweep {plan.name}")
        with progress:
            sweep_dir = start_sweep(plan, runs, options, out, on_run)
    _finish(sweep_dir, no_report, target)


def _finish(sweep_dir: Path, no_report: bool, target: float) -> None:
    from tinytwin.sweep.index import SweepIndex
    from tinytwin.sweep.report import write_sweep_report

    index = SweepIndex.open_existing(sweep_dir)
    try:
        counts = index.counts()
        errors = [r for r in index.rows(["run_id", "error"]) if r["error"]]
    finally:
        index.close()
    console.print(f"sweep folder: {sweep_dir}")
    console.print("runs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if not no_report:
        console.print(f"report:       {write_sweep_report(sweep_dir, target)}")
    if errors:
        first = errors[0]["error"].strip().splitlines()[0]
        console.print(f"[red]{len(errors)} run(s) failed[/]; first: {errors[0]['run_id']}: {first}", highlight=False)
        raise typer.Exit(1)


def sweep_report(
    sweep_dir: Path = typer.Argument(..., help="a sweep folder"),
    target: float = typer.Option(0.8, "--target", help="target accuracy for time-to-target statistics"),
) -> None:
    """(Re)write a sweep's statistics: per-cell means with 95 % CIs, paired tests, curves with CI bands."""
    from tinytwin.sweep.report import write_sweep_report

    console.print(f"report: {write_sweep_report(sweep_dir, target)}")


def register(app: typer.Typer) -> None:
    """Add ``sweep`` and ``sweep-report`` to the ``tinytwin`` app."""
    app.command("sweep")(sweep)
    app.command("sweep-report")(sweep_report)
