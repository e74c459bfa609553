"""Cloudlets as devices of a fleet: each setup's modelled time and energy on their hardware and links.

A cloudlet is a device profile from the device catalog (``cloudlets.profile``, e.g. a Raspberry
Pi 4 or a Jetson) on a link from the link catalog (``cloudlets.link``); the traditional setup's
master and the centralized setup's one machine are ``cloudlets.server_profile``. Per local
epoch each cloudlet, in the cost model of classification runs (:mod:`tinytwin.fleet.cost`):

- receives the node features of its remote halo (other cloudlets' sensors, every step of the
  training series) and the models it merges (traditional: the master's; server-free: one per
  neighbour; gossip: one push on average),
- trains (``train_flops`` of its subgraph) and merges (aggregation FLOPs) at the profile's
  ``flops_per_s``,
- sends its model (traditional and gossip: once; server-free: to each neighbour);

transfers take the link's latency, bandwidth, packet headers and drawn packet losses; energy is
``P_active·t_compute + P_tx·t_up + P_rx·t_down + P_idle·idle`` over the epoch, whose length is
the slowest cloudlet's (the setups are synchronous), plus the master's merge for traditional FL.
Centralized training is the server's compute only (its data are taken to be there already).
Each site's training RAM is counted too, and a setup whose largest site does not fit its
profile is refused before anything trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tinytwin.errors import SpecError
from tinytwin.fleet.catalog import DeviceProfile, load_device_catalog
from tinytwin.fleet.cost import LinkArrays, PowerArrays, draw_lost_packets, energy_joules, transfer_cost
from tinytwin.graph.cloudlets import Partition, node_feature_bytes
from tinytwin.graph.stgcn import StgcnConfig, param_count, train_flops, training_memory
from tinytwin.net.links import LinkModel, load_link_catalog

BYTES_PER_VALUE = 4


@dataclass(frozen=True)
class CloudletFleet:
    """The hardware of a forecasting run: the cloudlets' profile and link, the server's profile."""

    profile: DeviceProfile
    link: LinkModel
    server: DeviceProfile

    @classmethod
    def from_names(cls, profile: str, link: str, server: str) -> CloudletFleet:
        """Look the names up in the catalogs; an unknown one is refused naming its key."""
        devices, links = load_device_catalog(), load_link_catalog()
        for key, name, known in (
            ("cloudlets.profile", profile, devices),
            ("cloudlets.server_profile", server, devices),
            ("cloudlets.link", link, links),
        ):
            if name not in known:
                raise SpecError(key, f"unknown name {name!r}; use one of {', '.join(sorted(known))}")
        return cls(devices[profile], links[link], devices[server])


def _links(link: LinkModel, n: int) -> LinkArrays:
    def full(v: float, dtype: Any = np.float64) -> np.ndarray:
        return np.full(n, v, dtype=dtype)

    return LinkArrays(
        full(link.latency_s),
        full(link.up_bps),
        full(link.down_bps),
        full(link.loss),
        full(link.mtu_bytes, np.int64),
        full(link.header_bytes, np.int64),
    )


def _power(profile: DeviceProfile, n: int) -> PowerArrays:
    p = profile.power
    return PowerArrays(*(np.full(n, v) for v in (p.active_w, p.idle_w, p.tx_w, p.rx_w)))


def _traffic(setup: str, part: Partition, model_bytes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cloudlet and epoch: model bytes sent, model bytes received, models merged."""
    deg = np.array([len(v) for v in part.neighbours], dtype=np.int64)
    one = np.ones(len(part.cloudlets), dtype=np.int64)
    sends, receives, merged = {
        "traditional": (one, one, 0 * one),  # the master merges
        "serverfree": (deg, deg, deg + 1),
        "gossip": (one, one, 2 * one),  # one push out, one in on average; the buffer of two
        "gossip-merge": (one, one, 3 * one),
    }[setup]
    return sends * model_bytes, receives * model_bytes, merged


def usable_ram(profile: DeviceProfile) -> int:
    """Bytes a training process may take on ``profile``: internal and external RAM, less the reserved."""
    return profile.ram_bytes + profile.external_ram_bytes - profile.reserved_ram_bytes


def memory_needs(setup: str, part: Partition, model: StgcnConfig, batch: int, steps: int) -> list[int]:
    """Training RAM of each site (:func:`stgcn.training_memory`): the server's whole graph for
    centralized training; else each cloudlet's halo, the models it receives in an epoch and
    every step of its remote halo's features (they stay in memory), and its model sent."""
    if setup == "centralized":
        return [training_memory(model, len(part.kept), batch).total]
    model_bytes = param_count(model) * BYTES_PER_VALUE
    _, received, _ = _traffic(setup, part, model_bytes)
    return [
        training_memory(
            model,
            len(c.halo),
            batch,
            receive_bytes=int(received[i]) + node_feature_bytes(len(c.remote), steps, BYTES_PER_VALUE),
            send_bytes=model_bytes,
        ).total
        for i, c in enumerate(part.cloudlets)
    ]


