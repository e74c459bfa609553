"""The device runtime: one OS process per emulated device (numpy only, never torch).

Started by the coordinator as ``python -m tinytwin.emulate.device CONFIG.json``. It
loads its data shard, caps its own memory (``RLIMIT_DATA``), connects to the coordinator
over TCP, says HELLO, and then for every MODEL frame of a new round: decodes the global
model, trains locally (:mod:`tinytwin.emulate.mlp_np`), waits out the paced compute
time, waits out its uplink's shaped transfer time (the round plan, a ``CONTROL
{"cmd": "round"}`` the coordinator sends before the model, says how long, and whether the
link is down by then so the shaper drops the update; its optional ``key`` is the training
key when it differs from the frame round: a hierarchical replay after a coordinator resume),
and sends METRICS and its UPDATE
(the change of its model, in the spec's encoding). Every frame it receives is
authenticated and checked by :meth:`DeviceRuntime.accept`; a rejected frame is logged
with its reason and otherwise ignored. A lost connection is re-established (a resumed
coordinator listens on the same address) for ``reconnect_grace_s``. Exit codes: 0
normal, 86 out of memory (the cap), 3 no coordinator (not reachable within the grace).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import resource
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tinytwin.algorithms.attacks import attack_update
from tinytwin.emulate.mqtt_link import MqttCoordinatorLink
from tinytwin.emulate.runtime_env import vm_data_bytes, warm_blas
from tinytwin.emulate.tls import client_context
from tinytwin.emulate.trainers import FIRMWARE_FAULT_EXIT, DeviceFault, RoundResult, make_trainer
from tinytwin.emulate.wire_np import COORDINATOR_ID, Rejected, decode_checked, load_wire, read_frame_blocking

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
        self.round = 0  # last round whose MODEL was accepted
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
        fr = decode_checked(fm, data, self.key_for, self.guard)
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
                if not isinstance(cmd, dict) or cmd.get("cmd") not in ("stop", "round", "redirect"):
                    raise ValueError(f"unknown command {cmd!r}")
                if cmd["cmd"] == "round" and not _valid_plan(cmd):
                    raise ValueError(f"bad round plan {cmd!r}")
                if cmd["cmd"] == "redirect" and not _valid_redirect(cmd):
                    raise ValueError(f"bad redirect {cmd!r}")
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


def _valid_plan(cmd: dict[str, Any]) -> bool:
    """A round plan names a round and gives finite, non-negative waits (it is slept on)."""

    def seconds(key: str) -> bool:
        v = cmd.get(key, 0.0)
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0

    def positive(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    # "key": the training key (the round whose batches and draws the device uses) when it differs
    # from the frame round (a hierarchical replay after a coordinator resume); default the round
    return (
        positive(cmd.get("round"))
        and positive(cmd.get("key", 1))
        and seconds("up_wait_s")
        and seconds("cut_after_s")
        and isinstance(cmd.get("drop_update", False), bool)
    )


def _valid_port(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536


def _valid_redirect(cmd: dict[str, Any]) -> bool:
    """An orchestrator's move: a device is given its new parent's port; a local aggregator, the
    ports of the members it is to hand over."""
    if "port" in cmd:
        return _valid_port(cmd["port"])
    moves = cmd.get("devices")
    return isinstance(moves, dict) and all(k.isdigit() and _valid_port(v) for k, v in moves.items())


def _arena(nbytes: int) -> mmap.mmap | None:
    """Reserve and touch the RAM the memory plan says training needs (private anonymous
    memory, which RLIMIT_DATA counts): exceeding the cap fails here, deterministically."""
    if nbytes <= 0:
        return None
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for off in range(0, nbytes, PAGE):
        m[off] = 1
    return m


class CoordinatorLink:
    """The device's TCP connection to the coordinator, re-established when it breaks.

    A coordinator that is killed and resumed listens on the same address again (the run
    folder keeps its port), so the device keeps retrying for ``reconnect_grace_s`` and
    then says HELLO again; if the coordinator stays away longer, the device exits
    (:data:`NO_COORDINATOR_EXIT`) instead of lingering as an orphan.
    """

    def __init__(self, cfg: dict[str, Any], rt: DeviceRuntime, hello: dict[str, Any]) -> None:
        self.addr = (str(cfg["host"]), int(cfg["port"]))
        self.grace_s = float(cfg.get("reconnect_grace_s", 60.0))
        self.rt, self.hello = rt, hello
        self.sock: socket.socket | None = None
        self.connects = 0
        # --tls: the coordinator must prove itself with the run's CA (emulate/tls.py)
        self.tls = client_context(cfg["tls_ca"]) if cfg.get("tls_ca") else None

    def connect(self) -> bool:
        """Connect (retrying within the grace period) and say HELLO; False if nobody answered."""
        self.close()
        deadline = time.monotonic() + self.grace_s
        while True:
            try:
                sock = socket.create_connection(self.addr, timeout=5)
                if self.tls is not None:
                    sock = self.tls.wrap_socket(sock, server_hostname=self.addr[0])
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                payload = json.dumps({**self.hello, "reconnects": self.connects}).encode()
                sock.sendall(self.rt.make(self.rt.frame.MsgType.HELLO, 0, "none", payload))
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    log(f"device {self.rt.id}: no coordinator at {self.addr} for {self.grace_s:g} s ({exc}); exiting")
                    return False
                time.sleep(0.2)
        if self.connects:
            log(f"device {self.rt.id}: connected to the coordinator again (connection {self.connects + 1})")
        self.connects += 1
        self.sock = sock
        # A new connection may be a resumed coordinator that repeats the round it was killed
        # in: accept any round on it. Old frames stay refused by the replay guard (nonces).
        self.rt.round = 0
        return True

    def send(self, *frames: bytes) -> bool:
        try:
            assert self.sock is not None
            for f in frames:
                self.sock.sendall(f)
            return True
        except OSError:
            return False

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _attacked(delta: np.ndarray, cfg: dict[str, Any], key: int, device: int) -> np.ndarray:
    """What this device sends (spec attacks, algorithms/attacks.py; keyed by the training key as
    in the simulator). The stale attack's update history lives in a file of the device's own, so
    a restarted process replays the same old updates as the simulator's checkpointed history."""
    attack = cfg.get("attack")
    if not attack or attack["kind"] != "stale":
        return attack_update(delta, attack, int(cfg["seed"]), key, device)
    path = Path(cfg["attack_history_file"])
    history: dict[str, np.ndarray] = {}
    if path.is_file():
        with np.load(path) as stored:
            history = {k: stored[k] for k in stored.files}
    sent = attack_update(delta, attack, int(cfg["seed"]), key, device, history)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, allow_pickle=False, **history)
    os.replace(tmp, path)
    return sent


