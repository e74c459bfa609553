"""The ``energy`` commands: integrate a measured power trace, fit a device profile from it.

Registered on the ``tinytwin`` app by :func:`register` (kept out of cli.py so the trace
machinery is one module away from the run commands). Errors follow the CLI's rule: a
:class:`~tinytwin.errors.TinyTwinError` becomes one line and exit status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from tinytwin.errors import TinyTwinError

if TYPE_CHECKING:
    from tinytwin.fleet.power_trace import PowerFit, Window

console = Console()
energy_app = typer.Typer(no_args_is_help=True, help="Measured energy: power traces and calibrated profiles.")

_VOLTAGE = typer.Option(None, "--voltage", help="supply voltage for a trace in milliamps (or a 'volts' column)")


@energy_app.command("integrate")
def integrate(
    trace: Path = typer.Argument(..., help="power trace CSV: timestamp, watts (or milliamps)", metavar="TRACE"),
    voltage: float | None = _VOLTAGE,
) -> None:
    """Energy of a trace, E = Σ P·Δt with each sample's power held until the next one."""
    from tinytwin.fleet.power_trace import read_trace

    tr = read_trace(trace, voltage)
    energy = tr.energy_j()
    seconds = tr.end_s - float(tr.t_s[0])
    console.print(
        f"{trace}: {len(tr.t_s)} samples over {seconds:.0f} s (every {tr.period_s:g} s): "
        f"{energy:.1f} J = {energy / 3600:.3f} Wh, mean {energy / seconds:.3f} W",
        soft_wrap=True,
    )


def _run_windows(run_dir: Path, device: int, offset_s: float) -> list[Window]:
    from tinytwin.fleet.power_trace import round_windows
    from tinytwin.store.reader import open_checked

    store, info = open_checked(run_dir)
    try:
        devices = [int(d["device"]) for d in store.devices(info.run_id)]
        if device not in devices:
            raise TinyTwinError(f"--device {device}: the run has devices {min(devices)}..{max(devices)}")
        return round_windows(store.rounds(info.run_id), store.device_rounds(info.run_id), device, offset_s)
    finally:
        store.close()


def _snippet(name: str, base: str | None, fit: PowerFit, trace: Path) -> str:
    """A catalog profile (docs/devices.md) carrying the fitted powers, each cited to the fit."""
    cite = f"measured: tinytwin energy fit of {trace.name} ({fit.windows} windows, residual {fit.rms_w:.3g} W)"
    lines = [f"{name}:"]
    if base:
        lines.append(f"  base: {base}")
    lines += [
        f"  power: {{active_w: {fit.active_w:.4g}, idle_w: {fit.idle_w:.4g}}}",
        "  sources:",
        f'    power.active_w: "{cite}, ± {fit.active_se_w:.2g} W"',
        f'    power.idle_w: "{cite}, ± {fit.idle_se_w:.2g} W"',
    ]
    return "\n".join(lines) + "\n"


@energy_app.command("fit")
def fit(
    trace: Path = typer.Argument(..., help="power trace CSV: timestamp, watts (or milliamps)", metavar="TRACE"),
    run: Path | None = typer.Option(None, "--run", help="run folder whose rounds the trace covers"),
    phases: Path | None = typer.Option(None, "--phases", help="CSV of start_s,end_s,state (active | idle)"),
    device: int = typer.Option(0, "--device", help="with --run: the device the trace measured"),
    offset: float = typer.Option(0.0, "--offset", help="trace time (s) at which the run's clock / phases read 0"),
    voltage: float | None = _VOLTAGE,
    profile_out: Path | None = typer.Option(None, "--profile-out", help="write a catalog profile YAML snippet"),
    name: str = typer.Option("calibrated", "--name", help="profile name in the snippet"),
    base: str | None = typer.Option(None, "--base", help="catalog profile the snippet starts from (base:)"),
) -> None:
    """Fit a device's idle and active power (least squares) from a trace and its rounds or phases."""
    from tinytwin.fleet.power_trace import fit_power, read_phases, read_trace

    if (run is None) == (phases is None):
        raise TinyTwinError("give exactly one of --run RUN_FOLDER or --phases PHASES.csv")
    tr = read_trace(trace, voltage)
    windows = _run_windows(run, device, offset) if run is not None else read_phases(Path(str(phases)), offset)
    result = fit_power(tr, windows)
    console.print(
        f"{trace}: {result.windows} windows, {result.seconds:.0f} s, {result.energy_j:.1f} J "
        f"({result.energy_j / 3600:.3f} Wh)\n"
        f"  idle_w   = {result.idle_w:.4f} ± {result.idle_se_w:.4f} W\n"
        f"  active_w = {result.active_w:.4f} ± {result.active_se_w:.4f} W\n"
        f"  residual RMS of window mean power: {result.rms_w:.4f} W"
    )
    if profile_out is not None:
        try:
            profile_out.write_text(_snippet(name, base, result, trace))
        except OSError as exc:
            raise TinyTwinError(f"{profile_out}: cannot write the profile snippet ({exc.strerror})") from None
        console.print(f"profile snippet written to {profile_out}")


@energy_app.command("listen")
def listen(
    broker: str = typer.Option(..., "--broker", help="the MQTT broker the plug publishes to, mqtt://host:port"),
    topic: str = typer.Option(..., "--topic", help="the plug's readings topic, e.g. tele/plug1/SENSOR"),
    out: Path = typer.Option(..., "--out", help="trace CSV to write (timestamp, watts)"),
    field: str = typer.Option("ENERGY.Power", "--field", help="JSON path of the watts in each message"),
    samples: int | None = typer.Option(None, "--samples", min=1, help="stop after this many readings"),
    seconds: float | None = typer.Option(None, "--seconds", min=0.1, help="stop after this long"),
) -> None:
    """Record a smart plug's live power readings from MQTT as a trace (while a run goes on)."""
    from tinytwin.emulate.broker import parse_broker_url
    from tinytwin.fleet.power_listen import listen as record

    if samples is None and seconds is None:
        raise TinyTwinError("give --samples N or --seconds S (when to stop recording)")
    host, port = parse_broker_url(broker)
    n = record(host, port, topic, out, field, samples, seconds, lambda: print(f"listening on {topic}", flush=True))
    console.print(f"{out}: {n} readings from {topic}")


def register(app: typer.Typer) -> None:
    """Add the ``energy`` command group to ``app``."""
    app.add_typer(energy_app, name="energy")
