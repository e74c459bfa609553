"""``tinytwin forecast``: run a forecasting experiment file (sensor graph, ST-GCN, cloudlets)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console


def forecast(
    spec_file: Path = typer.Argument(
        ..., help="forecasting experiment file (YAML, task: forecasting)", metavar="SPEC_FILE"
    ),
    set_: list[str] | None = typer.Option(None, "--set", help="override a key: --set train.epochs=2"),
    out: Path = typer.Option(Path("runs"), "--out", help="folder for the run folder (results.db, csv/, report.html)"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the results (JSON) to this file"),
    emulate: bool = typer.Option(False, "--emulate", help="run the cloudlet setups as one process per cloudlet"),
) -> None:
    """Train every setup of a forecasting file; print MAE / RMSE / WMAPE per horizon and the overheads."""
    from tinytwin.graph.experiment import run_forecast
    from tinytwin.graph.run_folder import record_forecast
    from tinytwin.graph.tables import fleet_table, table5, table6
    from tinytwin.report.export import atomic_write
    from tinytwin.spec.forecast import load_forecast_spec

    console = Console()
    spec = load_forecast_spec(spec_file, set_ or [])

    def done(setup: str, res: dict[str, object]) -> None:
        console.print(f"{setup}: {res['epochs']} epochs in {res['wall_s']:.1f} s", highlight=False)

    result = run_forecast(spec, spec_file.resolve().parent, done, emulate)
    run_dir = record_forecast(result, spec, spec_file.read_text(), out, "emulate" if emulate else "simulate")
    console.print(table5(result), highlight=False, soft_wrap=True)
    console.print(table6(result), highlight=False, soft_wrap=True)
    console.print(fleet_table(result), highlight=False, soft_wrap=True, markup=False)
    if json_out is not None:
        atomic_write(json_out, json.dumps(result, indent=1))
        console.print(f"results: {json_out}")
    console.print(f"run folder: {run_dir}\nreport:     {run_dir / 'report.html'}")
