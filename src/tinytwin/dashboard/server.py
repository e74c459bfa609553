"""The dashboard's web server: one static page, a small JSON API and the event stream.

Starlette + uvicorn, bound to 127.0.0.1 by default: run databases hold experiment specs and
results that are nobody else's business. Plotly's JavaScript is served from the installed
``plotly`` package, so the page works on a machine without internet access.

Bad input never becomes a server error: an unreadable run answers 404/422 with a one-line
``{"error": ...}`` that the page shows, and the problem is logged once.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tinytwin.dashboard import fleet
from tinytwin.dashboard.catalog import RunCatalog
from tinytwin.dashboard.data import RunDataError, json_safe
from tinytwin.dashboard.diff import round_differences
from tinytwin.dashboard.stream import events

log = logging.getLogger("tinytwin.dashboard")
STATIC = Path(__file__).with_name("static")
CHARTS_JS = Path(__file__).resolve().parents[1] / "report" / "charts.js"


def plotly_js() -> Path:
    """The minified plotly.js shipped inside the Python ``plotly`` package."""
    import plotly

    return Path(plotly.__file__).with_name("package_data") / "plotly.min.js"


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(json_safe(data), status_code=status, headers={"Cache-Control": "no-store"})


def _problem(exc: RunDataError) -> JSONResponse:
    status = 404 if str(exc).startswith("no run") else 422
    return _json({"error": str(exc)}, status)


class Dashboard:
    """The app's state (the run catalog, cached layouts) and its request handlers."""

    def __init__(self, root: Path) -> None:
        self.catalog = RunCatalog(root)
        self.stopping = False
        self.server_exiting: Callable[[], bool] = lambda: False  # set by DashboardServer
        self._layouts: dict[str, dict[str, Any]] = {}

    def runs(self, request: Request) -> JSONResponse:
        return _json(self.catalog.listing())

    def _with_run(self, request: Request, body: Callable[[Any], Any]) -> JSONResponse:
        key = request.query_params.get("run", "")
        try:
            db = self.catalog.open(key)
        except RunDataError as exc:
            return _problem(exc)
        try:
            return _json(body(db))
        except RunDataError as exc:
            self.catalog.warn_once(str(exc))
            return _problem(exc)
        finally:
            db.close()

    def run(self, request: Request) -> JSONResponse:
        def body(db: Any) -> dict[str, Any]:
            info = db.info()
            return {**info, "key": request.query_params["run"], "rounds": db.rounds(0), "spread": db.spread(0),
                    "counts": db.fleet_counts(info["num_devices"])}  # fmt: skip

        return self._with_run(request, body)

    def fleet(self, request: Request) -> JSONResponse:
        metric = request.query_params.get("metric", "energy_j")
        if metric not in fleet.METRICS:
            return _json({"error": f"unknown metric {metric!r}; choose one of {', '.join(fleet.METRICS)}"}, 422)
        key = request.query_params.get("run", "")

        def body(db: Any) -> dict[str, Any]:
            devices = db.devices()
            cache = f"{key}\0{db.run_id}\0{len(devices)}"  # a run folder may be replaced by another run
            if cache not in self._layouts:
                self._layouts[cache] = fleet.layout(devices, db.spec_yaml(), db.path.parent, db.info()["seed"])
            label, unit = fleet.METRICS[metric]
            return {
                **self._layouts[cache],
                "device": [d["device"] for d in devices],
                "group": [d["group"] for d in devices],
                "value": fleet.metric_values(metric, devices, db.device_totals()),
                "metric": metric,
                "label": label,
                "unit": unit,
                "categorical": metric in fleet.CATEGORICAL,
            }

        return self._with_run(request, body)

    def device(self, request: Request) -> JSONResponse:
        try:
            device = int(request.query_params.get("device", ""))
        except ValueError:
            return _json({"error": "device must be a device number"}, 422)

        def body(db: Any) -> dict[str, Any]:
            match = [d for d in db.devices() if d["device"] == device]
            if not match:
                raise RunDataError(f"run has no device {device}")
            return {**match[0], "rounds": db.device_rounds(device)}

        return self._with_run(request, body)

    def compare(self, request: Request) -> JSONResponse:
        keys = [k for k in request.query_params.get("runs", "").split(",") if k]
        if len(keys) < 2:
            return _json({"error": "select at least two runs to compare"}, 422)
        runs = []
        for key in keys:
            try:
                db = self.catalog.open(key)
            except RunDataError as exc:
                return _problem(exc)
            try:
                info = db.info()
                label = f"{info['name']} ({info['twin']}, {key})"
                runs.append({"key": key, "label": label, "rounds": db.rounds(0)})
            except RunDataError as exc:
                return _problem(exc)
            finally:
                db.close()
        return _json({"runs": runs, "diff": round_differences(runs)})

    async def stream(self, request: Request) -> Response:
        key = request.query_params.get("run") or None
        try:
            after = int(request.query_params.get("after", "0"))
        except ValueError:
            after = 0
        return StreamingResponse(
            events(self.catalog, key, after, lambda: self.stopping or self.server_exiting()),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


def create_app(root: Path) -> tuple[Starlette, Dashboard]:
    """The Starlette application serving ``root`` and its state object."""
    d = Dashboard(root)
    routes = [
        Route("/", d.index),
        Route("/api/runs", d.runs),
        Route("/api/run", d.run),
        Route("/api/fleet", d.fleet),
        Route("/api/device", d.device),
        Route("/api/compare", d.compare),
        Route("/api/stream", d.stream),
        Route("/plotly.min.js", lambda r: FileResponse(plotly_js(), media_type="text/javascript")),
        Route("/charts.js", lambda r: FileResponse(CHARTS_JS, media_type="text/javascript")),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes), d


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket up front, so port 0 (any free port) can be reported before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class DashboardServer:
    """A uvicorn server on a pre-bound socket, runnable in the foreground or in a thread."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 8765) -> None:
        self.sock = bind(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.app, self.state = create_app(root)
        config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=2, lifespan="off")
        self.server = uvicorn.Server(config)
        # Open event streams end as soon as shutdown starts, so Ctrl-C closes them cleanly
        # instead of uvicorn cancelling them after its grace period.
        self.state.server_exiting = lambda: bool(self.server.should_exit)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"http://{host}:{self.port}/"

    def run(self) -> None:
        """Serve until interrupted (Ctrl-C)."""
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.state.stopping = True
            self.sock.close()

    def start_thread(self) -> None:
        """Serve from a daemon thread (``tinytwin run --dashboard``); :meth:`stop` ends it."""
        self._thread = threading.Thread(target=self.run, name="tinytwin-dashboard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.state.stopping = True
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
