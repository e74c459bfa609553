"""The forecasting task: METR-LA week windows, a train-fitted z-score scaler, per-horizon metrics.

Seed 004 §3 / reference §6: 5-minute speeds, history 12 steps (60 min), horizons 3, 6, 12 steps
(15 / 30 / 60 min), a chronological 70/15/15 split of the time axis, and a z-score scaler
(per sensor, as scikit-learn's ``StandardScaler`` on a steps × sensors array) fitted on the
training part only, so no statistic of validation or test data leaks into training. The file's
speeds have no zeros or NaNs (imputed upstream), so the metrics mask nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinytwin.errors import DataError, SpecError

HISTORY = 12
HORIZONS = (3, 6, 12)
SPLIT = (0.70, 0.15, 0.15)
FILE_NAMES = {"metr-la-week": "metr-la-week.npz", "pems-bay-graph": "pems-bay-graph.npz"}


@dataclass(frozen=True)
class SensorGraph:
    """A sensor network: weighted directed adjacency (diagonal 1) and WGS84 coordinates."""

    adj: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    sensor_ids: np.ndarray

    @property
    def n_nodes(self) -> int:
        return int(self.adj.shape[0])


@dataclass(frozen=True)
class Windows:
    """Scaled input windows and raw targets of one split part.

    ``x``: (samples, history, nodes) z-scored speeds; ``y``: (samples, horizons, nodes) raw
    speeds at each horizon (metrics are computed in mph, after un-scaling the predictions).
    """

    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class ForecastData:
    """Train / validation / test windows of one dataset plus its graph and scaler."""

    graph: SensorGraph
    train: Windows
    val: Windows
    test: Windows
    mean: np.ndarray  # (nodes,) training-part mean per sensor
    std: np.ndarray  # (nodes,) training-part standard deviation per sensor
    history: int
    horizons: tuple[int, ...]
    speed: np.ndarray | None = None  # (steps, nodes) raw series: what each cloudlet's sensors hold
    bounds: tuple[int, int] = (0, 0)  # ends of the training and validation parts (time steps)

    def unscale(self, z: np.ndarray) -> np.ndarray:
        """Speeds (mph) from z-scores; the node axis is last."""
        return z * self.std + self.mean


def data_file(name: str, data_dir: str | Path | None = None) -> Path:
    """The ``.npz`` of dataset ``name``: in ``data_dir``, else ``$TINYTWIN_SHARED_DATA`` / ``$TINYTWIN_DATA``."""
    if name not in FILE_NAMES:
        raise SpecError("dataset.name", f"'{name}' is not a graph dataset; use one of {sorted(FILE_NAMES)}")
    folder = data_dir or os.environ.get("TINYTWIN_SHARED_DATA") or os.environ.get("TINYTWIN_DATA")
    if not folder:
        raise DataError(f"dataset '{name}': no data_dir given and $TINYTWIN_DATA is not set; set one")
    path = Path(folder).expanduser() / FILE_NAMES[name]
    if not path.is_file():
        raise DataError(f"dataset '{name}': {path} not found; set data_dir to the folder holding it")
    return path


def load_graph(name: str, data_dir: str | Path | None = None) -> SensorGraph:
    """The sensor graph of ``metr-la-week`` or ``pems-bay-graph``."""
    with np.load(data_file(name, data_dir), allow_pickle=False) as d:
        return SensorGraph(d["adj"].astype(np.float64), d["lat"], d["lon"], d["sensor_ids"])


def split_bounds(n_steps: int, split: tuple[float, float, float] = SPLIT) -> tuple[int, int]:
    """End of the training part and end of the validation part (time-step indices)."""
    n_train = int(round(n_steps * split[0]))
    n_val = int(round(n_steps * split[1]))
    return n_train, n_train + n_val


def make_windows(series: np.ndarray, scaled: np.ndarray, history: int, horizons: tuple[int, ...]) -> Windows:
    """Every window of ``history`` steps with a target ``h`` steps after its last step, per horizon."""
    n = series.shape[0] - history - max(horizons) + 1
    if n <= 0:
        raise SpecError(
            "forecast.history", f"a split part of {series.shape[0]} steps is too short for history {history}"
        )
    idx = np.arange(n)[:, None]
    x = scaled[idx + np.arange(history)[None, :]]
    y = np.stack([series[np.arange(n) + history + h - 1] for h in horizons], axis=1)
    return Windows(x.astype(np.float32), y.astype(np.float32))


def load_forecast(
    name: str = "metr-la-week",
    data_dir: str | Path | None = None,
    history: int = HISTORY,
    horizons: tuple[int, ...] = HORIZONS,
) -> ForecastData:
    """Windows of the METR-LA week, split chronologically 70/15/15, scaled with train statistics."""
    if name != "metr-la-week":
        raise SpecError("dataset.name", f"forecasting dataset '{name}' has no speeds; use metr-la-week")
    with np.load(data_file(name, data_dir), allow_pickle=False) as d:
        speed = d["speed"].astype(np.float64)
        graph = SensorGraph(d["adj"].astype(np.float64), d["lat"], d["lon"], d["sensor_ids"])
    a, b = split_bounds(speed.shape[0])
    mean, std = speed[:a].mean(axis=0), speed[:a].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    scaled = (speed - mean) / std
    parts = [make_windows(speed[s], scaled[s], history, horizons) for s in (slice(0, a), slice(a, b), slice(b, None))]
    return ForecastData(graph, parts[0], parts[1], parts[2], mean, std, history, tuple(horizons), speed, (a, b))


def forecast_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Seed 004 §3.4.2: MAE = mean|e|, RMSE = sqrt(mean e²), WMAPE = Σ|e| / Σ|y| (in %)."""
    err = np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "wmape": float(100.0 * np.sum(np.abs(err)) / np.sum(np.abs(y_true))),
    }


def metrics_per_horizon(
    y_true: np.ndarray, y_pred: np.ndarray, horizons: tuple[int, ...], step_minutes: int = 5
) -> dict[str, dict[str, float]]:
    """``{"15min": {mae, rmse, wmape}, ...}`` from (samples, horizons, nodes) arrays."""
    return {f"{h * step_minutes}min": forecast_metrics(y_true[:, i], y_pred[:, i]) for i, h in enumerate(horizons)}


def persistence_forecast(data: ForecastData, part: Windows) -> np.ndarray:
    """The last-value baseline: every horizon predicts the window's last observed speed."""
    last = data.unscale(part.x[:, -1, :])
    return np.repeat(last[:, None, :], len(data.horizons), axis=1)
