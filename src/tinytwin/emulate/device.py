"""The device runtime: one OS process per emulated device (numpy only, never torch).

Started by the coordinator as ``python -m tinytwin.emulate.device CONFIG.json``. It
loads its data shard, caps its own memory (``RLIMIT_DATA``), connects to the coordinator
over TCP, says HELLO, and then for every MODEL frame of a new round: decodes the global
model, trains locally (:mod:`tinytwin.emulate.mlp_np`), waits out the paced compute
time, waits out its uplink's shaped transfer time, and sends METRICS and its UPDATE
(the change of its model, in the spec's encoding). Every frame it receives is
authenticated and checked by :meth:`DeviceRuntime.accept`; a rejected frame is logged
with its reason and otherwise ignored. Exit codes: 0 normal, 86 out of memory (the cap),
3 could not talk to the coordinator.
"""

from __future__ import annotations

import json
import mmap
import os
import resource
import socket
import sys
import time
from collections import Counter
from typing import Any

import numpy as np

from tinytwin.emulate import mlp_np, shaper
from tinytwin.emulate.wire_np import COORDINATOR_ID, Rejected, load_wire, read_frame_blocking
from tinytwin.rng import Stream, stream_rng

OOM_EXIT = 86
NO_COORDINATOR_EXIT = 3
PAGE = 4096


def proc_status_kb(field: str, pid: int | str = "self") -> int:
    """A ``VmXxx`` figure of /proc/PID/status in kB (0 if absent)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def log(msg: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
    sys.stderr.flush()


class DeviceRuntime:
    """A device's protocol state and frame checks (no sockets: testable in-process)."""

    def __init__(self, cfg: dict[str, Any], key: bytes) -> None:
        self.frame, self.enc = load_wire()
        self.cfg = cfg
        self.id = int(cfg["device"])
        self.key = key
        self.guard = self.frame.ReplayGuard()
        self.nonce = time.time_ns()  # strictly increasing across restarts of this device
        self.round = 0               # last round whose MODEL was accepted
        self.n = int(cfg["num_params"])
        self.tensor_sizes = list(cfg["tensor_sizes"])
        self.rejected: Counter[str] = Counter()

    def key_for(self, sender: int) -> bytes | None:
        return self.key if sender == COORDINATOR_ID else None

    def make(self, msg_type: int, round_: int, encoding: str, payload: bytes) -> bytes:
        self.nonce += 1
        fr = self.frame.Frame(msg_type, self.id, COORDINATOR_ID, round_, encoding, 0, self.nonce, payload)
        return self.frame.encode_frame(fr, self.key)

    def accept(self, data: bytes) -> tuple[Any, Any]:
        """Check one complete frame; return ``(frame, content)`` or raise :class:`Rejected`.

        content: the decoded float32 model for MODEL, the command dict for CONTROL.
        """
        fm = self.frame
        try:
            fr = fm.decode_frame(data, self.key_for)
            self.guard.check(fr.sender, fr.nonce)
        except fm.FrameError as exc:
            raise Rejected(exc.reason, exc.detail) from None
        if fr.receiver != self.id:
            raise Rejected("wrong_receiver", f"frame for {fr.receiver}, I am {self.id}")
        if fr.msg_type == fm.MsgType.MODEL:
            if fr.round <= self.round:
                raise Rejected("stale_round", f"round {fr.round} <= last round {self.round}")
            if fr.encoding != self.cfg["downlink_encoding"]:
                raise Rejected("bad_payload", f"encoding {fr.encoding}, expected {self.cfg['downlink_encoding']}")
            try:
                values, _ = self.enc.decode(fr.payload, fr.encoding, self.n, tensor_sizes=self.tensor_sizes)
            except ValueError as exc:
                raise Rejected("bad_payload", str(exc)) from None
            if not fm.payload_is_finite(values):
                raise Rejected("non_finite", "model contains NaN or Inf")
            return fr, values
        if fr.msg_type == fm.MsgType.CONTROL:
            try:
                cmd = json.loads(fr.payload.decode())
                if not isinstance(cmd, dict) or cmd.get("cmd") not in ("stop",):
                    raise ValueError(f"unknown command {cmd!r}")
            except (ValueError, UnicodeDecodeError) as exc:
                raise Rejected("bad_payload", str(exc)) from None
            return fr, cmd
        raise Rejected("unexpected_type", f"{fr.msg_type.name} is not sent to devices")

    def handle(self, data: bytes) -> tuple[Any, Any] | None:
        """:meth:`accept`, logging and counting a rejection instead of raising."""
        try:
            return self.accept(data)
        except Rejected as exc:
            self.rejected[exc.reason] += 1
            log(f"device {self.id}: rejected frame: {exc}")
            return None


