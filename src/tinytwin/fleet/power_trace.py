"""Measured power traces: read, integrate, and fit a device profile's idle and active power.

A trace is what a metering socket or a shunt logger writes: one row per sample with a
timestamp and either the power in watts or the current in milliamps at a known supply
voltage. Seed 004 §4.1 used a WLAN socket that reports every 30 s and integrated
E = P·Δt with the power held constant over each interval; :meth:`PowerTrace.energy_j` does
the same (zero-order hold: sample i holds from its timestamp to the next one, the last
sample for the trace's median spacing, so N samples of a 30 s socket cover N × 30 s).

Calibration (:func:`fit_power`): the trace is cut into windows (a run's rounds, or phases a
user lists), each with the seconds its device spent computing. A window's measured energy
is modelled as ``P_idle·(T − c) + P_active·c`` (transfers count as idle time: on the seed's
boards they take well under 1 % of a round), and the two powers come from least squares
over the windows, with their standard errors and the residual RMS of the window mean power.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from tinytwin.errors import TinyTwinError


@dataclass(frozen=True)
class PowerTrace:
    """Samples of one device's power: ``t_s`` strictly increasing seconds, ``watts`` per sample."""

    t_s: np.ndarray
    watts: np.ndarray

    @property
    def period_s(self) -> float:
        """The median spacing of the samples (the last sample holds this long)."""
        return float(np.median(np.diff(self.t_s))) if len(self.t_s) > 1 else 0.0

    @property
    def end_s(self) -> float:
        return float(self.t_s[-1]) + self.period_s

    def energy_j(self, start_s: float | None = None, end_s: float | None = None) -> float:
        """Joules between ``start_s`` and ``end_s`` (default: the whole trace), power held per sample."""
        edges = np.append(self.t_s, self.end_s)
        lo = edges[0] if start_s is None else start_s
        hi = edges[-1] if end_s is None else end_s
        covered = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)
        return float(np.sum(self.watts * covered))

    def mean_power_w(self, start_s: float, end_s: float) -> float:
        return self.energy_j(start_s, end_s) / (end_s - start_s)


def _parse_time(text: str, where: str) -> float:
    """Seconds from a number (seconds) or an ISO 8601 date-time (seconds since the epoch)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise TinyTwinError(f"{where}: timestamp {text!r} is neither seconds nor an ISO 8601 date-time") from None


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TinyTwinError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise TinyTwinError(f"{where}: {text!r} is not a finite number")
    return value


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise TinyTwinError(f"{path}: trace file not found")
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TinyTwinError(f"{path}: cannot read the CSV ({exc})") from None
    return header, [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in rows]


def read_trace(path: Path, voltage_v: float | None = None) -> PowerTrace:
    """The trace in CSV ``path``: columns ``timestamp`` and ``watts``, or ``milliamps`` with a voltage.

    The voltage is ``voltage_v`` or a ``volts`` column (per row). Timestamps are seconds or
    ISO 8601 date-times and must increase strictly; power must not be negative.
    """
    path = Path(path)
    header, rows = _read_rows(path)
    if "timestamp" not in header:
        raise TinyTwinError(f"{path}: no 'timestamp' column (header: {', '.join(header) or 'empty'})")
    if "watts" not in header and "milliamps" not in header:
        raise TinyTwinError(f"{path}: needs a 'watts' column, or 'milliamps' with --voltage or a 'volts' column")
    if "watts" not in header and voltage_v is None and "volts" not in header:
        raise TinyTwinError(f"{path}: 'milliamps' needs the supply voltage: pass --voltage V or add a 'volts' column")
    if len(rows) < 2:
        raise TinyTwinError(f"{path}: a trace needs at least 2 samples, found {len(rows)}")
    t = np.empty(len(rows))
    w = np.empty(len(rows))
    for i, row in enumerate(rows):
        where = f"{path}, data row {i + 1}"
        t[i] = _parse_time(row.get("timestamp", ""), where)
        if "watts" in header:
            w[i] = _number(row.get("watts", ""), where)
        else:
            volts = voltage_v if voltage_v is not None else _number(row.get("volts", ""), where)
            w[i] = _number(row.get("milliamps", ""), where) / 1000.0 * volts
        if w[i] < 0:
            raise TinyTwinError(f"{where}: negative power {w[i]} W")
    bad = np.flatnonzero(np.diff(t) <= 0)
    if bad.size:
        i = int(bad[0])
        raise TinyTwinError(
            f"{path}: timestamps must increase; data row {i + 2} ({t[i + 1]:g}) is not after row {i + 1} ({t[i]:g})"
        )
    return PowerTrace(t, w)


@dataclass(frozen=True)
class Window:
    """A stretch of the trace's time axis and the seconds of it the device spent computing."""

    start_s: float
    end_s: float
    active_s: float

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class PowerFit:
    """Least-squares idle and active power with standard errors; ``rms_w``: residual of window means."""

    idle_w: float
    active_w: float
    idle_se_w: float
    active_se_w: float
    rms_w: float
    windows: int
    energy_j: float
    seconds: float


