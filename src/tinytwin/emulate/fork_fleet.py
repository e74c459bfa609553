"""The fork server a decentralized or hierarchical emulation starts its device (and local
aggregator) processes from (:mod:`tinytwin.emulate.forkserver` on the other end), the file
that records them for a resumed coordinator, and the wire-round offset of a resume.

Shared by both families' coordinators, so neither imports the other."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from tinytwin.errors import TinyTwinError
from tinytwin.store.files import open_private_append

PEERS_FILE = "peers.json"
"""``emulate/peers.json``: the fork server's pid and every device process's pid (a resumed
coordinator adopts the ones still running: children of that fork server)."""
WIRE_STRIDE = 1 << 20
"""After the k-th resume a round r travels as round ``r + k * WIRE_STRIDE`` (strictly above every
round number of the abandoned attempt, so its late frames are stale)."""


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (/proc/PID/stat; 0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ForkServer:
    """The coordinator's side of :mod:`tinytwin.emulate.forkserver`: spawn, pids, exit codes."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.pids: dict[int, int] = {}
        self.exits: dict[int, int] = {}  # device -> exit status
        self.exited: dict[int, asyncio.Event] = {}
        self._pid_wait: dict[int, asyncio.Future[int]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.adopted: dict[int, int] = {}  # device -> its (killed coordinator's) fork server's pid

    async def start(self, env: dict[str, str], log_path: Path) -> None:
        with open_private_append(log_path) as errf:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tinytwin.emulate.forkserver",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=errf,
                env=env,
            )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            parts = line.decode().split()
            if parts[0] == "pid":
                d, pid = int(parts[1]), int(parts[2])
                self.pids[d] = pid
                fut = self._pid_wait.pop(d, None)
                if fut is not None and not fut.done():
                    fut.set_result(pid)
            elif parts[0] == "exit":
                d = int(parts[1])
                self.exits[d] = int(parts[3])
                self.exited.setdefault(d, asyncio.Event()).set()
        for fut in self._pid_wait.values():
            if not fut.done():
                fut.set_exception(TinyTwinError("the emulation's fork server ended"))

    async def spawn(self, d: int, cfg: Path, log_path: Path) -> int:
        assert self.proc is not None and self.proc.stdin is not None
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pid_wait[d] = fut
        self.exited[d] = asyncio.Event()
        self.proc.stdin.write(f"spawn {d} {cfg} {log_path}\n".encode())
        await self.proc.stdin.drain()
        return await fut

    def adopt(self, d: int, pid: int, parent: int) -> bool:
        """Take over device ``d``'s process ``pid`` that a killed coordinator's fork server
        ``parent`` forked, if it still runs (its parent is that fork server: never a reused pid)."""
        self.adopted[d] = parent
        self.pids[d] = pid
        if not self.alive(d):
            del self.adopted[d], self.pids[d]
            return False
        return True

    def alive(self, d: int) -> bool:
        if d in self.adopted:
            try:
                with open(f"/proc/{self.pids[d]}/stat") as fh:
                    f = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                return False
            return f[0] not in ("Z", "X") and int(f[1]) == self.adopted[d]
        return d in self.pids and d not in self.exits

    def kill(self, d: int) -> None:
        if self.alive(d):
            try:
                os.kill(self.pids[d], signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def close(self, wait_s: float = 10.0) -> None:
        if self.proc is None and not self.adopted:
            return
        deadline = time.monotonic() + wait_s
        while any(self.alive(d) for d in self.pids) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for d in list(self.pids):
            self.kill(d)
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class HierForkServer(ForkServer):
    """The decentralized twin's fork server client, with children that run
    :mod:`tinytwin.emulate.hier_procs` and may be started again after they died."""

    async def start(self, env: dict[str, str], log_path: Path) -> None:
        with open_private_append(log_path) as errf:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tinytwin.emulate.forkserver",
                "tinytwin.emulate.hier_procs",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=errf,
                env=env,
            )
        self._reader = asyncio.create_task(self._read())

    async def spawn(self, d: int, cfg: Path, log_path: Path) -> int:
        self.exits.pop(d, None)
        self.adopted.pop(d, None)  # a process of a killed coordinator's fork server, replaced
        return await super().spawn(d, cfg, log_path)

    async def wait_exit(self, d: int, timeout: float = 2.0) -> None:
        if d in self.adopted:  # not our child: no exit report, watch /proc until it is gone
            deadline = time.monotonic() + timeout
            while self.alive(d) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return
        ev = self.exited.get(d)
        if ev is not None and d in self.pids:
            try:
                await asyncio.wait_for(ev.wait(), timeout)
            except TimeoutError:
                pass


def maps_torch(pid: int) -> bool:
    """Whether a process has a torch library mapped (its /proc/PID/maps)."""
    try:
        with open(f"/proc/{pid}/maps") as fh:
            return "libtorch" in fh.read()
    except OSError:
        return False
