"""The device processes of one emulated run: start them (inside their network namespace
when there is one), adopt the survivors of a killed coordinator, watch and kill them.

Every start is recorded in ``emulate/pids.json`` so that a resumed coordinator — or a
test cleaning up after a failure — can find processes it did not start itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union

from tinytwin.emulate.device import OOM_EXIT
from tinytwin.emulate.rundir import PIDS_FILE, AdoptedProcess, device_process_alive, read_json, write_json
from tinytwin.emulate.runtime_env import pinned_env
from tinytwin.emulate.trainers import FIRMWARE_FAULT_EXIT, read_fault

Process = Union["subprocess.Popen[bytes]", AdoptedProcess]


def child_env() -> dict[str, str]:
    """The environment of a fork server / device process: one BLAS thread, this source tree first."""
    env = pinned_env()
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def adopt_recorded(
    adopt: Callable[[int, int, int], Any],
    peers_file: Path,
    skip: Any = (),
    aggregator_key: Callable[[int], int] | None = None,
) -> None:
    """Adopt what a killed coordinator's ``peers_file`` (``emulate/peers.json``) records:
    ``adopt(key, pid, parent)`` for every device not in ``skip`` and, with ``aggregator_key``
    (an aggregator's process key), every local aggregator; ``parent``: the pid of the fork
    server that started it (``parents``, else the recorded fork server)."""
    saved = read_json(peers_file, {}) or {}
    parent = int(saved.get("forkserver", -1))
    parents = {int(k): int(v) for k, v in (saved.get("parents") or {}).items()}
    if aggregator_key is not None:
        for c, pid in (saved.get("aggregators") or {}).items():
            key = aggregator_key(int(c))
            adopt(key, int(pid), parents.get(key, parent))
    for d, pid in (saved.get("devices") or {}).items():
        if int(d) not in skip:
            adopt(int(d), int(pid), parents.get(int(d), parent))


OOM_MARKERS = (
    "Memory allocation still failed",  # OpenBLAS, which then exits 1
    "out of memory",  # run_main's own line (device.py)
    "MemoryError",
    "Cannot allocate memory",
)
"""What a device log says when its process died of the memory cap without reaching run_main's
handler (a C library's allocation failing under ``RLIMIT_DATA`` exits on its own)."""
START_MARKER = "VmData baseline"
"""Every device process logs this line once its cap is set: the log of its latest process starts there."""


def oom_in_log(log_file: Path | None, tail_bytes: int = 16384) -> bool:
    """Whether the latest process in ``log_file`` (the part after its last :data:`START_MARKER`
    line) reported running out of memory."""
    if log_file is None:
        return False
    try:
        with open(log_file, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - tail_bytes))
            text = fh.read().decode(errors="replace")
    except OSError:
        return False
    latest = text[text.rfind(START_MARKER) :] if START_MARKER in text else text
    return any(m in latest for m in OOM_MARKERS)


def exit_kind(
    rc: int | None, *, killed: bool = False, workdir: Path | None = None, log_file: Path | None = None
) -> str:
    """Why a process's connection closed: ``killed`` (by the twin), a firmware fault (``workdir``:
    a firmware device's work folder, whose fault file is written before the exit, so it decides
    even when the exit status has not been collected yet), ``oom`` (its exit code, or ``log_file``,
    its log, says the memory cap was hit), ``disconnected`` (no exit status) or ``crash (exit N)``."""
    if killed:
        return "killed"
    fault = read_fault(workdir) if workdir is not None else None
    if rc == FIRMWARE_FAULT_EXIT or fault is not None:
        return f"firmware_fault ({fault['kind']}: {fault['detail']})" if fault else "firmware_fault"
    if rc == OOM_EXIT or (rc is not None and oom_in_log(log_file)):
        return "oom"
    return "disconnected" if rc is None else f"crash (exit {rc})"


def keep_max(into: dict[str, int], m: dict[str, int]) -> None:
    """Raise every counter of ``into`` to the value in ``m`` where that is larger."""
    for k, v in m.items():
        into[k] = max(into.get(k, 0), v)


def note_memory(mem_max: dict[Any, dict[str, int]], total: Counter[str], name: Any, pid: int) -> None:
    """One process's memory now: into its largest-so-far (``mem_max[name]``) and this sample's ``total``."""
    m = proc_memory_kb(pid)
    keep_max(mem_max.setdefault(name, {}), m)
    total.update(m)


def proc_memory_kb(pid: int) -> dict[str, int]:
    """Rss and Pss (kB) of a process from /proc/PID/smaps_rollup (empty if it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key = line.split(":")[0]
                if key in ("Rss", "Pss", "Private_Dirty", "Shared_Clean"):
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


class DeviceProcesses:
    """``python -m tinytwin.emulate.device emulate/devices/dN.json`` per device."""

    def __init__(self, edir: Path, exec_prefix: Callable[[int], list[str]] | None = None) -> None:
        self.edir = edir
        self.exec_prefix = exec_prefix
        self.procs: dict[int, Process] = {}
        self.spawns: Counter[int] = Counter()
        self.pids: dict[str, int] = read_json(edir / PIDS_FILE, {}) or {}

    def config_file(self, d: int) -> Path:
        return self.edir / "devices" / f"d{d}.json"

    def spawn(self, d: int) -> None:
        env = child_env()
        self.spawns[d] += 1
        prefix = self.exec_prefix(d) if self.exec_prefix else []
        with open(self.edir / "logs" / f"d{d}.log", "ab") as errf:
            # `ip netns exec` execs the command: the pid is the device's own.
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "tinytwin.emulate.device", str(self.config_file(d))],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errf,
                env=env,
                close_fds=True,
            )
        self.procs[d] = proc
        self.pids[str(d)] = proc.pid
        write_json(self.edir / PIDS_FILE, self.pids)

    def adopt(self, devices: range) -> list[int]:
        """Take over the recorded device processes that are still running; return their ids."""
        found = []
        for d in devices:
            pid = self.pids.get(str(d))
            if pid is not None and device_process_alive(int(pid), self.config_file(d)):
                self.procs[d] = AdoptedProcess(int(pid), self.config_file(d))
                found.append(d)
        return found

    def running(self, d: int) -> bool:
        p = self.procs.get(d)
        return p is not None and p.poll() is None

    def returncode(self, d: int) -> int | None:
        p = self.procs.get(d)
        return None if p is None else p.poll()

    def kill(self, d: int) -> None:
        p = self.procs.get(d)
        if p is not None and p.poll() is None:
            p.kill()

    def kill_all(self, timeout: float = 10.0) -> None:
        for d in list(self.procs):
            self.kill(d)
        for p in self.procs.values():
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass

    def sample_memory(self, into: dict[int, dict[str, int]]) -> None:
        """Keep the largest Rss / Pss seen so far of every running device process."""
        for d, p in self.procs.items():
            if p.poll() is None:
                m = proc_memory_kb(p.pid)
                if m:
                    keep_max(into.setdefault(d, {}), m)