def fit_power(trace: PowerTrace, windows: list[Window]) -> PowerFit:
    """Fit ``E_k = P_idle·(T_k − c_k) + P_active·c_k`` over the windows (see the module docstring).

    Each window is weighted by 1/T_k, so the residuals are in watts (window mean power) and
    long and short windows count alike per second. Needs windows with and without compute.
    """
    if not windows:
        raise TinyTwinError("no windows to fit: the phases or rounds do not overlap the trace")
    for wdw in windows:
        if wdw.length_s <= 0 or not 0 <= wdw.active_s <= wdw.length_s + 1e-9:
            raise TinyTwinError(
                f"window {wdw.start_s:g}-{wdw.end_s:g} s: needs start < end and 0 <= active seconds <= its length"
            )
        if wdw.start_s < trace.t_s[0] - 1e-9 or wdw.end_s > trace.end_s + 1e-9:
            raise TinyTwinError(
                f"window {wdw.start_s:g}-{wdw.end_s:g} s lies outside the trace "
                f"({trace.t_s[0]:g}-{trace.end_s:g} s); shift it with --offset"
            )
    length = np.array([w.length_s for w in windows])
    active = np.array([w.active_s for w in windows])
    energy = np.array([trace.energy_j(w.start_s, w.end_s) for w in windows])
    x = np.stack([(length - active) / length, active / length], axis=1)
    y = energy / length
    if np.linalg.matrix_rank(x) < 2:
        raise TinyTwinError(
            "cannot separate idle from active power: every window has the same share of compute "
            "(give phases with and without training)"
        )
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    dof = len(y) - 2
    sigma2 = float(resid @ resid) / dof if dof > 0 else 0.0
    cov = sigma2 * np.linalg.inv(x.T @ x)
    return PowerFit(
        idle_w=float(coef[0]),
        active_w=float(coef[1]),
        idle_se_w=math.sqrt(max(cov[0, 0], 0.0)),
        active_se_w=math.sqrt(max(cov[1, 1], 0.0)),
        rms_w=math.sqrt(float(np.mean(resid**2))),
        windows=len(windows),
        energy_j=float(energy.sum()),
        seconds=float(length.sum()),
    )


def read_phases(path: Path, offset_s: float = 0.0) -> list[Window]:
    """Windows from a CSV of ``start_s,end_s,state`` rows (state ``active`` or ``idle``), shifted by ``offset_s``."""
    path = Path(path)
    if not path.is_file():
        raise TinyTwinError(f"{path}: phases file not found")
    header, rows = _read_rows(path)
    missing = [c for c in ("start_s", "end_s", "state") if c not in header]
    if missing:
        raise TinyTwinError(f"{path}: missing column(s) {', '.join(missing)}; expected start_s,end_s,state")
    out = []
    for i, row in enumerate(rows):
        where = f"{path}, data row {i + 1}"
        start, end = _number(row["start_s"], where), _number(row["end_s"], where)
        state = row["state"].lower()
        if state not in ("active", "idle"):
            raise TinyTwinError(f"{where}: state {row['state']!r} must be 'active' or 'idle'")
        if end <= start:
            raise TinyTwinError(f"{where}: end_s {end:g} is not after start_s {start:g}")
        out.append(Window(start + offset_s, end + offset_s, end - start if state == "active" else 0.0))
    return out


def round_windows(
    rounds: list[dict[str, Any]], device_rounds: list[dict[str, Any]], device: int, offset_s: float = 0.0
) -> list[Window]:
    """One window per round of a run (the results database's rows), for device ``device``.

    Round r spans ``[sim_time_s − duration_s, sim_time_s]`` on the cost model's clock, plus
    ``offset_s`` (the trace time at which the run's clock reads 0); the device's active
    seconds are its ``compute_s`` that round (0 in rounds it sat out).
    """
    compute = {int(r["round"]): float(r["compute_s"]) for r in device_rounds if r["device"] == device}
    out = []
    for row in rounds:
        end = float(row["sim_time_s"]) + offset_s
        start = end - float(row["duration_s"])
        if end > start:
            out.append(Window(start, end, min(compute.get(int(row["round"]), 0.0), end - start)))
    return out
