"""The ``tinytwin dashboard`` command; ``tinytwin.cli`` registers it on its typer app.

It takes no import from ``tinytwin.cli`` (that would be circular when the CLI runs as
``python -m tinytwin.cli``). A module of its own so the dashboard's dependencies (starlette, uvicorn, plotly; the
``dashboard`` extra) are imported only when the command runs, and a missing extra is one
clear line instead of an ImportError at ``tinytwin --help``.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from pathlib import Path

import typer
from rich.console import Console

from tinytwin.errors import TinyTwinError

err_console = Console(stderr=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dashboard(
    runs_dir: Path = typer.Argument(Path("runs"), help="folder of run folders (or one run folder)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (default: this machine only)"),
    port: int = typer.Option(8765, "--port", help="TCP port (0: any free port)"),
) -> None:
    """Serve a live dashboard of the runs in RUNS_DIR: progress, charts, the fleet, twins side by side."""
    try:
        from tinytwin.dashboard.server import DashboardServer
    except ImportError as exc:
        raise TinyTwinError(
            f"the dashboard needs the 'dashboard' extra ({exc.name} is missing): pip install 'tinytwin[dashboard]'"
        ) from None
    if not 0 <= port <= 65535:
        raise TinyTwinError(f"--port must be 0..65535, not {port}")
    if not _is_loopback(host):
        err_console.print(
            f"[yellow]warning:[/] listening on {host}: anyone who can reach this address can read every run "
            f"in {runs_dir} (specs and results); the dashboard has no login",
            highlight=False,
        )
    logging.basicConfig(level=logging.WARNING, format="dashboard: %(message)s", stream=sys.stderr)
    try:
        server = DashboardServer(runs_dir, host, port)
    except OSError as exc:
        raise TinyTwinError(str(exc)) from None
    print(f"dashboard: {server.url} (runs in {server.state.catalog.root}; Ctrl-C stops it)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl-C it handled; stopping is what the user asked for
    print("dashboard stopped", flush=True)


def start_dashboard(runs_dir: Path, port: int = 8765) -> str:
    """Serve ``runs_dir`` from a daemon thread for ``tinytwin run --dashboard``; returns the URL.

    The thread lives as long as the run's process: the page follows the run, and the server
    goes when the run ends (``tinytwin dashboard`` keeps serving afterwards). A busy port
    falls back to any free one rather than failing the run.
    """
    try:
        from tinytwin.dashboard.server import DashboardServer
    except ImportError as exc:
        raise TinyTwinError(
            f"--dashboard needs the 'dashboard' extra ({exc.name} is missing): pip install 'tinytwin[dashboard]'"
        ) from None
    runs_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, format="dashboard: %(message)s", stream=sys.stderr)
    try:
        server = DashboardServer(runs_dir, "127.0.0.1", port)
    except OSError:
        server = DashboardServer(runs_dir, "127.0.0.1", 0)
    server.start_thread()
    print(f"dashboard: {server.url} (serves {server.state.catalog.root} while this run goes)", flush=True)
    return server.url
