"""The cost model applied to one server round: who finishes, how long each phase takes and
what it costs in energy.

One function for every twin of a centralized round: the simulator uses these figures as
its clock, the emulator uses the same figures to pace its processes and to fill
``device_rounds`` (so ``tinytwin compare`` puts the two twins' energy side by side and
they agree whenever the same devices finish). Lost packets are drawn from the same
(seed, LINK_LOSS, round, direction) streams, so both twins see the same losses.

A selected device first receives the global model, then trains, then sends its update.
It does not finish when it drops out (``dropped``), when its link to the server goes down
before it is done (``failures.link_down``: ``link_down``) or when it would finish after
``algorithm.deadline_s`` (``straggler``); its phases are cut where that happens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytwin.engines.experiment import Experiment
from tinytwin.fleet.cost import (
    PowerArrays,
    Transfer,
    clip_phases,
    compute_flops,
    draw_lost_packets,
    energy_joules,
    take_links,
    transfer_cost,
)
from tinytwin.rng import Stream, stream_rng


@dataclass(frozen=True)
class RoundCosts:
    """Arrays aligned with ``selected`` unless said otherwise."""

    selected: np.ndarray
    dropped: np.ndarray  # bool: dropped out after receiving the model
    link_down: np.ndarray  # bool: its link went down before it was done
    straggler: np.ndarray  # bool: would have finished after the deadline
    down: Transfer  # the whole model download (uncut)
    up: Transfer  # the whole update upload (uncut; none for dropouts)
    compute_s: np.ndarray  # uncut compute time (0 for dropouts)
    total_s: np.ndarray  # down + compute + up, uncut
    down_s: np.ndarray  # phases cut at the deadline / link outage
    cpu_s: np.ndarray
    up_s: np.ndarray
    round_s: float  # the round's modelled duration
    energy_j: np.ndarray  # per device (length D): selected and idle online devices, 0 otherwise
    bytes_up: np.ndarray  # bytes put on the uplink (a cut upload counts what got out)
    bytes_down: np.ndarray  # bytes put on the downlink (a cut download counts what got out)

    @property
    def completed(self) -> np.ndarray:
        return ~self.dropped & ~self.link_down & ~self.straggler

    def status(self, i: int) -> str:
        """The device_rounds status of ``selected[i]`` according to the model."""
        if self.dropped[i]:
            return "dropped"
        if self.link_down[i]:
            return "link_down"
        return "straggler" if self.straggler[i] else "ok"


def round_costs(
    exp: Experiment,
    r: int,
    online_ids: np.ndarray,
    selected: np.ndarray,
    dropped: np.ndarray,
    up_bytes: int,
    down_bytes: int,
) -> RoundCosts:
    """Cost-model figures of round ``r`` for ``selected`` devices (``dropped``: their dropout mask)."""
    spec = exp.spec
    a, seed = spec.algorithm, spec.seed
    links = take_links(exp.fleet.links, selected)
    lost_down = draw_lost_packets(stream_rng(seed, Stream.LINK_LOSS, r, 0), down_bytes, links)
    down = transfer_cost(down_bytes, links.down_bps, links, lost_down)
    flops = compute_flops(
        exp.num_samples[selected], a.local_epochs, a.batch_size, exp.flops_per_sample, exp.flops_per_step
    )
    compute_s = np.where(dropped, 0.0, flops / exp.fleet.flops_per_s[selected])
    lost_up = draw_lost_packets(stream_rng(seed, Stream.LINK_LOSS, r, 1), up_bytes, links)
    up = transfer_cost(up_bytes, links.up_bps, links, np.where(dropped, 0, lost_up))
    up_time = np.where(dropped, 0.0, up.time_s)
    total_s = down.time_s + compute_s + up_time

    cut_s = exp.timeline.cut_s(r)[selected]
    deadline = np.inf if a.deadline_s is None else float(a.deadline_s)
    link_down = ~dropped & (total_s > cut_s) & (cut_s <= deadline)
    straggler = ~dropped & ~link_down & (total_s > deadline)
    done = ~dropped & ~link_down & ~straggler

    round_s = float(total_s[done].max()) if done.any() else 0.0
    if dropped.any():
        round_s = max(round_s, float(down.time_s[dropped].max()))
    if straggler.any():
        round_s = deadline
    limit = None if a.deadline_s is None and not link_down.any() else np.minimum(cut_s, deadline)
    d_s, c_s, u_s = clip_phases(down.time_s, compute_s, up_time, limit)
    if link_down.any():
        round_s = max(round_s, float(d_s[link_down].max()))

    power = PowerArrays(*(getattr(exp.fleet.power, f)[selected] for f in PowerArrays.__dataclass_fields__))
    horizon = np.where(dropped, d_s, round_s)
    energy = np.zeros(exp.fleet.num_devices)
    energy[selected] = energy_joules(power, c_s, u_s, d_s, horizon, np.ones(selected.size, dtype=bool))
    idle_ids = np.setdiff1d(online_ids, selected)
    energy[idle_ids] = exp.fleet.power.idle_w[idle_ids] * round_s

    up_frac = np.divide(u_s, up.time_s, out=np.zeros_like(u_s), where=up.time_s > 0)
    bytes_up = np.where(dropped, 0, np.round(up.wire_bytes * up_frac)).astype(np.int64)
    down_frac = np.divide(d_s, down.time_s, out=np.ones_like(d_s), where=link_down & (down.time_s > 0))
    bytes_down = np.round(down.wire_bytes * down_frac).astype(np.int64)
    return RoundCosts(
        selected,
        dropped,
        link_down,
        straggler,
        down,
        up,
        compute_s,
        total_s,
        d_s,
        c_s,
        u_s,
        round_s,
        energy,
        bytes_up,
        bytes_down,
    )
