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
    out: Path | None = typer.Option(None, "--out", help="write the results (JSON) to this file"),
    emulate: bool = typer.Option(False, "--emulate", help="run the cloudlet setups as one process per cloudlet"),
) -> None:
    """Train every setup of a forecasting file; print MAE / RMSE / WMAPE per horizon and the overheads."""
    from tinytwin.graph.experiment import run_forecast
    from tinytwin.graph.tables import table5, table6
    from tinytwin.spec.forecast import load_forecast_spec

    console = Console()
    spec = load_forecast_spec(spec_file, set_ or [])

    def done(setup: str, res: dict[str, object]) -> None:
        console.print(f"{setup}: {res['epochs']} epochs in {res['wall_s']:.1f} s", highlight=False)

    result = run_forecast(spec, spec_file.resolve().parent, done, emulate)
    console.print(table5(result), highlight=False, soft_wrap=True)
    console.print(table6(result), highlight=False, soft_wrap=True)
    if out is not None:
        out.write_text(json.dumps(result, indent=1))
        console.print(f"results: {out}")
