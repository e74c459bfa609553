"""The ``tinytwin`` command line.

Every command turns a :class:`~tinytwin.errors.TinyTwinError` into one line on stderr and
exit status 2; nothing a user can cause ends in a traceback.
"""

from __future__ import annotations

import errno
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tinytwin.cli_dashboard import dashboard as _dashboard
from tinytwin.cli_dashboard import start_dashboard
from tinytwin.cli_forecast import forecast as _forecast
from tinytwin.cli_summary import print_emulate_summary, print_summary
from tinytwin.errors import TinyTwinError
from tinytwin.fast_exit import exit_now_if_safe

if TYPE_CHECKING:
    from tinytwin.spec.schema import ExperimentSpec

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Digital twins for federated and decentralized learning on tiny devices.",
)
console = Console()
err_console = Console(stderr=True)


def _fmt():
    from tinytwin.report import format as fmt  # imported lazily: keeps `--help` fast

    return fmt


@app.command()
def run(
    spec_file: Path = typer.Argument(..., help="experiment file (YAML)", metavar="SPEC_FILE"),
    set_: list[str] | None = typer.Option(None, "--set", help="override a key: --set algorithm.lr=0.05"),
    out: Path = typer.Option(Path("runs"), "--out", help="folder for run folders"),
    resume: Path | None = typer.Option(None, "--resume", help="finish an incomplete run folder"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    no_report: bool = typer.Option(
        False, "--no-report", help="skip CSV/plots/HTML (render later with `tinytwin report`)"
    ),
    device: str | None = typer.Option(
        None, "--device", help="cpu | cuda | auto: where the batched engines compute (sets engine.device)"
    ),
    precision: str | None = typer.Option(
        None, "--precision", help="float32 | bfloat16 | float16: local training's dtype (sets engine.precision)"
    ),
    dashboard: bool = typer.Option(False, "--dashboard", help="serve the live dashboard of --out during the run"),
) -> None:
    """Simulate an experiment: train, print a summary and write a run folder with a report."""
    from tinytwin.spec.load import load_spec

    # The spec is checked before the engine (and torch, ~2 s) is imported: a refusal is instant.
    engine = [f"engine.{k}={v}" for k, v in (("device", device), ("precision", precision)) if v]
    spec, spec_yaml = load_spec(spec_file, [*(set_ or []), *engine])
    from tinytwin.engines.runner import resume_run, start_run

    if dashboard:
        start_dashboard(resume.parent if resume is not None else out)
    base_dir = spec_file.resolve().parent
    with _progress(quiet) as progress:
        task = progress.add_task(f"{spec.name}", total=spec.rounds)

        on_round = _round_progress(progress, task, spec.name)

        def on_prepared(exp: Any) -> None:
            progress.update(task, description=f"{spec.name} ({exp.fleet.num_devices} devices)")

        if resume is not None:
            outcome = resume_run(resume, spec, base_dir, on_round, on_prepared, report=not no_report)
        else:
            outcome = start_run(spec, spec_yaml, out, base_dir, on_round, on_prepared=on_prepared, report=not no_report)
    print_summary(console, outcome.summary, outcome.run_dir)


@app.command()
def emulate(
    spec_file: Path = typer.Argument(..., help="experiment file (YAML)", metavar="SPEC_FILE"),
    set_: list[str] | None = typer.Option(None, "--set", help="override a key: --set algorithm.lr=0.05"),
    out: Path = typer.Option(Path("runs"), "--out", help="folder for run folders"),
    time_scale: float = typer.Option(
        0.01, "--time-scale", help="wall seconds per modelled second of link and compute time (0: no pacing)"
    ),
    netns: bool = typer.Option(
        False, "--netns", help="one network namespace per device, links shaped by tc (root, Linux)"
    ),
    resume: Path | None = typer.Option(
        None, "--resume", help="finish an emulation whose coordinator was killed (its own options)"
    ),
    twin: str | None = typer.Option(
        None,
        "--twin",
        help="firmware: every device runs the C firmware on an emulated Cortex-M board (QEMU); wasm: the C client compiled to WebAssembly under Wasmtime; process: numpy processes; default: each group's `twin`",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    no_report: bool = typer.Option(False, "--no-report", help="skip CSV/plots/HTML"),
    dashboard: bool = typer.Option(False, "--dashboard", help="serve the live dashboard of --out during the run"),
    tls: bool = typer.Option(
        False, "--tls", help="devices reach the coordinator over TLS, checked against a CA made for the run"
    ),
    transport: str | None = typer.Option(
        None, "--transport", help="tcp or mqtt (frames as PUBLISH payloads through a broker); default: the spec's"
    ),
    broker: str | None = typer.Option(
        None, "--broker", help="with mqtt: a running broker, mqtt://host:port (default: start mosquitto for the run)"
    ),
) -> None:
    """Emulate an experiment: one OS process per device, authenticated frames over shaped TCP (docs/emulation.md)."""
    set_ = _transport_sets(set_, transport, broker, tls or netns)
    spec, spec_yaml = _emulate_spec(spec_file, set_, time_scale, netns, twin)
    from tinytwin.emulate.coordinator import EmulateOptions, resume_emulation, start_emulation

    if dashboard:
        start_dashboard(resume.parent if resume is not None else out)
    with _progress(quiet) as progress:
        task = progress.add_task(f"{spec.name} (emulate)", total=spec.rounds)

        on_round = _round_progress(progress, task, f"{spec.name} (emulate)")

        if resume is not None:
            run_dir, summary = resume_emulation(
                resume, spec, spec_file.resolve().parent, on_round, report=not no_report
            )
        else:
            run_dir, summary = start_emulation(
                spec,
                spec_yaml,
                out,
                spec_file.resolve().parent,
                EmulateOptions(
                    time_scale=time_scale, netns=netns, firmware_all=twin == "firmware", tls=tls, broker_url=broker
                ),
                on_round,
                report=not no_report,
            )
    if summary.get("failure"):  # every device failed or every update was lost: not a result
        err_console.print(f"[red]run failed:[/] {summary['failure']} ({run_dir})", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    print_summary(console, summary, run_dir)
    print_emulate_summary(console, summary["emulate"])


def _transport_sets(set_: list[str] | None, transport: str | None, broker: str | None, tls_or_netns: bool) -> list[str]:
    """``--transport`` as a spec override (so the run's spec, and a simulation of it, say it)."""
    if transport not in (None, "tcp", "mqtt"):
        raise TinyTwinError(f"--transport must be 'tcp' or 'mqtt', not {transport!r}")
    if broker is not None and transport != "mqtt":
        raise TinyTwinError("--broker applies to --transport mqtt; add it or drop --broker")
    if transport == "mqtt" and tls_or_netns:
        raise TinyTwinError("--transport mqtt runs without --tls and --netns so far (the broker is on loopback)")
    return [*(set_ or []), *([f"transport.protocol={transport}"] if transport else [])]


def _emulate_spec(
    spec_file: Path, set_: list[str] | None, time_scale: float, netns: bool, twin: str | None
) -> tuple[ExperimentSpec, str]:
    """Check `emulate`'s options, load the spec (with --twin process applied) and check it can be emulated."""
    from tinytwin.emulate.netns import require_netns
    from tinytwin.spec.load import load_spec

    if time_scale < 0:
        raise TinyTwinError("--time-scale must be >= 0")
    if twin not in (None, "process", "firmware", "wasm"):
        raise TinyTwinError(f"--twin must be 'process', 'firmware' or 'wasm', not {twin!r}")
    if netns:
        require_netns()
    spec, spec_yaml = load_spec(spec_file, set_ or [])
    if twin in ("process", "wasm"):  # every group as numpy processes / WebAssembly devices, whatever the spec says
        spec = spec.model_copy(
            update={
                "fleet": spec.fleet.model_copy(
                    update={"groups": [g.model_copy(update={"twin": twin}) for g in spec.fleet.groups]}
                )
            }
        )
    from tinytwin.emulate.coordinator import check_emulatable  # torch: after the spec has passed

    check_emulatable(spec)
    return spec, spec_yaml


def _round_progress(progress: Progress, task: Any, label: str) -> Callable[[int, dict[str, Any]], None]:
    """The per-round callback of `run` and `emulate`: advance the bar, show the latest accuracy."""

    def on_round(r: int, info: dict[str, Any]) -> None:
        acc = info.get("accuracy")
        progress.update(task, completed=r, description=label + (f"  acc {acc:.3f}" if acc is not None else ""))

    return on_round


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rounds"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )


def _medium_text(row: dict) -> str:
    """The medium a group's radio shares, how many devices contend for it and its airtime per round."""
    if row["medium"] in ("dedicated", "none"):
        return "none: each device has a link of its own"
    text = f"{row['medium']} ({row['medium_devices']} devices"
    if row.get("medium_airtime_s") is not None:
        text += f", {_fmt().format_seconds(row['medium_airtime_s'])} airtime / round"
    return text + ")"


@app.command()
def plan(
    spec_file: Path = typer.Argument(..., help="experiment file (YAML)", metavar="SPEC_FILE"),
    set_: list[str] | None = typer.Option(None, "--set", help="override a key"),
) -> None:
    """Per device group, without training: model size, memory vs RAM/flash, time, energy and bytes per round."""
    from tinytwin.data.datasets import is_stand_in
    from tinytwin.engines.experiment import prepare
    from tinytwin.engines.planning import plan_groups
    from tinytwin.spec.load import load_spec

    spec, _ = load_spec(spec_file, set_ or [])
    exp = prepare(spec, spec_file.resolve().parent, check_memory=False, plan_only=True)
    fmt = _fmt()
    console.print(
        f"[bold]{spec.name}[/]: {exp.model.name}, {exp.model.num_params:,} parameters, "
        f"{exp.flops_per_sample:,} training FLOPs per sample, "
        f"{exp.fleet.num_devices} devices"
    )
    if is_stand_in(exp.dataset):
        console.print(f"{spec.dataset.name}: files not found, planned with its published sizes (no pixels needed)")
    for row in plan_groups(exp):
        m = row["memory"]
        table = Table(
            title=f"group {m.group} — {m.profile} on {row['link']} ({row['count']} devices)", show_header=True
        )
        table.add_column("item")
        table.add_column("needed", justify="right")
        table.add_column("available", justify="right")
        for name, value in m.training.as_dict().items():
            table.add_row(f"RAM: {name}", fmt.format_bytes(value), "")
        table.add_row(
            "[bold]RAM total",
            fmt.format_bytes(m.ram_needed),
            fmt.format_bytes(m.ram_available),
            style=None if m.fits_ram else "red",
        )
        for name, value in m.flash_components.items():
            table.add_row(f"flash: {name}", fmt.format_bytes(value), "")
        table.add_row(
            "[bold]flash total",
            fmt.format_bytes(m.flash_needed),
            fmt.format_bytes(m.flash_available),
            style=None if m.fits_flash else "red",
        )
        table.add_row("fits", "yes" if m.fits else "[red]NO", "")
        if exp.models.heterogeneous:
            depth = "" if row["model_depth"] is None else f", {row['model_depth']} hidden layer(s)"
            table.add_row("model rate", f"{row['model_rate']:g}{depth} ({row['model_params']:,} parameters)", "")
        if row["rate_choice"] is not None:
            for rate, considered in row["rate_choice"].considered:
                verdict = "fits" if considered.fits else "[red]does not fit"
                table.add_row(
                    f"auto: rate {rate:g}",
                    f"RAM {fmt.format_bytes(considered.ram_needed)}, flash {fmt.format_bytes(considered.flash_needed)}",
                    verdict,
                )
        table.add_row("compute time / round", fmt.format_seconds(row["compute_s"]), "")
        table.add_row(
            "airtime up / down", f"{fmt.format_seconds(row['up_s'])} / {fmt.format_seconds(row['down_s'])}", ""
        )
        table.add_row(
            "bytes up / down", f"{fmt.format_bytes(row['bytes_up'])} / {fmt.format_bytes(row['bytes_down'])}", ""
        )
        table.add_row("energy / round (no idle)", fmt.format_energy(row["energy_j"]), "")
        if row["battery_j"] is not None:
            rounds = int(row["battery_j"] // row["energy_j"]) if row["energy_j"] > 0 else None
            table.add_row(
                "battery",
                f"{fmt.format_energy(row['battery_j'])}: at most {rounds} rounds on a full charge "
                "(no idle, no harvest)",
                "",
            )
        table.add_row("radio medium", _medium_text(row), "")
        console.print(table)
    if not all(p.fits for p in exp.memory):
        raise typer.Exit(1)


@app.command()
def devices(
    name: str | None = typer.Argument(
        None, help="show every figure of this device (or link, with --links) with its source"
    ),
    profiles_file: Path | None = typer.Option(None, "--profiles", help="extra device profiles (YAML)"),
    links: bool = typer.Option(False, "--links", help="list the link models instead"),
) -> None:
    """The device catalog (or link catalog): one row per entry; `tinytwin devices NAME` cites every figure."""
    from tinytwin.cli_tables import device_overview, link_overview

    if links:
        from tinytwin.net.links import load_link_catalog

        entries: dict[str, Any] = load_link_catalog()
        overview = link_overview(entries.values())
    else:
        from tinytwin.fleet.catalog import load_device_catalog

        entries = load_device_catalog([profiles_file] if profiles_file else [])
        overview = device_overview(entries.values())
    if name is None:
        console.print(overview)
        kind = "link" if links else "device"
        console.print(
            f"every figure with its source: tinytwin devices {'--links ' if links else ''}{kind.upper()}_NAME"
        )
        return
    if name not in entries:
        raise TinyTwinError(f"unknown {'link' if links else 'device'} {name!r}; known: {', '.join(entries)}")
    _print_sources(entries[name])


def _print_sources(entry: Any) -> None:
    """One table per catalog entry: each figure, its value and where it comes from."""
    cpu = getattr(entry, "cpu", None)
    title = f"{entry.name}: {entry.description}" + (f" CPU: {cpu}." if cpu else "")
    table = Table(title=title, show_header=True, title_justify="left")
    table.add_column("figure", style="bold", no_wrap=True)
    table.add_column("value", no_wrap=True)
    table.add_column("source")
    data = entry.model_dump()
    for key, value in data.items():
        if key in ("name", "description", "sources", "cpu"):
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                table.add_row(
                    f"{key}.{sub}",
                    f"{v:g}" if isinstance(v, float) else str(v),
                    entry.sources.get(f"{key}.{sub}", entry.sources.get(key, "")),
                )
        else:
            shown = (
                ", ".join(value)
                if isinstance(value, (list, tuple))
                else (f"{value:g}" if isinstance(value, float) else str(value))
            )
            table.add_row(key, shown, entry.sources.get(key, ""))
    console.print(table)


@app.command()
def report(run_dirs: list[Path] = typer.Argument(..., help="one run folder", metavar="RUN_DIR")) -> None:
    """(Re)write a run folder's CSV files, plots and report.html."""
    from tinytwin.graph.report import is_forecast, write_forecast_report
    from tinytwin.report import write_report
    from tinytwin.report.dfl import is_dfl_run, write_dfl_extras
    from tinytwin.report.export import open_run

    if len(run_dirs) != 1:  # typically a shell glob such as runs/quickstart-*/ that matched several folders
        shown = ", ".join(str(d) for d in run_dirs[:3]) + (", ..." if len(run_dirs) > 3 else "")
        raise TinyTwinError(
            f"report takes one run folder, got {len(run_dirs)} ({shown}); pass one, e.g. tinytwin report {run_dirs[-1]}"
            " (use `tinytwin compare` to overlay several)"
        )
    run_dir = run_dirs[0]
    store, info = open_run(run_dir)
    try:
        dfl = is_dfl_run(store)
    finally:
        store.close()
    if is_forecast(info.summary):
        path = write_forecast_report(run_dir)
    else:
        path = write_dfl_extras(run_dir) if dfl else write_report(run_dir)
    console.print(f"report: {path}")


@app.command()
def compare(
    run_dirs: list[Path] | None = typer.Argument(None, help="two or more run folders"),
    out: Path | None = typer.Option(
        None, "--out", help="folder for the comparison [default: a new runs/compare, runs/compare-2, ...]"
    ),
    force: bool = typer.Option(False, "--force", help="replace the comparison already in --out"),
    group: list[str] | None = typer.Option(None, "--group", help="LABEL=DIR,DIR,... (repeat): 95 % CIs per group"),
) -> None:
    """Overlay several runs: accuracy against round and simulated time, cumulative bytes and energy.

    Never overwrites by surprise: without --out each comparison gets a new folder; an --out that
    already holds a comparison is refused unless --force is given.
    """
    from tinytwin.report import compare_runs
    from tinytwin.report.compare_out import comparison_folder

    groups: dict[str, list[Path]] = {}
    if group:  # groups of runs: means with CIs and tests between groups (tinytwin/sweep/groups.py)
        from tinytwin.sweep.groups import compare_groups, parse_groups

        groups = parse_groups(group)
        run_dirs = [*(run_dirs or []), *(d for ds in groups.values() for d in ds)]
    from tinytwin.graph.report import compare_forecasts, forecast_runs

    if forecast_runs(run_dirs or []):  # forecasting runs: metrics per setup and horizon
        path = compare_forecasts(run_dirs or [], comparison_folder(out, force))
    else:
        path = compare_runs(run_dirs or [], comparison_folder(out, force))  # checks every folder before writing
    console.print(f"comparison: {path}")
    if groups:
        console.print(f"groups:     {compare_groups(groups, path.parent)}")


from tinytwin.cli_energy import register as _register_energy  # noqa: E402  (energy integrate, energy fit)
from tinytwin.cli_sweep import register as _register_sweep  # noqa: E402  (sweep, sweep-report)

_register_sweep(app)
from tinytwin.cli_search import register as _register_search  # noqa: E402  (search)

_register_search(app)
_register_energy(app)


def _usage_exception_types() -> tuple[type[BaseException], ...]:
    """The exception classes the CLI framework raises for a bad command line.

    typer >= 0.29 vendors click and raises :class:`typer.TyperException` subclasses; older
    typer releases raise ``click.ClickException``. click may not be installed at all, so it
    is looked up only when present, never imported unconditionally.
    """
    types: list[type[BaseException]] = []
    if isinstance(getattr(typer, "TyperException", None), type):
        types.append(typer.TyperException)
    try:
        import click  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        pass
    else:
        types.append(click.exceptions.ClickException)
    return tuple(types)


def _usage_line(exc: BaseException) -> str:
    """One line for a usage error: what is wrong, and the ``--help`` that shows the right usage."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError":  # bare `tinytwin`: name the commands, not the whole help
        return f"missing command; choose one of: {', '.join(_command_names())} (tinytwin --help shows what each does)"
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    message = " ".join(message.split())  # click wraps some messages over several lines
    command = getattr(ctx, "command_path", None) or "tinytwin"
    return f"{message} (see '{command} --help')"


def _command_names() -> list[str]:
    return [c.name or (c.callback.__name__ if c.callback else "?") for c in app.registered_commands]


app.command(name="dashboard")(_dashboard)
app.command(name="forecast")(_forecast)


def main() -> None:
    """Entry point: run the app, turning user errors and usage errors into one line and exit status 2."""
    usage_errors = _usage_exception_types()
    try:
        code = app(standalone_mode=False, prog_name="tinytwin")
        if isinstance(code, int) and code:
            sys.exit(code)
    except TinyTwinError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("interrupted; the run folder keeps every finished round (resume with --resume)")
        sys.exit(130)
    except usage_errors as exc:
        err_console.print(f"[red]error:[/] {escape(_usage_line(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as exc:  # a full or read-only disk met outside the places that name their folder
        if exc.errno not in _DISK_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        err_console.print(
            f"[red]error:[/] {escape(where + (exc.strerror or str(exc)))}", highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except sqlite3.OperationalError as exc:
        if "full" not in str(exc) and "readonly" not in str(exc):
            raise
        err_console.print(
            f"[red]error:[/] {escape(str(exc))}; free space or make the run folder writable, then --resume it",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def entry() -> None:
    """Console script: :func:`main`, then, on success, a fast exit (``tinytwin/fast_exit.py``)."""
    main()
    exit_now_if_safe()


if __name__ == "__main__":
    entry()
