"""Fork server for peer processes: import the runtime once, fork one process per device.

A 200-device emulation would otherwise start 200 interpreters that each import numpy
(~0.15 s of CPU and ~20 MB of private memory apiece). The coordinator instead starts this
module once, as a fresh interpreter that never sees torch (``python -m
tinytwin.emulate.forkserver``); it imports numpy and :mod:`tinytwin.emulate.peer`, makes
the first BLAS call, and then forks a child per request. Every device is still its own
OS process with its own PID, sockets, memory cap and fate under ``SIGKILL``; the pages of
the interpreter and numpy are shared copy-on-write, so the fleet's PSS is much smaller.

Protocol on stdin / stdout, one line each:

- ``spawn DEVICE CONFIG LOG`` → ``pid DEVICE PID`` (the child runs
  :func:`tinytwin.emulate.peer.main` with ``CONFIG``, stderr appended to ``LOG``);
- when a child ends → ``exit DEVICE PID STATUS`` (exit code, or ``-signal``).

End of stdin ends the server (its children keep running until the coordinator stops them).
Requires ``OPENBLAS_NUM_THREADS=1`` (no BLAS threads may exist at ``fork``).
"""

from __future__ import annotations

import gc
import importlib
import os
import select
import sys
import traceback
from collections.abc import Callable

from tinytwin.emulate import peer
from tinytwin.emulate.runtime_env import warm_blas


def _child(cfg_path: str, log_path: str, main: Callable[[list[str]], int] | None = None) -> None:
    code = 1
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # logs: private like the rest
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        code = (main or peer.main)([cfg_path])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def serve(main: Callable[[list[str]], int] | None = None) -> int:
    """Fork children that run ``main(["CONFIG"])`` (default: the peer runtime)."""
    warm_blas()  # OpenBLAS's buffers, before fork: shared by the children, in their baseline
    # Keep the children's garbage collector off the inherited objects, so that a collection does
    # not write to (and copy) their shared pages (Python docs, gc.freeze; measured: ~1 MB less PSS
    # per device — most of a device's ~10 MB PSS is its own heap, data and BLAS buffers).
    gc.freeze()
    children: dict[int, int] = {}  # pid -> device
    buf = b""
    open_in = True
    while open_in or children:
        ready, _, _ = select.select([0] if open_in else [], [], [], 0.05)
        if ready:
            chunk = os.read(0, 65536)
            if not chunk:
                open_in = False
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                parts = line.decode().split(" ", 3)
                if len(parts) != 4 or parts[0] != "spawn":
                    continue
                device, cfg_path, log_path = int(parts[1]), parts[2], parts[3]
                pid = os.fork()
                if pid == 0:
                    _child(cfg_path, log_path, main)
                children[pid] = device
                _say(f"pid {device} {pid}")
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            device = children.pop(pid, -1)
            code = os.waitstatus_to_exitcode(status)
            try:
                _say(f"exit {device} {pid} {code}")
            except OSError:  # the coordinator is gone
                pass
        if not open_in and not children:
            break
    return 0


def _entry(argv: list[str]) -> Callable[[list[str]], int] | None:
    """Hook for hierarchical runs: ``python -m tinytwin.emulate.forkserver MODULE`` forks
    children that run ``MODULE.main`` (imported once here, before any fork)."""
    return importlib.import_module(argv[0]).main if argv else None


if __name__ == "__main__":
    sys.exit(serve(_entry(sys.argv[1:])))
