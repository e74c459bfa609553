"""Every device's sample indices as one flat array and offsets (CSR), built once per experiment.

At a million devices a round's list of a million small arrays costs host time before the
accelerator does anything: a ``len`` per device for the sizes, a ``concatenate`` over the list
for the padded index matrix, a list comprehension per chunk (about a second a round, measured on
an H200 in docs/benchmarks.md). :class:`Shards` holds the same indices so that taking a round's
devices, their sizes and their padded index matrix are array operations. It is a sequence of
arrays, so code written for lists of index arrays reads it unchanged; :func:`take` and
:func:`sizes_of` are the vectorised paths for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import numpy as np


class Shards(Sequence[np.ndarray]):
    """Device ``i``'s indices are ``flat[starts[i]:starts[i] + sizes[i]]``.

    Taking devices only selects their starts and sizes (the flat array is shared), so a round's
    chunk costs one gather, when its padded matrix is built."""

    def __init__(self, flat: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> None:
        self.flat = np.asarray(flat, dtype=np.int64)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)

    @classmethod
    def from_offsets(cls, flat: np.ndarray, offsets: np.ndarray) -> Shards:
        """Device ``i``'s indices are ``flat[offsets[i]:offsets[i + 1]]``."""
        offsets = np.asarray(offsets, dtype=np.int64)
        return cls(flat, offsets[:-1], np.diff(offsets))

    @classmethod
    def from_list(cls, parts: Sequence[np.ndarray]) -> Shards:
        sizes = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if len(parts) else np.zeros(0, np.int64)
        return cls.from_offsets(flat, np.concatenate([[0], np.cumsum(sizes)]))

    def __len__(self) -> int:
        return len(self.sizes)

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, i: slice) -> Shards: ...

    def __getitem__(self, i: int | slice) -> np.ndarray | Shards:
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        n = len(self)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(f"device position {i} out of range for {n} devices")
        return self.flat[self.starts[j] : self.starts[j] + self.sizes[j]]

    def take(self, positions: np.ndarray) -> Shards:
        """The shards of ``positions`` (in that order): their starts and sizes, nothing copied."""
        pos = np.asarray(positions, dtype=np.int64)
        return Shards(self.flat, self.starts[pos], self.sizes[pos])

    def padded(self) -> np.ndarray:
        """Each device's indices in a row, padded with -1 to the longest (at least 1 wide)."""
        width = max(int(self.sizes.max(initial=0)), 1)
        if not len(self.flat):
            return np.full((len(self), width), -1, dtype=np.int64)
        cols = np.arange(width, dtype=np.int64)
        inside = cols[None, :] < self.sizes[:, None]
        src = np.minimum(self.starts[:, None] + cols[None, :], len(self.flat) - 1)
        return np.where(inside, self.flat[src], -1)


def sizes_of(indices: Sequence[np.ndarray]) -> np.ndarray:
    """Each device's sample count."""
    if isinstance(indices, Shards):
        return indices.sizes
    return np.fromiter((len(ix) for ix in indices), dtype=np.int64, count=len(indices))


def take(indices: Sequence[np.ndarray], positions: np.ndarray) -> Sequence[np.ndarray]:
    """The index arrays of ``positions``: a :class:`Shards` stays one."""
    if isinstance(indices, Shards):
        return indices.take(positions)
    return [indices[int(i)] for i in positions]
