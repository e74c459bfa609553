"""Leave the process at once after a command that succeeded and imported torch.

Tearing down an interpreter that imported torch costs 0.3–1.3 s (its modules, thread pools
and runtimes; 0.3 s here for ``import torch`` plus one matmul, more on a busy machine), longer
than the quickstart's whole training loop. When a command has returned successfully its
results are on disk (run stores are closed, reports and CSVs written atomically), so the
console entry point flushes the standard streams and ends the process with ``os._exit``.
It does not when something still relies on the interpreter's shutdown: child processes
(emulation, sweeps), a Ray session, or a non-daemon thread.
"""

from __future__ import annotations

import logging
import os
import sys
import threading


def exit_now_if_safe(code: int = 0) -> None:
    """``os._exit(code)`` after flushing, when torch is loaded and nothing needs a normal shutdown."""
    if "torch" not in sys.modules or "ray" in sys.modules:
        return
    import multiprocessing

    if multiprocessing.active_children():
        return
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there anyway
            pass
    os._exit(code)
