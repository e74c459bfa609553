"""SIGTERM as an exception, so an emulation cleans up when it is asked to stop.

By default SIGTERM ends Python without running ``finally`` blocks: the device processes,
network namespaces, veths and the bridge of the run would be left behind. Inside
:func:`terminate_raises` SIGTERM raises ``SystemExit(143)`` instead (SIGINT already raises
``KeyboardInterrupt``), which unwinds through every ``finally`` (asyncio cancels the
coordinator's tasks, whose ``finally`` kills the devices) and the run is marked incomplete.
Only SIGKILL skips the clean-up; that is what ``--resume`` is for.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

TERMINATED = 128 + signal.SIGTERM


def _raise(signum: int, frame: Any) -> None:
    raise SystemExit(TERMINATED)


@contextmanager
def terminate_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can install handlers; a caller in a thread handles its own
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
