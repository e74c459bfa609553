"""How many intra-op threads torch should use for a workload.

Microcontroller-sized models make tiny tensor operations; below a few tens of millions of
multiply-accumulates per step, synchronising a second intra-op thread costs more than it
saves (docs/benchmarks.md: the 100-device digits workload runs a round in 12.6 ms on one
thread against 50 ms on two). Large fleets and models keep torch's default.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: Multiply-accumulates per training step (devices x batch x parameters) below which one thread is used.
SINGLE_THREAD_MACS = 20_000_000


def threads_for(macs_per_step: int) -> int:
    return 1 if macs_per_step < SINGLE_THREAD_MACS else torch.get_num_threads()


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the body with ``n`` intra-op threads, restoring the previous setting after."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)
