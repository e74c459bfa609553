"""How many intra-op threads torch should use for a workload.

Microcontroller-sized models make tiny tensor operations. Below a few million
multiply-accumulates per step a second intra-op thread saves nothing (docs/benchmarks.md,
"Threads": the 100-device quickstart, 1.9 M a step, runs a round in the same time on one or two
threads when idle, and twice as slow on two beside busy processes); from 5.8 M up two are a
fifth to a quarter faster on the idle machine. Above it, a second thread helps only on an idle machine: on
a busy one each step waits at barriers for a thread that is not scheduled, and two threads
are about 2x *slower* (docs/benchmarks.md, "Threads": 10 000 MNIST devices beside two busy
processes). So large workloads get every thread only when the machine was idle when the
process first asked; otherwise one. The models do not depend on the thread count
(bench_threads.py checks it), so the choice changes speed only.

"Idle" is what the other processes used, from ``/proc/stat`` (engines/cpu_load.py; steal time included: a virtual
machine's noisy neighbours), between this module's import and the first question — the
process's own setup is the sample, at least 0.15 s — not the load average: that is a one-minute
average, so right after another run — a sweep's previous member, a benchmark's previous
repetition — it still reads busy, and an idle machine got one thread (1.6 s a round instead
of 1.1 s at 10 000 MNIST devices). Where ``/proc/stat`` is missing the load average decides.

Overrides: ``engine.threads`` in the experiment file, or the ``TINYTWIN_THREADS`` environment
variable (the spec wins).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from tinytwin.engines.cpu_load import busy_cores_of_others, cpu_reading, others_since

#: Multiply-accumulates per training step (devices x batch x parameters) below which one thread is used.
SINGLE_THREAD_MACS = 5_000_000
#: The machine counts as idle when the other processes keep less than this fraction of its cores busy.
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


#: The shortest stretch over which the other processes' CPU use is measured.
IDLE_SAMPLE_S = 0.15
#: A stretch since the engine was imported longer than this says little about now: sample afresh.
STALE_SAMPLE_S = 5.0


@functools.cache
def machine_idle() -> bool:
    """Whether the machine was idle the first time this process asked (asked once: later, the
    process's own training would count as load)."""
    limit = IDLE_LOAD_FRACTION * (os.cpu_count() or 1)
    busy = others_busy()
    if busy is not None:
        return busy < limit
    try:
        return os.getloadavg()[0] < limit
    except OSError:  # no load average on this platform: assume shared
        return False


def others_busy() -> float | None:
    """Cores the other processes kept busy lately: measured from the reading taken when this
    module was imported (the process's setup, a spec, data and model, is the sample — no
    waiting), topped up to ``IDLE_SAMPLE_S``, or afresh when that reading is stale or missing."""
    if _IMPORTED is None or time.monotonic() - _IMPORTED[0] > STALE_SAMPLE_S:
        return busy_cores_of_others(IDLE_SAMPLE_S)
    time.sleep(max(0.0, IDLE_SAMPLE_S - (time.monotonic() - _IMPORTED[0])))
    return others_since(_IMPORTED)


_IMPORTED = cpu_reading()


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
