"""The experiment's network: topology and link timeline built from the spec and the fleet.

Built before any run folder exists, so a bad topology (unknown file, a link event naming
a pair that is not a link, a geometric graph without a radio range) is a one-line spec
error, never a half-written run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinytwin.errors import SpecError
from tinytwin.fleet.build import Fleet
from tinytwin.net.topology import (
    RADIO_RANGE_M,
    LinkTimeline,
    Topology,
    build_link_timeline,
    components,
    make_topology,
    read_positions_file,
)
from tinytwin.rng import Stream, stream_rng
from tinytwin.spec.schema import ExperimentSpec


@dataclass(frozen=True)
class Network:
    topology: Topology
    links: LinkTimeline
    ranges_m: np.ndarray | None = None

    def describe(self) -> dict:
        count, labels = components(self.topology.num_nodes, self.topology.edges)
        sizes = np.bincount(labels) if labels.size else np.zeros(0, dtype=int)
        deg = self.topology.degrees()
        return {
            "kind": self.topology.kind,
            "devices": self.topology.num_nodes,
            "links": self.topology.num_edges,
            "components": count,
            "component_sizes": sorted(map(int, sizes), reverse=True),
            "degree_min": int(deg.min()) if deg.size else 0,
            "degree_max": int(deg.max()) if deg.size else 0,
            "degree_mean": float(deg.mean()) if deg.size else 0.0,
        }


def _resolve(path: str, base_dir: Path | None, key: str) -> Path:
    p = Path(path)
    if not p.is_absolute() and base_dir is not None and not p.exists():
        p = base_dir / p
    if not p.is_file():
        raise SpecError(key, f"file {path} not found")
    return p


def build_network(spec: ExperimentSpec, fleet: Fleet, base_dir: Path | None = None) -> Network:
    t = spec.topology
    n = fleet.num_devices
    rng = stream_rng(spec.seed, Stream.TOPOLOGY)
    positions = None
    if t.positions_file is not None:
        try:
            positions = read_positions_file(_resolve(t.positions_file, base_dir, "topology.positions_file"), n)
        except ValueError as exc:
            raise SpecError("topology.positions_file", str(exc)) from None
    ranges = None
    if t.kind == "geometric":
        if t.radius_m is not None:
            ranges = np.full(n, float(t.radius_m))
        else:
            per_group = []
            for g in fleet.groups:
                r, _ = RADIO_RANGE_M.get(g.link.name, (None, ""))
                if r is None:
                    raise SpecError(
                        "topology.radius_m",
                        f"group {g.name!r} uses link {g.link.name!r}, which has no "
                        "radio range in tinytwin.net.topology.RADIO_RANGE_M; set topology.radius_m (metres)",
                    )
                per_group.append(r)
            ranges = np.array(per_group, dtype=np.float64)[fleet.group_of]
    edge_file = _resolve(t.file, base_dir, "topology.file") if t.kind == "file" and t.file else None
    try:
        topo = make_topology(
            t.kind,
            n,
            rng,
            p=t.p,
            k=t.k,
            beta=t.beta,
            rows=t.rows,
            hub=t.hub,
            area_m=t.area_m,
            ranges_m=ranges,
            positions=positions,
            edge_file=edge_file,
        )
    except ValueError as exc:
        key = {"torus": "topology.rows", "file": "topology.file", "star": "topology.hub"}.get(t.kind, "topology")
        raise SpecError(key, str(exc)) from None
    events = [(ev.round, [(int(e[0]), int(e[1])) for e in ev.edges], ev.state) for ev in t.link_events]
    try:
        timeline = build_link_timeline(
            topo, spec.rounds, events, t.link_down_probability, lambda r: stream_rng(spec.seed, Stream.LINK_OUTAGE, r)
        )
    except ValueError as exc:
        raise SpecError("topology.link_events", str(exc)) from None
    return Network(topo, timeline, ranges)
