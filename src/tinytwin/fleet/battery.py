"""Batteries on the cost model's clock: state of charge, harvesting, and who is powered.

A device group may carry a battery (``fleet.groups[i].battery``). Each round, on every twin,
the device's modelled energy for the round (:mod:`tinytwin.engines.round_costs`: compute,
radio, idle) is drawn from its charge and what it harvested over the round's modelled
duration is added, up to the capacity. A device whose charge reaches zero has finished that
round on its reserve (the cutoff voltage's margin) and is *empty*: it is offline from the
next round, draws nothing, keeps harvesting, and comes back once its charge reaches
``rejoin_at`` of the capacity. Devices without a battery have infinite charge.

Harvesting is a constant power or a daily profile of 24 hourly powers (watts) on the
simulated clock, which starts at midnight; the energy over a round is the exact integral of
that step function, so a round spanning hours counts each hour at its own power.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

HOUR_S = 3600.0
DAY_S = 24 * HOUR_S


@dataclass(frozen=True)
class Batteries:
    """Per device (arrays of length D): capacity, starting charge, rejoin level, harvest."""

    capacity_j: np.ndarray  # inf: no battery
    initial_j: np.ndarray
    rejoin_j: np.ndarray
    harvest_w: np.ndarray  # (D, 24): hourly harvest power (a constant is 24 equal hours)

    @property
    def has_battery(self) -> np.ndarray:
        return np.isfinite(self.capacity_j)

    def start(self) -> tuple[np.ndarray, np.ndarray]:
        """The starting charge and empty flags (none empty)."""
        return self.initial_j.copy(), np.zeros(self.capacity_j.size, dtype=bool)

    def harvested_j(self, t0: float, t1: float) -> np.ndarray:
        """Each device's harvest over the simulated interval [t0, t1] (exact integral)."""
        return _daily_integral(self.harvest_w, t1) - _daily_integral(self.harvest_w, t0)

    def after_round(self, state: BatteryState, energy_j: np.ndarray, t0: float, t1: float) -> BatteryState:
        """The state after a round that used ``energy_j`` (per device) between ``t0`` and ``t1``."""
        charge = np.minimum(state.charge_j + self.harvested_j(t0, t1) - energy_j, self.capacity_j)
        emptied = self.has_battery & ~state.empty & (charge <= 0.0)
        charge = np.maximum(charge, 0.0)
        recharged = state.empty & (charge >= self.rejoin_j)
        empty = (state.empty | emptied) & ~recharged
        return BatteryState(charge, empty, emptied, recharged)


@dataclass(frozen=True)
class BatteryState:
    """Charge (J) and whether each device is empty (offline until recharged)."""

    charge_j: np.ndarray
    empty: np.ndarray
    emptied: np.ndarray | None = None  # this round's transitions, for events
    recharged: np.ndarray | None = None

    def events(self, r: int, t: float) -> list[dict[str, Any]]:
        """``battery_empty`` / ``battery_recharged`` events of the round that led here."""
        out = []
        for kind, mask, what in (
            ("battery_empty", self.emptied, "battery empty: offline until recharged"),
            ("battery_recharged", self.recharged, "battery recharged: back online"),
        ):
            if mask is None:
                continue
            for d in np.flatnonzero(mask):
                out.append({"round": r, "sim_time_s": t, "device": int(d), "kind": kind, "detail": what})
        return out


def _daily_integral(power_w: np.ndarray, t: float) -> np.ndarray:
    """Energy harvested from midnight of day 0 to simulated time ``t``, per device."""
    days, rest = divmod(max(float(t), 0.0), DAY_S)
    hour, within = divmod(rest, HOUR_S)
    h = int(hour)
    full_hours = power_w[:, :h].sum(axis=1) * HOUR_S
    return days * power_w.sum(axis=1) * HOUR_S + full_hours + power_w[:, h % 24] * within


def capacity_joules(spec: Any) -> float:
    """A battery spec's capacity in joules (``capacity_j``, or mAh at ``voltage``)."""
    if spec.capacity_j is not None:
        return float(spec.capacity_j)
    return float(spec.capacity_mah) * 3.6 * float(spec.voltage)


def build_batteries(groups: Sequence[Any], devices_of: Sequence[np.ndarray], num_devices: int) -> Batteries | None:
    """Per-device arrays from the groups' battery specs; None when no group has a battery."""
    if all(g.battery is None for g in groups):
        return None
    cap = np.full(num_devices, np.inf)
    initial = np.full(num_devices, np.inf)
    rejoin = np.zeros(num_devices)
    harvest = np.zeros((num_devices, 24))
    for g, devs in zip(groups, devices_of):
        b = g.battery
        if b is None:
            continue
        c = capacity_joules(b)
        cap[devs], initial[devs], rejoin[devs] = c, c * b.initial, c * b.rejoin_at
        harvest[devs] = b.harvest_profile_w if b.harvest_profile_w is not None else [b.harvest_w] * 24
    return Batteries(cap, initial, rejoin, harvest)


def settle_round(
    batteries: Batteries | None,
    charge_j: np.ndarray | None,
    empty: np.ndarray | None,
    energy_j: np.ndarray,
    t0: float,
    t1: float,
    r: int,
    events: list[dict[str, Any]],
) -> tuple[np.ndarray | None, np.ndarray | None, list[tuple[int, int, float, float]]]:
    """One round's end on a twin: the new charge and empty flags (None without batteries), the
    round's battery events appended to ``events``, and the store's rows ``(round, device,
    charge_j, capacity_j)`` of the devices that have a battery."""
    if batteries is None:
        return None, None, []
    assert charge_j is not None and empty is not None, "a run with batteries carries their state"
    new = batteries.after_round(BatteryState(charge_j, empty), energy_j, t0, t1)
    events.extend(new.events(r, t1))
    cap = batteries.capacity_j
    rows = [(r, int(d), float(new.charge_j[d]), float(cap[d])) for d in np.flatnonzero(batteries.has_battery)]
    return new.charge_j, new.empty, rows


def powered(online: np.ndarray, empty: np.ndarray | None) -> np.ndarray:
    """The online mask without the devices whose battery is empty."""
    return online if empty is None else online & ~empty


def battery_summary(batteries: Batteries | None, charge_j: np.ndarray | None, empty: np.ndarray | None) -> dict:
    """``{"battery": ...}`` for a run summary: how many devices have one, how many are empty at
    the end, and their final charge as a fraction of capacity; ``{}`` without batteries."""
    if batteries is None or charge_j is None or empty is None:
        return {}
    mine = batteries.has_battery
    fraction = charge_j[mine] / batteries.capacity_j[mine]
    return {
        "battery": {
            "devices": int(mine.sum()),
            "empty_at_end": int(empty[mine].sum()),
            "charge_end_fraction": {
                "min": float(fraction.min()),
                "median": float(np.median(fraction)),
                "max": float(fraction.max()),
            },
        }
    }
