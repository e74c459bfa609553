"""What an emulation keeps in its run folder so that a killed coordinator can be resumed.

``emulate/coordinator.json`` holds the options and the address the coordinator listens on
(the devices of a killed run keep retrying exactly that address, so a resumed coordinator
binds it again); ``emulate/pids.json`` holds the process id of every device process the
run started. Resuming adopts the device processes that are still alive
(:class:`AdoptedProcess`) and starts the others again from their files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

COORDINATOR_FILE = "coordinator.json"
PIDS_FILE = "pids.json"
NETNS_FILE = "netns.json"
DEVICE_MODULE = "tinytwin.emulate.device"


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` atomically (a kill mid-write leaves the old file, never half of one)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def device_process_alive(pid: int, config_file: Path) -> bool:
    """Whether ``pid`` is a live device process of this run (not a reused pid, not a zombie)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X") and DEVICE_MODULE.encode() in argv and str(config_file).encode() in argv


class AdoptedProcess:
    """A device process started by an earlier (killed) coordinator: not our child, so it is
    watched through /proc and signalled by pid, with the small API of ``subprocess.Popen``
    the coordinator uses."""

    def __init__(self, pid: int, config_file: Path) -> None:
        self.pid = pid
        self.config_file = config_file
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not device_process_alive(self.pid, self.config_file):
            self.returncode = -1  # gone; its exit status went to its new parent
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode


def kill_recorded_devices(edir: Path) -> list[int]:
    """SIGKILL every still-running device process a run recorded (tests' and users' cleanup)."""
    killed = []
    for d, pid in (read_json(edir / PIDS_FILE, {}) or {}).items():
        proc = AdoptedProcess(int(pid), edir / "devices" / f"d{d}.json")
        if proc.poll() is None:
            proc.kill()
            killed.append(int(pid))
    return killed
