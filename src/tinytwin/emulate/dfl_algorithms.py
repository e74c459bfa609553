"""The decentralized algorithms the emulation twin runs, each registered once with its round
plan and what its messages and peers need — looked up by the coordinator and its directory
instead of switching on the algorithm's name.

An entry says:

- ``plan``: who sends what to whom in a round (fills every online device's
  :class:`~tinytwin.emulate.dfl_directory.RoundEntry`; returns the exchange steps), drawn
  with the simulator's own functions and random streams, so both twins send the same messages;
- ``peers``: the spec block whose ``peer`` says whether partners are graph neighbours or any
  online device (a complete overlay), or None (mixing: neighbours always);
- ``payload_bytes``: the largest message payload (the simulator's estimate);
- ``device_block``: what a peer process is told about the algorithm (``algorithm`` in its
  configuration file, read by :mod:`tinytwin.emulate.peer`): the ``payload`` its frames
  carry (``model``: whole models, ``gist``: Gist segments, ``segments``: pull requests and
  pulled segments) and the ``merge`` rule it applies (``mix``, ``average``, ``age``, ``fifo``,
  ``gist``, ``pull``), so a peer never looks at the algorithm's name.

The directory (:mod:`tinytwin.emulate.dfl_directory`) calls the planner of the run's algorithm."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinytwin.algorithms import gist_np
from tinytwin.algorithms.gossip import choose_peers
from tinytwin.algorithms.mixing import serverfree_weights
from tinytwin.algorithms.robust_merge import ROBUST_MERGES
from tinytwin.algorithms.segments import choose_replicas, contiguous_bounds
from tinytwin.engines.decentralized import AGE_HEADER_BYTES
from tinytwin.net.topology import metropolis_hastings
from tinytwin.rng import Stream, stream_rng
from tinytwin.spec.schema import AlgorithmSpec
from tinytwin.wire import encoding as enc


@dataclass(frozen=True)
class EmulatedAlgorithm:
    """How the emulation twin runs one decentralized algorithm (see the module docstring)."""

    name: str
    plan: Callable[..., int]
    peers: Callable[[AlgorithmSpec], Any] | None
    payload_bytes: Callable[[AlgorithmSpec, int, list[int]], int]
    device_block: Callable[[AlgorithmSpec, int], dict[str, Any]]

    def random_peers(self, a: AlgorithmSpec) -> bool:
        """Partners drawn from every online device (a complete overlay), not graph neighbours."""
        return self.peers is not None and self.peers(a).peer == "random"


REGISTRY: dict[str, EmulatedAlgorithm] = {}


def register(entry: EmulatedAlgorithm) -> EmulatedAlgorithm:
    REGISTRY[entry.name] = entry
    return entry


def lookup(a: AlgorithmSpec) -> EmulatedAlgorithm:
    """The registered entry of the spec's algorithm (ValueError: not emulated)."""
    try:
        return REGISTRY[a.name]
    except KeyError:
        raise ValueError(f"no emulated round plan for {a.name}") from None


def model_payload(a: AlgorithmSpec, p: int, sizes: list[int]) -> int:
    """A whole model in the spec's encoding."""
    return enc.encoded_size(p, a.encoding, tensor_sizes=sizes)


def gossip_payload(a: AlgorithmSpec, p: int, sizes: list[int]) -> int:
    """A whole model, with the sender's model age in front when the merge is age-weighted."""
    return model_payload(a, p, sizes) + (AGE_HEADER_BYTES if a.gossip.merge == "age" else 0)