def _round_frames(
    rt: DeviceRuntime,
    cfg: dict[str, Any],
    r: int,
    content: np.ndarray,
    result: RoundResult,
    plan: dict[str, Any],
    model_at: float,
    busy: float,
    t0: float,
) -> tuple[bytes, bytes] | None:
    """After training in round ``r``: wait out the paced compute time and the planned upload
    wait, then the METRICS and UPDATE frames (the update: the model's change, encoded); None
    when the plan drops the update (the link goes down before it could be sent)."""
    if plan.get("drop_update"):
        # The link goes down (or the deadline passes) before this upload could be done: the
        # device works until that instant of the modelled timeline, then the link shaper
        # drops its frames (no METRICS, no UPDATE).
        rest = model_at + float(plan.get("cut_after_s", 0.0)) - time.monotonic()
        if rest > 0:
            time.sleep(rest)
        log(f"device {rt.id}: round {r}: update dropped by the link shaper ({plan.get('why', 'link down')})")
        return None
    pace = result.modelled_compute_s * float(cfg["time_scale"]) - busy
    if pace > 0:
        time.sleep(pace)
    compute_s = time.perf_counter() - t0
    delta = result.params - content
    delta = _attacked(delta, cfg, int(plan.get("key", r)), rt.id)
    enc = cfg["encoding"]
    payload = rt.enc.encode(delta, enc, tensor_sizes=rt.tensor_sizes)
    up_at = time.monotonic()
    wait = float(plan.get("up_wait_s", 0.0))
    metrics = {
        "train_loss": result.train_loss,
        "steps": result.steps,
        "compute_s": compute_s,
        "busy_s": busy,
        "up_wait_s": wait,
        "model_at": model_at,
        "up_at": up_at,
        "rss_kb": proc_status_kb("VmRSS"),
        "hwm_kb": proc_status_kb("VmHWM"),
        "rejected": dict(rt.rejected),
        "torch_loaded": "torch" in sys.modules,
        **result.extra,
    }
    if wait > 0:
        time.sleep(wait)
    return (
        rt.make(rt.frame.MsgType.METRICS, r, "none", json.dumps(metrics).encode()),
        rt.make(rt.frame.MsgType.UPDATE, r, enc, payload),
    )  # nonces increase in send order


