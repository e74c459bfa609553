"""The cost model applied to one server round: who finishes, how long each phase takes and
what it costs in energy.

One function for every twin of a centralized round: the simulator uses these figures as
its clock, the emulator uses the same figures to pace its processes and to fill
``device_rounds`` (so ``tinytwin compare`` puts the two twins' energy side by side and
they agree whenever the same devices finish). Lost packets are drawn from the same
(seed, LINK_LOSS, round, direction) streams, so both twins see the same losses.

A selected device first receives the global model, then trains, then sends its update.
On a shared radio medium (:mod:`tinytwin.net.medium`) a transfer may first wait for the
medium (other devices' airtime) or for its duty cycle; waiting is idle, not radio time.
It does not finish when it drops out (``dropped``), when its link to the server goes down
before it is done (``failures.link_down``: ``link_down``) or when it would finish after
``algorithm.deadline_s`` (``straggler``); its phases are cut where that happens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytwin.engines.experiment import Experiment
from tinytwin.fleet.cost import (
    LinkArrays,
    PowerArrays,
    Transfer,
    clip_timeline,
    compute_flops,
    draw_lost_packets,
    energy_joules,
    take_links,
    transfer_cost,
)
from tinytwin.net.medium import MediumArrays, airtime_s, dedicated, duty_off_s, medium_waits
from tinytwin.rng import Stream, stream_rng


@dataclass(frozen=True)
class RoundCosts:
    """Arrays aligned with ``selected`` unless said otherwise."""

    selected: np.ndarray
    dropped: np.ndarray  # bool: dropped out after receiving the model
    link_down: np.ndarray  # bool: its link went down before it was done
    straggler: np.ndarray  # bool: would have finished after the deadline
    down: Transfer  # the whole model download (uncut); time_s includes the wait for the medium
    up: Transfer  # the whole update upload (uncut; none for dropouts); time_s includes the waits
    compute_s: np.ndarray  # uncut compute time (0 for dropouts)
    total_s: np.ndarray  # down + compute + up, uncut
    down_s: np.ndarray  # phases cut at the deadline / link outage (transfers with their waits)
    cpu_s: np.ndarray
    up_s: np.ndarray
    round_s: float  # the round's modelled duration
    energy_j: np.ndarray  # per device (length D): selected and idle online devices, 0 otherwise
    bytes_up: np.ndarray  # bytes put on the uplink (a cut upload counts what got out)
    bytes_down: np.ndarray  # bytes put on the downlink (a cut download counts what got out)
    down_wait_s: np.ndarray  # uncut part of ``down.time_s`` spent waiting for the shared medium
    up_wait_s: np.ndarray  # uncut part of ``up.time_s`` spent waiting for the medium / duty cycle
    down_radio_s: np.ndarray  # of ``down_s``, the time the radio receives (the rest is idle waiting)
    up_radio_s: np.ndarray  # of ``up_s``, the time the radio transmits

    @property
    def completed(self) -> np.ndarray:
        return ~self.dropped & ~self.link_down & ~self.straggler

    @property
    def statuses(self) -> np.ndarray:
        """The device_rounds status of each selected device according to the model (object array:
        dropped, else link_down, else straggler, else ok)."""
        return np.select(
            [self.dropped, self.link_down, self.straggler], ["dropped", "link_down", "straggler"], "ok"
        ).astype(object)


def round_costs(
    exp: Experiment,
    r: int,
    online_ids: np.ndarray,
    selected: np.ndarray,
    dropped: np.ndarray,
) -> RoundCosts:
    """Cost-model figures of round ``r`` for ``selected`` devices (``dropped``: their dropout mask).

    Each device moves and trains its own (sub-)model (:class:`~tinytwin.fleet.model_sizes.FleetModels`)."""
    spec = exp.spec
    up_bytes, down_bytes = exp.device_uplink_bytes[selected], exp.device_downlink_bytes[selected]
    a, seed = spec.algorithm, spec.seed
    links = take_links(exp.fleet.links, selected)
    medium = (exp.fleet.medium or dedicated(exp.fleet.num_devices)).take(selected)
    lost_down = draw_lost_packets(stream_rng(seed, Stream.LINK_LOSS, r, 0), down_bytes, links)
    down = transfer_cost(down_bytes, links.down_bps, links, lost_down)
    flops = compute_flops(
        exp.num_samples[selected],
        a.local_epochs,
        a.batch_size,
        exp.device_flops_per_sample[selected],
        exp.device_flops_per_step[selected],
    )
    compute_s = np.where(dropped, 0.0, flops / exp.fleet.flops_per_s[selected])
    lost_up = draw_lost_packets(stream_rng(seed, Stream.LINK_LOSS, r, 1), up_bytes, links)
    up = transfer_cost(up_bytes, links.up_bps, links, np.where(dropped, 0, lost_up))
    up_time = np.where(dropped, 0.0, up.time_s)
    wait_d, wait_u = shared_medium_waits(medium, links, down, up, down_bytes, up_bytes, compute_s, dropped)
    wait_u = np.where(dropped, 0.0, wait_u)
    total_s = wait_d + down.time_s + compute_s + wait_u + up_time

    cut_s = exp.timeline.cut_s(r)[selected]
    deadline = np.inf if a.deadline_s is None else float(a.deadline_s)
    link_down = ~dropped & (total_s > cut_s) & (cut_s <= deadline)
    straggler = ~dropped & ~link_down & (total_s > deadline)
    done = ~dropped & ~link_down & ~straggler

    limit = None if a.deadline_s is None and not link_down.any() else np.minimum(cut_s, deadline)
    wd_s, d_s, c_s, wu_s, u_s = clip_timeline((wait_d, down.time_s, compute_s, wait_u, up_time), limit)
    round_s = float(total_s[done].max()) if done.any() else 0.0
    if dropped.any():
        round_s = max(round_s, float((wait_d + down.time_s)[dropped].max()))
    if straggler.any():
        round_s = deadline
    if link_down.any():
        round_s = max(round_s, float((wd_s + d_s)[link_down].max()))

    power = PowerArrays(*(getattr(exp.fleet.power, f)[selected] for f in PowerArrays.__dataclass_fields__))
    horizon = np.where(dropped, wd_s + d_s, round_s)
    energy = np.zeros(exp.fleet.num_devices)
    # radio time at tx/rx power; waiting for the medium is idle (energy_joules: horizon - busy)
    energy[selected] = energy_joules(power, c_s, u_s, d_s, horizon, np.ones(selected.size, dtype=bool))
    idle_ids = np.setdiff1d(online_ids, selected)
    energy[idle_ids] = exp.fleet.power.idle_w[idle_ids] * round_s

    bytes_up, bytes_down = _bytes_put(down, up, d_s, u_s, dropped, link_down)
    return RoundCosts(
        selected,
        dropped,
        link_down,
        straggler,
        _waited(down, wait_d),
        _waited(up, wait_u),
        compute_s,
        total_s,
        wd_s + d_s,
        c_s,
        wu_s + u_s,
        round_s,
        energy,
        bytes_up,
        bytes_down,
        wait_d,
        wait_u,
        d_s,
        u_s,
    )


def _bytes_put(
    down: Transfer, up: Transfer, d_s: np.ndarray, u_s: np.ndarray, dropped: np.ndarray, link_down: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bytes put on the uplink / downlink: a transfer cut after ``u_s``/``d_s`` of radio time counts what got out."""
    up_frac = np.divide(u_s, up.time_s, out=np.zeros_like(u_s), where=up.time_s > 0)
    bytes_up = np.where(dropped, 0, np.round(up.wire_bytes * up_frac)).astype(np.int64)
    down_frac = np.divide(d_s, down.time_s, out=np.ones_like(d_s), where=link_down & (down.time_s > 0))
    return bytes_up, np.round(down.wire_bytes * down_frac).astype(np.int64)


