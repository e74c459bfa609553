"""How many intra-op threads torch should use for a workload.

Microcontroller-sized models make tiny tensor operations. Below a few tens of millions of
multiply-accumulates per step, synchronising a second intra-op thread costs more than it
saves (docs/benchmarks.md: the 100-device digits workload runs a round in 12.6 ms on one
thread against 50 ms on two). Above it, a second thread helps only on an idle machine: on
a busy one each step waits at barriers for a thread that is not scheduled, and two threads
are 2-12x *slower* (benchmarks/bench_threads.py: 10 000 MNIST devices, 4.5 s a round on one
thread against 9.6 s on two at load 3.6 on 2 cores). So large workloads get every thread
only when the machine was idle when the process first asked; otherwise one. The models do
not depend on the thread count (bench_threads.py checks it), so the choice changes speed only.

Overrides: ``engine.threads`` in the experiment file, or the ``TINYTWIN_THREADS`` environment
variable (the spec wins).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: Multiply-accumulates per training step (devices x batch x parameters) below which one thread is used.
SINGLE_THREAD_MACS = 20_000_000
#: The machine counts as idle when its 1-minute load average is below this fraction of its cores.
IDLE_LOAD_FRACTION = 0.25


def threads_for(macs_per_step: int, override: int | None = None) -> int:
    """Intra-op threads for a step of ``macs_per_step``: ``override``, ``TINYTWIN_THREADS``, or the rule."""
    if override is not None:
        return override
    env = os.environ.get("TINYTWIN_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    if macs_per_step < SINGLE_THREAD_MACS or not machine_idle():
        return 1
    return torch.get_num_threads()


@functools.cache
def machine_idle() -> bool:
    """Whether the machine was idle the first time this process asked (asked once: later, the
    process's own training would count as load)."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform: assume shared
        return False
    return load < IDLE_LOAD_FRACTION * (os.cpu_count() or 1)


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
