"""The cost model of one hierarchical round, for the emulation twin (numpy only, no torch).

The global coordinator of a hierarchical emulation (:mod:`tinytwin.emulate.hier_coordinator`)
plans every round with the draws of the simulator's engine
(:meth:`tinytwin.engines.hierarchical.HierarchicalSimulator.step`): per local round
``l`` (training key ``(r − 1)·L + l``) the lost packets of every online device's download
(stream ``LINK_LOSS, key, 0``) and upload (``LINK_LOSS, key, 1``) over the devices' links,
and per global round the LA → GA upload (``LINK_LOSS, r, 2``) and GA → LA download
(``LINK_LOSS, r, 3``) of every cluster with an online device over ``aggregator_link``.
The link shaper of each process sleeps these modelled times × ``time_scale``.

After the round, :func:`modelled_costs` charges what really happened — a device that got
the model pays its download, one whose update the local aggregator accepted also pays
its compute and upload — with the engine's formulas: a cluster's local round lasts as
long as its slowest device, a global round as long as the slowest reporting cluster plus
its LA ↔ GA transfers (none with one cluster: flat FL), energy from
:func:`tinytwin.fleet.cost.energy_joules`. Without faults these are the simulator's
figures exactly (test: ``tests/test_emulate_hierarchical.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytwin.engines.round_costs import shared_medium_waits
from tinytwin.fleet.cost import (
    LinkArrays,
    PowerArrays,
    Transfer,
    draw_lost_packets,
    energy_joules,
    take_links,
    transfer_cost,
)
from tinytwin.net.medium import MediumArrays, dedicated
from tinytwin.rng import Stream, stream_rng

__all__ = ["HierRoundPlan", "LocalPlan", "ModelledRound", "modelled_costs", "plan_round"]


@dataclass(frozen=True)
class LocalPlan:
    key: int  # training key and frame round of this local round
    down: Transfer  # over ``HierRoundPlan.ids``
    up: Transfer
    wait_down_s: np.ndarray  # waits for the shared radio medium before the download / upload (idle time)
    wait_up_s: np.ndarray


@dataclass(frozen=True)
class HierRoundPlan:
    round: int
    ids: np.ndarray  # online devices, in the simulator's draw order
    local: list[LocalPlan]
    present: np.ndarray  # clusters with an online device
    la_up: Transfer  # over ``present``
    la_down: Transfer

    def index(self) -> dict[int, int]:
        return {int(d): i for i, d in enumerate(self.ids)}


def plan_round(
    fleet_links: LinkArrays,
    la_links: LinkArrays,
    assign: np.ndarray,
    seed: int,
    r: int,
    local_rounds: int,
    ids: np.ndarray,
    up_bytes: int,
    down_bytes: int,
    medium: MediumArrays | None = None,
    compute_s: np.ndarray | None = None,
) -> HierRoundPlan:
    """The link figures of global round ``r`` for the online devices ``ids`` (the engine's draws).

    ``medium`` (the fleet's, all devices) and ``compute_s`` (per device) give the waits for a
    shared radio medium, as the engine queues them; without them every link is independent."""
    ids = np.asarray(ids, dtype=np.int64)
    links = take_links(fleet_links, ids)
    on_medium = (medium or dedicated(fleet_links.mtu_bytes.size)).take(ids)
    comp = np.zeros(ids.size) if compute_s is None else np.asarray(compute_s, dtype=np.float64)[ids]
    local = []
    for l in range(1, local_rounds + 1):
        key = (r - 1) * local_rounds + l
        lost_d = draw_lost_packets(stream_rng(seed, Stream.LINK_LOSS, key, 0), down_bytes, links)
        down = transfer_cost(down_bytes, links.down_bps, links, lost_d)
        lost_u = draw_lost_packets(stream_rng(seed, Stream.LINK_LOSS, key, 1), up_bytes, links)
        up = transfer_cost(up_bytes, links.up_bps, links, lost_u)
        wait_d, wait_u = shared_medium_waits(
            on_medium, links, down, up, down_bytes, up_bytes, comp, np.zeros(ids.size, dtype=bool)
        )
        local.append(LocalPlan(key, down, up, wait_d, wait_u))
    present = np.unique(assign[ids])
    la_l = take_links(la_links, present)
    la_up = transfer_cost(
        up_bytes, la_l.up_bps, la_l, draw_lost_packets(stream_rng(seed, Stream.LINK_LOSS, r, 2), up_bytes, la_l)
    )
    la_down = transfer_cost(
        down_bytes, la_l.down_bps, la_l, draw_lost_packets(stream_rng(seed, Stream.LINK_LOSS, r, 3), down_bytes, la_l)
    )
    return HierRoundPlan(r, ids, local, present, la_up, la_down)


def lossless(nbytes: int, bps: np.ndarray, links: LinkArrays) -> Transfer:
    """A transfer with no lost packets (for devices outside the simulator's draws)."""
    return transfer_cost(nbytes, bps, links, np.zeros(links.mtu_bytes.shape, dtype=np.int64))


@dataclass
class ModelledRound:
    compute_s: np.ndarray  # per device (length D), summed over local rounds
    up_s: np.ndarray
    down_s: np.ndarray
    lost: np.ndarray
    energy_j: np.ndarray
    round_s: float
    cluster_s: dict[int, float]


def modelled_costs(
    plan: HierRoundPlan,
    n: int,
    assign: np.ndarray,
    compute_s: np.ndarray,
    power: PowerArrays,
    got_model: list[set[int]],
    done: list[set[int]],
    reporting: set[int],
    k: int,
    taking: np.ndarray,
    extra_down: dict[int, float] | None = None,
) -> ModelledRound:
    """What the cost model charges for the round as it happened.

    ``got_model[l]`` / ``done[l]``: devices that received the model / whose update was
    accepted in local round ``l``; ``reporting``: clusters whose model reached the global
    aggregator; ``taking``: boolean mask of the devices that took part (energy is charged to
    them); ``extra_down``: download seconds of devices outside ``plan.ids`` (killed in the
    round of their permanent failure, which the simulator has offline).
    """
    idx = plan.index()
    extra_down = extra_down or {}
    comp, up_s, down_s = np.zeros(n), np.zeros(n), np.zeros(n)
    lost = np.zeros(n, dtype=np.int64)
    cluster_time = np.zeros(k)
    for lp, got, ok in zip(plan.local, got_model, done):
        per_cluster: dict[int, float] = {}
        for d in sorted(got):
            i = idx.get(d)
            down = float(lp.down.time_s[i]) if i is not None else float(extra_down.get(d, 0.0))
            wait_d = float(lp.wait_down_s[i]) if i is not None else 0.0
            total = wait_d + down
            down_s[d] += down
            if i is not None:
                lost[d] += int(lp.down.lost_packets[i])
            if d in ok and i is not None:
                comp[d] += float(compute_s[d])
                up_s[d] += float(lp.up.time_s[i])
                lost[d] += int(lp.up.lost_packets[i])
                total = wait_d + down + float(compute_s[d]) + float(lp.wait_up_s[i]) + float(lp.up.time_s[i])
            c = int(assign[d])
            per_cluster[c] = max(per_cluster.get(c, 0.0), total)
        for c, t in per_cluster.items():
            cluster_time[c] += t
    pos = {int(c): j for j, c in enumerate(plan.present)}
    cluster_s = {}
    for c in sorted(reporting):
        j = pos.get(c)
        la = (float(plan.la_up.time_s[j] + plan.la_down.time_s[j]) if j is not None else 0.0) if k > 1 else 0.0
        cluster_s[c] = float(cluster_time[c]) + la
    round_s = max(cluster_s.values()) if cluster_s else 0.0
    energy = energy_joules(power, comp, up_s, down_s, round_s, taking)
    return ModelledRound(comp, up_s, down_s, lost, energy, round_s, cluster_s)