def _waited(t: Transfer, wait_s: np.ndarray) -> Transfer:
    """``t`` with the wait for the medium added to its time: the phase as the emulator paces it."""
    return Transfer(t.packets, t.lost_packets, t.wire_bytes, t.time_s + wait_s)


def shared_medium_waits(
    medium: MediumArrays,
    links: LinkArrays,
    down: Transfer,
    up: Transfer,
    down_bytes: np.ndarray | int,
    up_bytes: np.ndarray | int,
    compute_s: np.ndarray,
    dropped: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(download wait, upload wait) per selected device on its medium (docs/cost-model.md).

    Every download is ready at the round's start; an upload is ready when its device has
    received the model and trained. Downloads and uploads of one medium share one queue
    (half duplex); only uploads are duty-cycled (the device transmits them).
    """
    n = compute_s.size
    air_d = airtime_s(down.wire_bytes, links.down_bps)
    air_u = np.where(dropped, 0.0, airtime_s(up.wire_bytes, links.up_bps))
    off_u = duty_off_s(
        air_u, up_bytes, up.packets, links.mtu_bytes, links.header_bytes, links.up_bps, medium.duty_cycle
    )
    both = medium.take(np.concatenate([np.arange(n), np.arange(n)]))  # one row per download, then per upload
    ready = np.zeros(2 * n)
    air = np.concatenate([air_d, air_u])
    off = np.concatenate([np.zeros(n), off_u])
    active = np.concatenate([down.packets > 0, ~dropped & (up.packets > 0)])
    users = np.concatenate([np.arange(n), np.arange(n)])  # the device of each row
    wait_down = medium_waits(both, ready, air, off, active, users)[:n]  # uploads are not ready yet: ignore them
    ready = np.concatenate([np.zeros(n), wait_down + down.time_s + compute_s])
    waits = medium_waits(both, ready, air, off, active, users)
    return waits[:n], waits[n:]
