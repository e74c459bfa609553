"""The cloudlet merge rules of reference §6, on state dicts: one definition for every twin.

The simulator (``setups.py``) applies them to its in-process models, the emulation's coordinator
(``emulated.py``) to the states its cloudlet processes send; both therefore merge identically.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
import torch

State = dict[str, torch.Tensor]


def mean_state(states: Sequence[State]) -> State:
    """Unweighted elementwise mean (the seed's master and neighbourhood averages are unweighted)."""
    return {k: torch.stack([s[k] for s in states]).mean(dim=0) for k in states[0]}


def after_epoch(
    setup: str,
    states: list[State],
    neighbours: Sequence[Sequence[int]],
    buffers: list[deque[State]],
    rng: np.random.Generator,
) -> list[State] | None:
    """New states after a local epoch (traditional / server-free), or ``None`` when models stay.

    Gossip: each cloudlet pushes a copy of its model to one uniformly random other cloudlet,
    whose FIFO buffer of two keeps the most recent arrivals; the models themselves stay.
    """
    if setup == "traditional":
        mean = mean_state(states)
        return [mean for _ in states]
    if setup == "serverfree":
        return [mean_state([states[j]] + [states[i] for i in neighbours[j]]) for j in range(len(states))]
    if setup.startswith("gossip") and len(states) > 1:
        for j, st in enumerate(states):
            target = int(rng.choice([i for i in range(len(states)) if i != j]))
            buffers[target].append({k: v.detach().clone() for k, v in st.items()})
    return None


def before_epoch(setup: str, states: list[State], buffers: list[deque[State]]) -> list[State] | None:
    """Gossip: the mean of the two buffered models replaces the local one (``gossip-merge``: the
    mean of them and the local one, so a cloudlet's own update is never discarded)."""
    if not setup.startswith("gossip"):
        return None
    own = setup == "gossip-merge"
    return [mean_state(([st] if own else []) + list(buf)) for st, buf in zip(states, buffers, strict=True)]