def _arena(nbytes: int) -> mmap.mmap | None:
    """Reserve and touch the RAM the memory plan says training needs (private anonymous
    memory, which RLIMIT_DATA counts): exceeding the cap fails here, deterministically."""
    if nbytes <= 0:
        return None
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for off in range(0, nbytes, PAGE):
        m[off] = 1
    return m


def run(cfg: dict[str, Any]) -> int:
    with open(cfg["key_file"], "rb") as fh:
        key = fh.read()
    shard = np.load(cfg["data_file"])
    x, y = shard["x"].astype(np.float32), shard["y"].astype(np.int64)
    rt = DeviceRuntime(cfg, key)
    linears = mlp_np.linears_from(cfg["linears"])
    tc = mlp_np.LocalTraining(**cfg["train"])
    link = shaper.Link(**cfg["link"])
    ts = float(cfg["time_scale"])
    seed = int(cfg["seed"])
    # The first BLAS call makes OpenBLAS allocate its work buffers (tens of MB of address
    # space): do it before measuring the baseline, so the cap is on top of the runtime.
    _ = np.ones((8, 8), np.float32) @ np.ones((8, 8), np.float32)
    _ = np.ones((8, 8)) @ np.ones((8, 8))
    baseline = proc_status_kb("VmData") * 1024
    cap = baseline + int(cfg["mem_budget_bytes"])
    max_frame = int(cfg["max_frame"])
    try:
        sock = socket.create_connection((cfg["host"], int(cfg["port"])), timeout=30)
    except OSError as exc:
        log(f"device {rt.id}: cannot connect: {exc}")
        return NO_COORDINATOR_EXIT
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    hello = json.dumps({"pid": os.getpid(), "vmdata_baseline": baseline, "rlimit_data": cap}).encode()
    sock.sendall(rt.make(rt.frame.MsgType.HELLO, 0, "none", hello))
    # The cap goes on after HELLO, so that a budget too small for training is reported as an
    # out-of-memory failure in the round (the coordinator knows the device), not as silence.
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    log(f"device {rt.id}: pid {os.getpid()} VmData baseline {baseline} B, RLIMIT_DATA {cap} B")
    while True:
        try:
            data = read_frame_blocking(sock, max_frame)
        except Rejected as exc:  # a bad header: the stream cannot be trusted any more
            rt.rejected[exc.reason] += 1
            log(f"device {rt.id}: rejected frame header: {exc}; closing")
            return NO_COORDINATOR_EXIT
        except (ConnectionError, OSError):
            log(f"device {rt.id}: coordinator closed the connection")
            return 0
        got = rt.handle(data)
        if got is None:
            continue
        fr, content = got
        if fr.msg_type == rt.frame.MsgType.CONTROL:
            log(f"device {rt.id}: {content['cmd']}")
            return 0
        r = fr.round
        rt.round = r
        t0 = time.perf_counter()
        arena = _arena(int(cfg["arena_bytes"]))
        params, train_loss, steps = mlp_np.train(linears, content, x, y, tc, seed, r, rt.id)
        if arena is not None:
            arena.close()
        busy = time.perf_counter() - t0
        pace = float(cfg["compute_s"]) * ts - busy
        if pace > 0:
            time.sleep(pace)
        compute_s = time.perf_counter() - t0
        delta = params - content
        enc = cfg["encoding"]
        payload = rt.enc.encode(delta, enc, tensor_sizes=rt.tensor_sizes)
        nbytes = rt.frame.frame_size(len(payload))
        lost = shaper.draw_lost(stream_rng(seed, Stream.LINK_LOSS, r, 1, rt.id), nbytes, link)
        link_s, link_bytes = shaper.transfer(nbytes, link.up_bps, link, lost)
        metrics = {"train_loss": train_loss, "steps": steps, "compute_s": compute_s, "busy_s": busy,
                   "up_link_s": link_s, "up_link_bytes": link_bytes, "lost_up": lost,
                   "rss_kb": proc_status_kb("VmRSS"), "hwm_kb": proc_status_kb("VmHWM"),
                   "rejected": dict(rt.rejected), "torch_loaded": "torch" in sys.modules}
        sock.sendall(rt.make(rt.frame.MsgType.METRICS, r, "none", json.dumps(metrics).encode()))
        update = rt.make(rt.frame.MsgType.UPDATE, r, enc, payload)  # nonces increase in send order
        if link_s * ts > 0:
            time.sleep(link_s * ts)
        sock.sendall(update)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as fh:
        cfg = json.load(fh)
    try:
        return run(cfg)
    except MemoryError:
        log(f"device {cfg.get('device')}: out of memory (RLIMIT_DATA)")
        os._exit(OOM_EXIT)
    except OSError as exc:
        if exc.errno == 12:  # ENOMEM from mmap under the cap
            log(f"device {cfg.get('device')}: out of memory (RLIMIT_DATA): {exc}")
            os._exit(OOM_EXIT)
        raise


if __name__ == "__main__":
    sys.exit(main())
