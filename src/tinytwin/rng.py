"""Deterministic random streams.

Every random choice is keyed by (seed, stream, round, device, ...), never by the order in
which the program happens to ask, so that

- the same spec and seed give the same results bit for bit;
- a resumed run draws exactly what an uninterrupted run would have drawn;
- a device's data order does not depend on which other devices take part in a round,
  and the batched engine and the per-device reference loop see the same batches.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    INIT = 1
    SHUFFLE = 2
    SELECT = 3
    DROPOUT = 4
    LINK_LOSS = 5
    FAILURES = 6
    PARTITION = 7
    # decentralized and hierarchical learning
    TOPOLOGY = 101  # random graphs and device placement
    LINK_OUTAGE = 102  # per-round random link outages
    PEERS = 103  # whom a device pushes to / pulls from
    BANDS = 104  # which Gist band a send carries; SDFA's random segments
    MSG_LOSS = 105  # lost packets of device-to-device messages
    VALIDATION = 106  # the shared validation subset (Gist)
    # heterogeneous fleets
    PROXY = 201  # the held-out proxy slice of the training set (distillation)
    DISTILL = 202  # the server's distillation batches


def stream_rng(seed: int, stream: Stream, *keys: int) -> np.random.Generator:
    """A numpy generator for one (seed, stream, keys...) tuple."""
    return np.random.default_rng([int(seed), int(stream), *map(int, keys)])


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a cheap, well-mixed bijection on uint64 (vectorised)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def hash_keys(*parts: np.ndarray | int) -> np.ndarray:
    """Hash broadcastable integer arrays into uint64 keys, one per element."""
    with np.errstate(over="ignore"):
        acc: np.ndarray = np.asarray(np.uint64(0x243F6A8885A308D3))
        for part in parts:
            acc = _mix64(acc.astype(np.uint64) + np.asarray(part).astype(np.uint64) * _GOLDEN + _GOLDEN)
    return np.asarray(acc)


def device_permutations(seed: int, round_: int, epoch: int, device_ids: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Per-device random orders of ``range(sizes[d])``, padded with -1 to the largest size.

    Vectorised over devices: each device's order is the argsort of hashed keys of
    (seed, round, epoch, device, position), so it depends only on that device.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    width = int(sizes.max()) if sizes.size else 0
    pos = np.arange(width, dtype=np.int64)[None, :]
    keys = hash_keys(
        int(seed), int(Stream.SHUFFLE), int(round_), int(epoch), np.asarray(device_ids, dtype=np.int64)[:, None], pos
    )
    valid = pos < sizes[:, None]
    keys = np.where(valid, keys >> np.uint64(1), np.uint64(2**63))  # padding sorts last
    order = np.argsort(keys, axis=1, kind="stable")
    return np.where(np.take_along_axis(valid, order, axis=1), order, -1)