def run(cfg: dict[str, Any]) -> int:
    with open(cfg["key_file"], "rb") as fh:
        key = fh.read()
    shard = np.load(cfg["data_file"])
    x, y = shard["x"].astype(np.float32), shard["y"].astype(np.int64)
    rt = DeviceRuntime(cfg, key)
    # Numpy or firmware (QEMU) training; started before the cap (QEMU reserves a large buffer).
    trainer = make_trainer(cfg, x, y)
    # BLAS's work buffers (tens of MB of address space) are allocated before the baseline is
    # measured, so the cap is the memory plan on top of the runtime (runtime_env).
    warm_blas()
    baseline = vm_data_bytes()
    cap = baseline + int(cfg["mem_budget_bytes"])
    max_frame = int(cfg["max_frame"])
    hello = {"pid": os.getpid(), "vmdata_baseline": baseline, "rlimit_data": cap}
    conn = MqttCoordinatorLink(cfg, rt, hello) if cfg.get("mqtt") else CoordinatorLink(cfg, rt, hello)
    if not conn.connect():
        return NO_COORDINATOR_EXIT
    # The cap goes on after HELLO, so that a budget too small for training is reported as an
    # out-of-memory failure in the round (the coordinator knows the device), not as silence.
    if trainer.caps_process_memory:
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    log(f"device {rt.id}: pid {os.getpid()} VmData baseline {baseline} B, RLIMIT_DATA {cap} B")
    plans: dict[int, dict[str, Any]] = {}
    while True:
        try:
            assert conn.sock is not None
            data = read_frame_blocking(conn.sock, max_frame)
        except (Rejected, ConnectionError, OSError) as exc:
            if isinstance(exc, Rejected):  # a bad header: the stream cannot be trusted any more
                rt.rejected[exc.reason] += 1
            log(f"device {rt.id}: connection to the coordinator lost ({exc}); reconnecting")
            if not conn.connect():
                return NO_COORDINATOR_EXIT
            continue
        got = rt.handle(data)
        if got is None:
            continue
        fr, content = got
        if fr.msg_type == rt.frame.MsgType.CONTROL:
            if content["cmd"] == "round":
                plans = {k: v for k, v in plans.items() if k > rt.round}
                plans[int(content["round"])] = content
                continue
            if content["cmd"] == "redirect":  # the orchestrator moved it to another parent
                if isinstance(conn, CoordinatorLink) and "port" in content:
                    log(f"device {rt.id}: redirected to port {content['port']}")
                    conn.addr = (conn.addr[0], int(content["port"]))
                    plans = {}
                    if not conn.connect():
                        return NO_COORDINATOR_EXIT
                continue
            log(f"device {rt.id}: {content['cmd']}")
            return 0
        model_at = time.monotonic()
        r = fr.round
        rt.round = r
        plan = plans.pop(r, {})
        t0 = time.perf_counter()
        arena = _arena(int(cfg["arena_bytes"])) if trainer.caps_process_memory else None
        try:
            result = trainer.train(content, int(plan.get("key", r)))
        except DeviceFault as fault:
            log(f"device {rt.id}: round {r}: firmware fault {fault.kind}: {fault.detail}")
            trainer.close()
            return FIRMWARE_FAULT_EXIT
        if arena is not None:
            arena.close()
        busy = time.perf_counter() - t0
        frames = _round_frames(rt, cfg, r, content, result, plan, model_at, busy, t0)
        if frames is None:
            continue
        if not conn.send(*frames):
            log(f"device {rt.id}: connection lost while sending round {r}; reconnecting")
            if not conn.connect():
                return NO_COORDINATOR_EXIT


def run_main(
    run_cfg: Callable[[dict[str, Any]], int], argv: list[str] | None, lost_coordinator_exits: bool = False
) -> int:
    """A device process: ``run_cfg`` on the JSON configuration named by ``argv[0]``; out of
    memory under the cap exits with :data:`OOM_EXIT` at once, and with ``lost_coordinator_exits``
    a connection error leaves with :data:`NO_COORDINATOR_EXIT`."""
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as fh:
        cfg = json.load(fh)
    _exit_on_thread_oom(cfg.get("device"))
    try:
        return run_cfg(cfg)
    except MemoryError:
        log(f"device {cfg.get('device')}: out of memory (RLIMIT_DATA)")
        os._exit(OOM_EXIT)
    except OSError as exc:
        if exc.errno == 12:  # ENOMEM from mmap under the cap
            log(f"device {cfg.get('device')}: out of memory (RLIMIT_DATA): {exc}")
            os._exit(OOM_EXIT)
        if lost_coordinator_exits and isinstance(exc, ConnectionError):
            log(f"device {cfg.get('device')}: lost the coordinator: {exc}")
            return NO_COORDINATOR_EXIT
        raise


def _is_oom(exc: BaseException | None) -> bool:
    return isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == 12)


def _exit_on_thread_oom(device: Any) -> None:
    """Out of memory in any thread (a peer's socket reader, say) ends the process with
    :data:`OOM_EXIT`: a process whose reader died would otherwise hang until the round's timeout."""
    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if _is_oom(args.exc_value):
            log(f"device {device}: out of memory (RLIMIT_DATA) in thread {args.thread.name if args.thread else '?'}")
            os._exit(OOM_EXIT)
        default(args)

    threading.excepthook = hook


def main(argv: list[str] | None = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
