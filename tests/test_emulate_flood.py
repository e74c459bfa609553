"""Connections nobody authenticated cannot stop an emulation: 2 000 idle ones, slow-loris headers and
forged frames against a coordinator limited to 1 024 file descriptors, and the run completes."""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

from emulate_util import QUICK, stored_rows
from tinytwin.emulate.frame_checks import REJECT_EVENTS_PER_ROUND
from tinytwin.wire import frame as fm

IDLE = 2000
SLOW = 15
FORGED = 300
ROUNDS = 12  # paced at --time-scale 1.0: seconds of rounds, so the run still listens when the flood ends


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def _coordinator_port(out: Path, proc: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for found in out.glob("*/emulate/coordinator.json"):
            try:
                return int(json.loads(found.read_text())["port"])
            except (ValueError, KeyError):
                pass  # being written
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    raise AssertionError("the coordinator never wrote its address")


def _connect(port: int) -> socket.socket:
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    return s


def test_idle_slow_and_forged_connections_under_a_1024_descriptor_limit(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IDLE + SLOW + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    out = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinytwin.cli", "emulate", str(QUICK), "--out", str(out), "--quiet", "--no-report"]
        + ["--set", "fleet.groups.0.count=3", "--set", f"rounds={ROUNDS}", "--time-scale", "1.0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_limit_descriptors,
    )
    held: list[socket.socket] = []
    try:
        port = _coordinator_port(out, proc)
        held += [_connect(port) for _ in range(IDLE)]
        slow = [_connect(port) for _ in range(SLOW)]
        time.sleep(0.2)
        for s in slow:  # half a header, then nothing: a slow-loris client
            try:
                s.send(fm.MAGIC[:1])
            except OSError:
                pass
        held += slow
        for i in range(FORGED):  # a complete header of garbage each, on its own connection
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                try:
                    s.sendall(bytes([i % 256]) * fm.HEADER_SIZE)
                except OSError:
                    pass
        _, err = proc.communicate(timeout=300)
    finally:
        for s in held:
            s.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    info, rounds, _devices, events = stored_rows(run_dir, with_info=True)
    assert info.status == "complete" and len(rounds) == ROUNDS
    assert all(r["completed"] == r["selected"] for r in rounds), "a device's round was lost to the flood"
    rejected = info.summary["emulate"]["frames_rejected"]
    assert rejected.get("connection_limit", 0) > 0, rejected
    per_round: dict[int, int] = {}
    for e in events:
        if e["kind"] == "frame_rejected":
            per_round[e["round"]] = per_round.get(e["round"], 0) + 1
    assert per_round and max(per_round.values()) <= REJECT_EVENTS_PER_ROUND + 1, per_round
    assert any("not listed one by one" in e["detail"] for e in events if e["kind"] == "frame_rejected")