def gist_payload(a: AlgorithmSpec, p: int, sizes: list[int]) -> int:
    """Gist's largest segment message (the simulator's message_payload_estimate)."""
    return gist_np.payload_size(p, -(-p // max(1, a.gist.segments)))


def segment_payload(a: AlgorithmSpec, p: int, sizes: list[int]) -> int:
    """One float32 segment of segmented gossip."""
    return 4 * -(-p // a.segments.count)


def base_block(a: AlgorithmSpec, p: int) -> dict[str, Any]:
    """Mixing (DecFedAvg, server-free FL): whole models, merged with the device's mixing row."""
    return {"name": a.name, "payload": "model", "merge": "mix"}


def mixing_block(a: AlgorithmSpec, p: int) -> dict[str, Any]:
    """DecFedAvg / server-free FL: the mixing row, or a robust merge (algorithms/robust_merge.py)."""
    if a.aggregator.name in ROBUST_MERGES:
        return {**base_block(a, p), "merge": "robust", "rule": a.aggregator.name, "beta": a.aggregator.beta}
    return base_block(a, p)


def gossip_block(a: AlgorithmSpec, p: int) -> dict[str, Any]:
    g = a.gossip
    return {**base_block(a, p), "merge": g.merge, "exchange": g.exchange, "buffer_size": g.buffer_size}


def gist_block(a: AlgorithmSpec, p: int) -> dict[str, Any]:
    return {**base_block(a, p), "payload": "gist", "merge": "gist", "gist": a.gist.model_dump()}


def segments_block(a: AlgorithmSpec, p: int) -> dict[str, Any]:
    bounds = contiguous_bounds(p, a.segments.count).tolist()
    return {**base_block(a, p), "payload": "segments", "merge": "pull", "segment_bounds": bounds}


@dataclass(frozen=True)
class PlanContext:
    """What a planner draws a round from: the spec, the round's random streams, the usable links."""

    alg: AlgorithmSpec
    seed: int
    r: int
    topo: Any
    online: np.ndarray
    edges: np.ndarray
    entries: dict[int, Any]
    """device -> its RoundEntry (tinytwin.emulate.dfl_directory), filled in by the planner."""
    num_params: int
    data_sizes: np.ndarray | None

    def neighbours(self, random_peers: bool) -> Any:
        return None if random_peers else self.topo.neighbours(self.edges)


def plan_mixing(ctx: PlanContext) -> int:
    """DecFedAvg / server-free FL: every online device sends to and expects from its mixing row."""
    alg, n, online = ctx.alg, ctx.topo.num_nodes, ctx.online
    w = (
        metropolis_hastings(n, ctx.edges, online)
        if alg.name == "decfedavg"
        else serverfree_weights(n, ctx.edges, online)
    ).tocsr()
    for d in np.flatnonzero(online).tolist():
        lo, hi = w.indptr[d], w.indptr[d + 1]
        row = {int(j): float(v) for j, v in zip(w.indices[lo:hi], w.data[lo:hi])}
        e = ctx.entries[d]
        e.self_weight = row.pop(d, 0.0)
        e.weights = row
        e.send = sorted(row)
        e.expect = {j: 1 for j in sorted(row)}
    return alg.decfedavg.mixing_steps if alg.name == "decfedavg" else 1


def plan_pushes(ctx: PlanContext, g: Any, first_offset: bool) -> None:
    """Gossip-style pushes (choose_peers on the PEERS stream); ``first_offset``: record where
    each sender's first message sits in the round's message list."""
    entries = ctx.entries
    ids = np.flatnonzero(ctx.online)
    src, dst = choose_peers(
        stream_rng(ctx.seed, Stream.PEERS, ctx.r), ids, g.sends, ctx.online, ctx.neighbours(g.peer == "random")
    )
    inbound: dict[int, Counter[int]] = {}
    for m, (s, t) in enumerate(zip(src.tolist(), dst.tolist())):
        if first_offset and not entries[s].send:
            entries[s].extra["offset"] = m  # its first message: where its band draws start
        entries[s].send.append(t)
        inbound.setdefault(t, Counter())[s] += 1
    for t, c in inbound.items():
        entries[t].expect = dict(sorted(c.items()))


def plan_pairs(ctx: PlanContext, g: Any) -> None:
    """Gossip ``exchange: push_pull``: the pushes of :func:`plan_pushes` (same draws) become
    pairs, exchanged in the simulator's global message order (``pairwise_merge``). Both ends of
    pair (s, d) list the partner in ``send`` in that order, so each device walks its own pairs
    in the global order, and expect one model from it per pair: the j-th model a partner sends
    answers the j-th pair with it. A pair waits only on pairs earlier in the global order, so
    the walk cannot deadlock."""
    src, dst = choose_peers(
        stream_rng(ctx.seed, Stream.PEERS, ctx.r),
        np.flatnonzero(ctx.online),
        g.sends,
        ctx.online,
        ctx.neighbours(g.peer == "random"),
    )
    expect: dict[int, Counter[int]] = {}
    for s, t in zip(src.tolist(), dst.tolist()):
        for a, b in ((s, t), (t, s)):
            ctx.entries[a].send.append(b)
            expect.setdefault(a, Counter())[b] += 1
    for a, c in expect.items():
        ctx.entries[a].expect = dict(sorted(c.items()))


def plan_gossip(ctx: PlanContext) -> int:
    """Gossip: each online device pushes its model to ``sends`` peers (``push_pull``: and each
    pair exchanges models, :func:`plan_pairs`)."""
    if ctx.alg.gossip.exchange == "push_pull":
        plan_pairs(ctx, ctx.alg.gossip)
    else:
        plan_pushes(ctx, ctx.alg.gossip, first_offset=False)
    return 1


def plan_gist(ctx: PlanContext) -> int:
    """Gist: gossip's pushes, plus the device's row among the round's senders (SDFA's random
    segments) and the position of its first message in the round's message list (its band draws)."""
    plan_pushes(ctx, ctx.alg.gist, first_offset=True)
    for row, d in enumerate(np.flatnonzero(ctx.online).tolist()):
        ctx.entries[d].extra = {"gist": {"row": row, "offset": ctx.entries[d].extra.get("offset", 0)}}
    return 1


def plan_segments(ctx: PlanContext) -> int:
    """Segmented gossip: every device pulls each segment from ``replicas`` peers (choose_replicas,
    the simulator's PEERS draws): a request to each, in order (segment, replica); the peer answers
    each request with its trained copy of that segment."""
    sg, entries = ctx.alg.segments, ctx.entries
    ids = np.flatnonzero(ctx.online)
    num_segments = len(contiguous_bounds(int(ctx.num_params), sg.count)) - 1
    peers = choose_replicas(
        stream_rng(ctx.seed, Stream.PEERS, ctx.r),
        ids,
        num_segments,
        sg.replicas,
        ctx.online,
        ctx.neighbours(sg.peer == "random"),
    )
    n = ctx.topo.num_nodes
    sizes = np.ones(n) if ctx.data_sizes is None else np.asarray(ctx.data_sizes, dtype=np.float64)
    requests: dict[int, Counter[int]] = {}
    for i, d in enumerate(ids.tolist()):
        e = entries[d]
        pulls: list[list[Any]] = []
        for seg in range(num_segments):
            for p in peers[i, seg].tolist():
                if p < 0:
                    continue
                e.send.append(p)
                pulls.append([seg, p, float(sizes[p])])
                e.expect[p] = e.expect.get(p, 0) + 1
                requests.setdefault(p, Counter())[d] += 1
        e.extra = {"pulls": pulls, "own_weight": float(sizes[d])}
    for d in ids.tolist():
        entries[d].expect = dict(sorted(entries[d].expect.items()))
        entries[d].extra["requests"] = {str(k): v for k, v in sorted(requests.get(d, Counter()).items())}
    return 1


for _entry in (
    EmulatedAlgorithm("decfedavg", plan_mixing, None, model_payload, mixing_block),
    EmulatedAlgorithm("serverfree", plan_mixing, None, model_payload, mixing_block),
    EmulatedAlgorithm("gossip", plan_gossip, lambda a: a.gossip, gossip_payload, gossip_block),
    EmulatedAlgorithm("gist", plan_gist, lambda a: a.gist, gist_payload, gist_block),
    EmulatedAlgorithm("segmented_gossip", plan_segments, lambda a: a.segments, segment_payload, segments_block),
):
    register(_entry)
