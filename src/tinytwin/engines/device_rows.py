"""One centralized round's ``device_rounds`` rows, built as columns with array operations.

A row per online device: its status, the cost model's times, bytes, lost packets and energy,
its training loss and (``evaluation.per_device``) its accuracy. Devices that were online but
not selected are ``idle`` (or ``link_down`` when their link was down) with zero costs except
the idle energy. No Python loop over devices: at 10^4 devices per-device dicts were about a
sixth of a round (:class:`tinytwin.store.db.DeviceColumns`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tinytwin.engines.experiment import Experiment
from tinytwin.engines.round_costs import RoundCosts
from tinytwin.store.db import DeviceColumns


def _nullable(values: np.ndarray) -> list[object]:
    """``values`` as Python floats, NaN as ``None`` (SQL NULL)."""
    out = values.astype(object)
    out[np.isnan(values)] = None
    return out.tolist()


def device_columns(
    exp: Experiment,
    r: int,
    online_ids: np.ndarray,
    selected: np.ndarray,
    costs: RoundCosts,
    train_losses: np.ndarray,
    per_device_acc: Mapping[int, float],
) -> DeviceColumns:
    """The rows of ``online_ids`` in round ``r``.

    ``train_losses`` is aligned with ``selected`` (NaN: no loss); ``per_device_acc`` maps a
    device to its accuracy."""
    reachable, num_samples = exp.timeline.reachable(r), exp.num_samples
    n_dev = len(reachable)
    pos = np.full(n_dev, -1, dtype=np.int64)
    pos[selected] = np.arange(selected.size)
    at = pos[online_ids]  # each online device's position in `selected`, -1 when not selected
    chosen = at >= 0
    picks = at[chosen]

    def per_online(selected_values: np.ndarray, fill: float) -> np.ndarray:
        out = np.full(online_ids.size, fill, dtype=np.result_type(selected_values.dtype, type(fill)))
        out[chosen] = selected_values[picks]
        return out

    status = np.where(reachable[online_ids], "idle", "link_down").astype(object)
    status[chosen] = costs.statuses[picks]
    lost = costs.down.lost_packets + costs.up.lost_packets
    accuracy = np.full(n_dev, np.nan)
    if per_device_acc:
        accuracy[np.fromiter(per_device_acc.keys(), np.int64)] = np.fromiter(per_device_acc.values(), np.float64)
    return DeviceColumns(
        {
            "round": [r] * online_ids.size,
            "device": online_ids.tolist(),
            "status": status.tolist(),
            "num_samples": num_samples[online_ids].astype(np.int64).tolist(),
            "compute_s": per_online(costs.cpu_s.astype(np.float64), 0.0).tolist(),
            "up_s": per_online(costs.up_s.astype(np.float64), 0.0).tolist(),
            "down_s": per_online(costs.down_s.astype(np.float64), 0.0).tolist(),
            "bytes_up": per_online(costs.bytes_up.astype(np.int64), 0).tolist(),
            "bytes_down": per_online(costs.bytes_down.astype(np.int64), 0).tolist(),
            "packets_lost": per_online(lost.astype(np.int64), 0).tolist(),
            "energy_j": costs.energy_j[online_ids].astype(np.float64).tolist(),
            "train_loss": _nullable(per_online(train_losses.astype(np.float64), np.nan)),
            "accuracy": _nullable(accuracy[online_ids]),
        }
    )
