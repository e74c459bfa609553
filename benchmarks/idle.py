"""The benchmarks' one wait for an idle machine.

A 2-core shared host: anything else running (a test suite, a pip install, another benchmark)
halves what a timed run gets, and the engine's thread rule (engines/threads.py) gives a run
one thread when others are busy. So timed runs start only after the other processes have
used under ``threshold_cores`` for ``windows`` consecutive windows, measured from
``/proc/stat`` as the engine measures it (engines/cpu_load.py) — not from the load average,
which lags a minute behind and still counts the repetition that just ended.
"""

from __future__ import annotations

import time

from tinytwin.engines.cpu_load import busy_cores_of_others  # torch-free: the driver stays light


def wait_for_idle(max_wait_s: float, threshold_cores: float = 0.2, window_s: float = 1.0, windows: int = 5) -> dict:
    """Wait (at most ``max_wait_s``) until other processes use < ``threshold_cores`` for ``windows``
    windows of ``window_s``; returns how long it waited, the last window's busy cores and whether it got idle."""
    t0 = time.perf_counter()
    quiet, last = 0, 0.0
    while True:
        busy = busy_cores_of_others(window_s)
        last = 0.0 if busy is None else busy  # no /proc/stat: nothing to wait for
        quiet = quiet + 1 if last < threshold_cores else 0
        waited = time.perf_counter() - t0
        if quiet >= windows or waited >= max_wait_s:
            return {"waited_s": round(waited, 1), "busy_cores_before": round(last, 2), "idle": quiet >= windows}
