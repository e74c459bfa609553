"""Which devices train together: chunks of devices with similar amounts of local data.

All devices of a chunk step together, so a chunk runs as many steps as its device with the
most data; the others are masked. With skewed data (Dirichlet partitions) most of a fleet's
steps are then padding: in the 1 000-device quickstart a few devices hold 40+ samples and
most hold one or two. Grouping devices into classes of steps within a factor of two
(1, 2, 3-4, 5-8, ...) bounds the padding at 2x, and each device's computation does not
depend on which other devices share its chunk, so the models are bit-identical.
"""

from __future__ import annotations

import numpy as np

#: Fleets smaller than this train in plain chunks: each extra class costs a round of Python
#: dispatch per step, which outweighs the saved arithmetic of a few hundred tiny models.
MIN_BUCKET_DEVICES = 256


def chunk_plan(sizes: np.ndarray, batch: int, chunk_size: int) -> list[np.ndarray]:
    """Positions (into the device list) of each chunk: step classes, each split into chunk_size pieces.

    Without skew (or for a small fleet) this is ``arange`` cut into consecutive chunks, the
    order the engine always used."""
    n = len(sizes)
    steps = -(-np.asarray(sizes, dtype=np.int64) // batch)
    if n < MIN_BUCKET_DEVICES or steps.min(initial=0) == steps.max(initial=0):
        return consecutive_chunks(n, chunk_size)
    classes = np.where(steps > 0, np.ceil(np.log2(np.maximum(steps, 1))).astype(np.int64), -1)
    order = np.argsort(classes, kind="stable")
    bounds = np.flatnonzero(np.diff(classes[order])) + 1
    plan: list[np.ndarray] = []
    for group in np.split(order, bounds):
        plan += [group[lo : lo + chunk_size] for lo in range(0, len(group), chunk_size)]
    return plan


def consecutive_chunks(n: int, chunk_size: int) -> list[np.ndarray]:
    """Positions ``0..n-1`` cut into consecutive chunks of ``chunk_size``."""
    return [np.arange(lo, min(lo + chunk_size, n)) for lo in range(0, n, chunk_size)]
