"""``tinytwin plan``: one round's costs per device group, from the cost model alone (no training)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tinytwin.engines.experiment import Experiment
from tinytwin.fleet.cost import LinkArrays, compute_flops, transfer_cost


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
        up = transfer_cost(exp.uplink_bytes(), arrays.up_bps, arrays, none_lost)
        down = transfer_cost(exp.downlink_bytes(), arrays.down_bps, arrays, none_lost)
        flops = int(
            compute_flops(np.array([n]), a.local_epochs, a.batch_size, exp.flops_per_sample, exp.flops_per_step)[0]
        )
        compute_s = flops / g.profile.flops_per_s
        p = g.profile.power
        energy = p.active_w * compute_s + p.tx_w * float(up.time_s[0]) + p.rx_w * float(down.time_s[0])
        rows.append(
            {
                "memory": mem,
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
            }
        )
    return rows


def medium_of_group(exp: Experiment, group: int) -> dict[str, Any]:
    """The medium a group's devices share (docs/cost-model.md): its name and how many devices share it.

    ``medium`` is ``"dedicated"`` (``medium_devices`` 1) when each device has its own link.
    """
    media = exp.fleet.medium
    first = int(exp.fleet.groups[group].devices[0])
    if media is None or media.medium_of[first] < 0:
        return {"medium": "dedicated", "medium_devices": 1}
    m = media.medium_of[first]
    return {"medium": media.names[m], "medium_devices": int((media.medium_of == m).sum())}
