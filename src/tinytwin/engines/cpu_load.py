"""How busy the machine's other processes keep its cores, from ``/proc/stat``.

The engine's thread rule (engines/threads.py) and the benchmarks' idle waits ask the same
question — is anyone else computing? — and answer it here, without torch, so a benchmark's
driver can ask it without importing the engine. The load average is not used: it is a
one-minute average that still counts the run that just ended.
"""

from __future__ import annotations

import os
import time

#: (monotonic time, machine busy CPU seconds, this process's CPU seconds)
Reading = tuple[float, float, float]


def busy_cores_of_others(window_s: float) -> float | None:
    """Cores the machine's other processes kept busy over the next ``window_s`` seconds (this
    process's own CPU time taken out), or None without a readable ``/proc/stat``."""
    start = cpu_reading()
    if start is None:
        return None
    time.sleep(window_s)
    return others_since(start)


def cpu_reading() -> Reading | None:
    """(monotonic time, machine busy CPU seconds, this process's CPU seconds), or None without ``/proc/stat``."""
    try:
        return time.monotonic(), machine_busy_s(), own_cpu_s()
    except (OSError, ValueError, IndexError):
        return None


def others_since(start: Reading) -> float | None:
    """Cores the other processes kept busy on average since the reading ``start``."""
    now = cpu_reading()
    if now is None or now[0] <= start[0]:
        return None
    return max(0.0, (now[1] - start[1]) - (now[2] - start[2])) / (now[0] - start[0])


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy (user, nice, system, irq, softirq, steal) since boot."""
    with open("/proc/stat") as fh:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fh.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds this process has used (user and system, all its threads)."""
    t = os.times()
    return t.user + t.system
