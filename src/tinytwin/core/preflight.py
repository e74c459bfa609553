"""Checks a run passes before its folder exists, the same for every twin: a decentralized or
hierarchical run's network (topology, link timeline) and the memory of its algorithm's buffers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinytwin.engines.experiment import Experiment, refuse_if_unfit


def check_family(exp: Experiment, base_dir: Path | None) -> Any:
    """Everything a decentralized or hierarchical run needs checked before its folder exists;
    returns its network (None for a centralized run)."""
    family = exp.spec.algorithm.family
    if family == "centralized":
        return None
    from tinytwin.engines.network import build_network

    network = build_network(exp.spec, exp.fleet, base_dir)
    if family == "decentralized":
        from tinytwin.engines.decentralized import memory_plans

        refuse_if_unfit(memory_plans(exp))
    else:
        from tinytwin.engines.hierarchical import check_hierarchical

        check_hierarchical(exp, base_dir)
    return network
