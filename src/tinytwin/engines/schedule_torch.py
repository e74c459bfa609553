"""The local-training schedule computed on the engine's torch device.

:meth:`LocalTrainer.schedule <tinytwin.engines.local_training.LocalTrainer.schedule>` hashes
(seed, round, epoch, device, position) keys with numpy on the CPU: at a million devices
that is 60 million SplitMix64 hashes and argsorts per epoch, several seconds a round, while
a GPU trains the same fleet in about one. This module computes the same keys with torch
int64 arithmetic on the GPU (two's-complement multiplication and addition wrap exactly as
uint64 does; right shifts are made logical with a mask), so the schedule is identical,
element for element, to the numpy one; a test holds the two equal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tinytwin.engines.shards import Shards, sizes_of
from tinytwin.rng import Stream


def _s64(c: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


_M1 = _s64(0xBF58476D1CE4E5B9)
_M2 = _s64(0x94D049BB133111EB)
_GOLDEN = _s64(0x9E3779B97F4A7C15)
_START = _s64(0x243F6A8885A308D3)
_U64 = 1 << 64
_GOLDEN_U = 0x9E3779B97F4A7C15


def _lsr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` on int64 is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 bits, equal to :func:`tinytwin.rng._mix64` on uint64."""
    x = (x ^ _lsr(x, 30)) * _M1
    x = (x ^ _lsr(x, 27)) * _M2
    return x ^ _lsr(x, 31)


def hash_keys(*parts: torch.Tensor | int) -> torch.Tensor:
    """:func:`tinytwin.rng.hash_keys` for non-negative inputs, as int64 bits.

    Leading scalar parts are hashed exactly with Python integers; from the first tensor on,
    with int64 tensors."""
    acc: int = _START % _U64
    keys: torch.Tensor | None = None
    for part in parts:
        if keys is None and not isinstance(part, torch.Tensor):
            acc = _mix_scalar((acc + part * _GOLDEN_U + _GOLDEN_U) % _U64)
            continue
        base = keys if keys is not None else _s64(acc)
        step: torch.Tensor | int = (
            part * _GOLDEN + _GOLDEN if isinstance(part, torch.Tensor) else _s64((part * _GOLDEN_U + _GOLDEN_U) % _U64)
        )
        keys = _mix64(torch.as_tensor(base + step))
    if keys is None:
        raise ValueError("hash_keys needs at least one tensor part")
    return keys


def _mix_scalar(x: int) -> int:
    """SplitMix64 finaliser on a Python int in [0, 2**64)."""
    x = ((x ^ (x >> 30)) * (_M1 % _U64)) % _U64
    x = ((x ^ (x >> 27)) * (_M2 % _U64)) % _U64
    return x ^ (x >> 31)


def device_permutations(
    seed: int, round_: int, epoch: int, device_ids: torch.Tensor, sizes: torch.Tensor
) -> torch.Tensor:
    """:func:`tinytwin.rng.device_permutations` on ``device_ids``' torch device."""
    width = int(sizes.max()) if sizes.numel() else 0
    pos = torch.arange(width, dtype=torch.int64, device=device_ids.device)[None, :]
    keys = hash_keys(int(seed), int(Stream.SHUFFLE), int(round_), int(epoch), device_ids[:, None], pos)
    valid = pos < sizes[:, None]
    # numpy pads with 2**63, above every shifted key; int64's maximum ties at most with a key
    # of a valid position, which comes first anyway (valid positions are a prefix, the sort stable).
    keys = torch.where(valid, _lsr(keys, 1), torch.iinfo(torch.int64).max)
    order = torch.sort(keys, dim=1, stable=True).indices
    return torch.where(valid.gather(1, order), order, -1)


def padded_indices(indices: Sequence[np.ndarray]) -> np.ndarray:
    """Each device's sample indices in a row, padded with -1 to the longest (at least 1 wide)."""
    if isinstance(indices, Shards):
        return indices.padded()
    sizes = sizes_of(indices)
    padded = np.full((len(indices), max(int(sizes.max()), 1) if sizes.size else 1), -1, dtype=np.int64)
    if sizes.size and sizes.max() > 0:
        padded[np.arange(padded.shape[1])[None, :] < sizes[:, None]] = np.concatenate(indices)
    return padded


def schedule(
    seed: int,
    round_: int,
    epochs: int,
    batch: int,
    device_ids: np.ndarray,
    indices: Sequence[np.ndarray],
    device: torch.device,
) -> torch.Tensor:
    """:meth:`LocalTrainer.schedule` computed on ``device``: (D, epochs·steps_max·B), -1 = padding."""
    sizes_np = sizes_of(indices)
    steps = int(-(-sizes_np.max() // batch)) if sizes_np.size else 0
    padded = torch.from_numpy(padded_indices(indices)).to(device)
    ids = torch.from_numpy(np.asarray(device_ids, dtype=np.int64)).to(device)
    sizes = torch.from_numpy(sizes_np).to(device)
    slots = []
    for epoch in range(epochs):
        order = device_permutations(seed, round_, epoch, ids, sizes)
        glob = torch.where(order >= 0, padded.gather(1, order.clamp_min(0)), -1)
        pad = torch.full((len(indices), steps * batch - glob.shape[1]), -1, dtype=torch.int64, device=device)
        slots.append(torch.cat([glob, pad], dim=1))
    return torch.cat(slots, dim=1)
