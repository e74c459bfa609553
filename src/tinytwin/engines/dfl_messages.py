"""The decentralized simulator's vocabulary, shared by the engine and its protocols: a batch
of device-to-device :class:`Messages` (what they carry and, once priced by the link model,
what they cost), what an algorithm may look at in a round (:class:`Ctx`), and the state that
carries over between rounds (:class:`DState`, the checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tinytwin.engines.state import Checkpointed

#: Bytes of the age counter an age-weighted gossip message carries (uint32).
AGE_HEADER_BYTES = 4


# ---------------------------------------------------------------------------------- messages


@dataclass
class Messages:
    """A batch of device-to-device messages (M of them), what they carry and what they cost."""

    src: np.ndarray
    dst: np.ndarray
    payload: np.ndarray  # payload bytes (the frame adds its header)
    sent_at: np.ndarray
    data: dict[str, Any] = field(default_factory=dict)  # tensors (M, ...) or lists of length M
    arrive_at: np.ndarray | None = None
    wire: np.ndarray | None = None  # bytes on the link, retransmissions included
    lost: np.ndarray | None = None  # packets lost and resent
    airtime: np.ndarray | None = None  # seconds the sender sends and the receiver listens

    ARRAYS = ("src", "dst", "payload", "sent_at", "arrive_at", "wire", "lost", "airtime")

    def __len__(self) -> int:
        return int(self.src.size)

    @classmethod
    def empty(cls) -> Messages:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z.copy(), z.copy(), np.zeros(0), {}, np.zeros(0), z.copy(), z.copy(), np.zeros(0))

    def take(self, sel: np.ndarray) -> Messages:
        """The messages at ``sel`` (a boolean mask or an index array, in that order)."""
        sel = np.flatnonzero(sel) if np.asarray(sel).dtype == bool else np.asarray(sel, dtype=np.int64)
        data = {
            k: v[torch.from_numpy(sel)] if isinstance(v, Tensor) else [v[i] for i in sel] for k, v in self.data.items()
        }

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[sel]

        return Messages(
            self.src[sel],
            self.dst[sel],
            self.payload[sel],
            self.sent_at[sel],
            data,
            pick(self.arrive_at),
            pick(self.wire),
            pick(self.lost),
            pick(self.airtime),
        )

    def priced(self, name: str) -> np.ndarray:
        """A figure the link model adds (``arrive_at``, ``wire``, ``lost``, ``airtime``): the
        messages must have been priced (``DecentralizedSimulator._price``)."""
        v: np.ndarray | None = getattr(self, name)
        if v is None:
            raise ValueError(f"messages not priced: no {name}")
        return v

    @staticmethod
    def concat(parts: list[Messages]) -> Messages:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Messages.empty()
        if len(parts) == 1:
            return parts[0]
        data: dict[str, Any] = {}
        for k in parts[0].data:
            vals = [p.data[k] for p in parts]
            data[k] = torch.cat(vals) if isinstance(vals[0], Tensor) else [x for v in vals for x in v]

        def cat(name: str) -> np.ndarray | None:
            vals = [getattr(p, name) for p in parts]
            return None if any(v is None for v in vals) else np.concatenate(vals)

        src, dst, payload, sent_at, arrive_at, wire, lost, airtime = (cat(k) for k in Messages.ARRAYS)
        assert src is not None and dst is not None and payload is not None and sent_at is not None  # never None
        return Messages(src, dst, payload, sent_at, data, arrive_at, wire, lost, airtime)


@dataclass
class Ctx:
    """What the algorithm may look at in one round (or tick)."""

    key: int  # round (sync) or tick index (async): keys the random streams
    online: np.ndarray  # (D,) bool
    edges: np.ndarray  # usable links now
    neighbours: tuple[np.ndarray, np.ndarray]
    now: float  # virtual time of the sends


# ---------------------------------------------------------------------------------- state


@dataclass
class DState(Checkpointed):
    """Everything that carries over between rounds (the checkpoint)."""

    round: int
    params: Tensor
    sim_time_s: float
    energy_j: np.ndarray
    local_rounds: np.ndarray
    lr_state: dict[str, Any]
    proto: dict[str, Any]
    clock: dict[str, Any]
    bytes_up: int = 0
    bytes_down: int = 0
    messages: int = 0
    accuracies: list[tuple[int, float]] = field(default_factory=list)
    last_metrics: dict[str, Any] = field(default_factory=dict)
