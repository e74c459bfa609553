"""The directory of a decentralized emulation: link keys, and who talks to whom in a round.

The coordinator of a decentralized emulation is a bootstrap directory and a metrics
collector, never a relay: models go device to device. It decides *once*, with the very
functions the simulator uses, what every device needs to know about a round, and sends
each device only its own entry (:class:`RoundEntry`):

- the usable links: :meth:`tinytwin.net.topology.Topology.active_edges` of the link
  timeline's state in round r and the devices taking part (``tinytwin.engines.network``);
- DecFedAvg: the device's row of :func:`tinytwin.net.topology.metropolis_hastings` over
  those links; server-free FL: its row of
  :func:`tinytwin.algorithms.mixing.serverfree_weights`;
- gossip and Gist: the pushes of :func:`tinytwin.algorithms.gossip.choose_peers`, drawn
  from the ``PEERS`` stream of round r exactly as the simulator draws them, so both twins
  send the same messages; a device learns whom it pushes to and whom it will hear from.
  Gist also tells a device its row among the round's senders and the position of its
  first message in the round's message list: with them the device draws, from the
  simulator's ``BANDS`` streams, exactly the uniforms (and SDFA orders) the simulator
  draws for it (:mod:`tinytwin.algorithms.gist_np`).
- segmented gossip: the pulls of :func:`tinytwin.algorithms.segments.choose_replicas` (same
  ``PEERS`` draws): a device learns which segment it requests from whom (and that peer's
  data size, its merge weight) and how many requests it must answer from whom.

Keys: the link between devices a < b is authenticated with
``HMAC-SHA256(run_key, "tinytwin-emulate-link-a-b")`` (:func:`link_key`); a device gets the
keys of its own links only (graph neighbours; for gossip and Gist with ``peer: random``,
whose overlay is complete, every other device).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

import numpy as np

from tinytwin.emulate.dfl_algorithms import PlanContext, lookup
from tinytwin.engines.network import Network
from tinytwin.net.topology import full
from tinytwin.spec.schema import AlgorithmSpec


def link_key(run_key: bytes, a: int, b: int) -> bytes:
    """The key of the direct link between devices ``a`` and ``b`` (both directions)."""
    lo, hi = sorted((int(a), int(b)))
    return hmac.new(run_key, b"tinytwin-emulate-link-%d-%d" % (lo, hi), hashlib.sha256).digest()


def link_partners(alg: AlgorithmSpec, network: Network) -> list[list[int]]:
    """For every device, the devices it may ever exchange frames with (sorted)."""
    n = network.topology.num_nodes
    edges = full(n).edges if lookup(alg).random_peers(alg) else network.topology.edges
    out: list[list[int]] = [[] for _ in range(n)]
    for u, v in edges.tolist():
        out[u].append(v)
        out[v].append(u)
    return [sorted(p) for p in out]


@dataclass
class RoundEntry:
    """What one device is told at the start of a round (the ``round`` CONTROL's payload)."""

    online: bool
    send: list[int] = field(default_factory=list)  # destinations, in send order, per exchange step
    expect: dict[int, int] = field(default_factory=dict)  # sender -> models per exchange step
    self_weight: float = 1.0  # mixing algorithms
    weights: dict[int, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # algorithm-specific (Gist: row, offset)

    def control(self, round_: int, lr: float, steps: int) -> dict:
        msg: dict = {"cmd": "round", "round": round_, "online": self.online}
        if self.online:
            msg.update(lr=lr, steps=steps, send=self.send, expect={str(k): v for k, v in self.expect.items()})
            if self.weights or self.self_weight != 1.0:
                msg.update(self_weight=self.self_weight, weights={str(k): w for k, w in self.weights.items()})
            msg.update(self.extra)
        return msg


@dataclass
class RoundPlan:
    round: int
    online: np.ndarray  # (D,) bool: devices taking part
    edges: np.ndarray  # usable links
    entries: dict[int, RoundEntry]
    steps: int

    @property
    def messages(self) -> int:
        """Messages the plan makes devices send (segmented gossip: requests and their responses)."""
        serve = sum(sum(e.extra.get("requests", {}).values()) for e in self.entries.values())
        return sum(len(e.send) for e in self.entries.values()) * self.steps + serve


def plan_round(
    alg: AlgorithmSpec,
    seed: int,
    network: Network,
    online: np.ndarray,
    r: int,
    num_params: int = 0,
    data_sizes: np.ndarray | None = None,
) -> RoundPlan:
    """The round-``r`` directory entry of every device (offline ones: ``online=False``), by the
    algorithm's registered planner (:mod:`tinytwin.emulate.dfl_algorithms`).

    Segmented gossip also needs the model's ``num_params`` (how many segments there are) and
    every device's ``data_sizes`` (the merge weights of the pulled segments)."""
    topo = network.topology
    edges = topo.active_edges(network.links.edge_up(r), online)
    entries = {d: RoundEntry(bool(online[d])) for d in range(topo.num_nodes)}
    ctx = PlanContext(alg, seed, r, topo, online, edges, entries, num_params, data_sizes)
    steps = lookup(alg).plan(ctx)
    return RoundPlan(r, online, edges, entries, steps)