def check_memory(
    setups: list[str], part: Partition, model: StgcnConfig, batch: int, steps: int, fleet: CloudletFleet
) -> None:
    """Refuse, before any training, a setup whose largest site does not fit its profile's RAM."""
    for setup in setups:
        key, profile = (
            ("cloudlets.server_profile", fleet.server)
            if setup == "centralized"
            else ("cloudlets.profile", fleet.profile)
        )
        need = max(memory_needs(setup, part, model, batch, steps))
        if need > usable_ram(profile):
            raise SpecError(
                key,
                f"{profile.name} has {usable_ram(profile) / 1e6:.1f} MB of RAM for training; {setup} needs "
                f"{need / 1e6:.1f} MB on its largest site (ST-GCN at batch {batch}); "
                "use a larger profile, a smaller train.batch_size or a narrower model",
            )


def fleet_costs(
    setup: str,
    part: Partition,
    model: StgcnConfig,
    windows: int,
    steps: int,
    epochs: int,
    fleet: CloudletFleet,
    seed: int,
    batch: int,
) -> dict[str, Any]:
    """Modelled seconds, joules and training RAM of ``epochs`` local epochs of ``setup``, per
    cloudlet and in all."""
    p = param_count(model)
    memory = memory_needs(setup, part, model, batch, steps)
    if setup == "centralized":
        compute = train_flops(model, len(part.kept), windows) / fleet.server.flops_per_s
        energy = fleet.server.power.active_w * compute
        server = {"compute_s": compute * epochs, "energy_j": energy * epochs, "train_memory_bytes": memory[0]}
        return _result(fleet, compute * epochs, energy * epochs, [], server, memory[0])
    n = len(part.cloudlets)
    up_b, down_b, merged = _traffic(setup, part, p * BYTES_PER_VALUE)
    features = np.array([node_feature_bytes(len(c.remote), steps, BYTES_PER_VALUE) for c in part.cloudlets])
    flops = np.array([train_flops(model, len(c.halo), windows) for c in part.cloudlets], dtype=np.float64) + merged * p
    compute = flops / fleet.profile.flops_per_s
    links, power = _links(fleet.link, n), _power(fleet.profile, n)
    master_s = n * p / fleet.server.flops_per_s if setup == "traditional" else 0.0
    totals = {k: np.zeros(n) for k in ("compute_s", "up_s", "down_s", "energy_j")}
    bytes_up, bytes_down = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    time_s = server_j = 0.0
    for epoch in range(1, epochs + 1):
        rng = np.random.default_rng([seed, 61, epoch])
        down_payload = down_b + features
        up = transfer_cost(up_b, links.up_bps, links, draw_lost_packets(rng, up_b, links))
        down = transfer_cost(down_payload, links.down_bps, links, draw_lost_packets(rng, down_payload, links))
        epoch_s = float((down.time_s + compute + up.time_s).max()) + master_s
        e = energy_joules(power, compute, up.time_s, down.time_s, epoch_s, np.ones(n, dtype=bool))
        for k, v in (("compute_s", compute), ("up_s", up.time_s), ("down_s", down.time_s), ("energy_j", e)):
            totals[k] += v
        bytes_up += up.wire_bytes
        bytes_down += down.wire_bytes
        time_s += epoch_s
        if setup == "traditional":
            s = fleet.server.power
            server_j += s.active_w * master_s + s.idle_w * (epoch_s - master_s)
    sites = [
        {
            "cloudlet": c.index,
            **{k: float(v[i]) for k, v in totals.items()},
            "bytes_up": int(bytes_up[i]),
            "bytes_down": int(bytes_down[i]),
            "train_memory_bytes": memory[i],
        }
        for i, c in enumerate(part.cloudlets)
    ]
    server = {"compute_s": master_s * epochs, "energy_j": server_j} if setup == "traditional" else {}
    return _result(fleet, time_s, float(totals["energy_j"].sum()) + server_j, sites, server, max(memory))


def _result(
    fleet: CloudletFleet,
    time_s: float,
    energy_j: float,
    sites: list[dict[str, Any]],
    server: dict[str, Any],
    memory: int,
) -> dict[str, Any]:
    return {
        "profile": fleet.profile.name,
        "link": fleet.link.name,
        "server_profile": fleet.server.name,
        "time_s": time_s,
        "energy_j": energy_j,
        "bytes": int(sum(s["bytes_up"] + s["bytes_down"] for s in sites)),
        "train_memory_bytes": memory,  # the largest site's
        "per_cloudlet": sites,
        "server": server,
    }
