"""``tinytwin plan``: one round's costs per device group, from the cost model alone (no training)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tinytwin.engines.experiment import Experiment
from tinytwin.fleet.cost import LinkArrays, compute_flops, take_links, transfer_cost
from tinytwin.net.medium import airtime_s


def plan_groups(exp: Experiment) -> list[dict[str, Any]]:
    """For each group, the costs of its device with the most data, on a loss-free link."""
    a = exp.spec.algorithm
    rows = []
    for gi, (g, mem) in enumerate(zip(exp.fleet.groups, exp.memory)):
        n = int(max(len(exp.parts[d]) for d in g.devices))
        link = g.link
        arrays = LinkArrays(
            *(
                np.array([v])
                for v in (link.latency_s, link.up_bps, link.down_bps, 0.0, link.mtu_bytes, link.header_bytes)
            )
        )
        none_lost = np.zeros(1, dtype=np.int64)
        d0 = int(g.devices[0])  # every device of a group trains the same (sub-)model
        up = transfer_cost(int(exp.device_uplink_bytes[d0]), arrays.up_bps, arrays, none_lost)
        down = transfer_cost(int(exp.device_downlink_bytes[d0]), arrays.down_bps, arrays, none_lost)
        flops = int(
            compute_flops(
                np.array([n]),
                a.local_epochs,
                a.batch_size,
                int(exp.device_flops_per_sample[d0]),
                int(exp.device_flops_per_step[d0]),
            )[0]
        )
        compute_s = flops / g.profile.flops_per_s
        p = g.profile.power
        energy = p.active_w * compute_s + p.tx_w * float(up.time_s[0]) + p.rx_w * float(down.time_s[0])
        rows.append(
            {
                "memory": mem,
                "model_rate": float(exp.models.rates[d0]),
                "model_depth": exp.models.of(d0).depth,
                "model_params": exp.models.of(d0).model.num_params,
                "rate_choice": exp.models.choices.get(g.name),
                "link": link.name,
                **medium_of_group(exp, gi),
                "count": len(g.devices),
                "samples": n,
                "flops": flops,
                "compute_s": compute_s,
                "up_s": float(up.time_s[0]),
                "down_s": float(down.time_s[0]),
                "bytes_up": int(up.wire_bytes[0]),
                "bytes_down": int(down.wire_bytes[0]),
                "energy_j": energy,
                "battery_j": float(exp.batteries.capacity_j[d0])
                if exp.batteries is not None and exp.batteries.has_battery[d0]
                else None,
            }
        )
    return rows


def medium_of_group(exp: Experiment, group: int) -> dict[str, Any]:
    """The medium a group's devices share (docs/cost-model.md): its name, how many devices share
    it, and the airtime one round of all of them takes on it (one download and one upload
    each, loss-free, contended): the least time its transfers add up to, whatever the schedule.

    ``medium`` is ``"dedicated"`` (``medium_devices`` 1) when each device has its own link.
    """
    fleet = exp.fleet
    first = int(fleet.groups[group].devices[0])
    if fleet.medium is None or fleet.medium.medium_of[first] < 0:
        return {"medium": "dedicated", "medium_devices": 1, "medium_airtime_s": None}
    on = np.flatnonzero(fleet.medium.medium_of == fleet.medium.medium_of[first])
    links = take_links(fleet.links, on)
    none_lost = np.zeros(on.size, dtype=np.int64)
    wire_up = transfer_cost(exp.device_uplink_bytes[on], links.up_bps, links, none_lost).wire_bytes
    wire_down = transfer_cost(exp.device_downlink_bytes[on], links.down_bps, links, none_lost).wire_bytes
    air = airtime_s(wire_up, links.up_bps) + airtime_s(wire_down, links.down_bps)
    eff = fleet.medium.efficiency[on] if on.size > 1 else 1.0
    return {
        "medium": fleet.medium.names[fleet.medium.medium_of[first]],
        "medium_devices": int(on.size),
        "medium_airtime_s": float((air / eff).sum()),
    }
