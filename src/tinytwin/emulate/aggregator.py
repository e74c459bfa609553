"""A local aggregator (LA) of a hierarchical emulation: one OS process per cluster (numpy only).

Forked by the fork server (:mod:`tinytwin.emulate.hier_procs`) or started as
``python -m tinytwin.emulate.aggregator CONFIG.json``. It never imports torch.

Towards its **devices** the LA is the coordinator: the devices are the centralized twin's
device processes (:mod:`tinytwin.emulate.device`, unchanged) whose configuration names the
LA's address instead of the coordinator's. The LA listens on its own TCP port on
127.0.0.1, authenticates its members' frames with their link keys and checks them with
the coordinator's own checks (:class:`tinytwin.emulate.frame_checks.Coordinator`: HELLO,
METRICS and UPDATE, sender, receiver, round, expectation, payload, finiteness); it sends
each device its round plan (``CONTROL {"cmd": "round"}``: how long the device's uplink
takes) and the cluster model (MODEL, after the link shaper's downlink delay).

Towards the **global coordinator** (GA) the LA is a device: wire id
:func:`aggregator_id` (``0xFFFF0000 + cluster``), its own key
``HMAC-SHA256(run_key, "tinytwin-emulate-aggregator-c")``, and the device's checks of
incoming frames (:class:`tinytwin.emulate.device.DeviceRuntime`: CONTROL and MODEL only).

A global round: the GA sends the round plan (per local round the training key and every
member's shaped link seconds; which members to kill, and when) and the global model. For
each of the ``L`` local rounds the LA sends its model to every planned member, waits for
their updates (a member whose connection closes, or that does not answer within the
timeout, is left out), and aggregates FedAvg exactly as the simulator's engine does —
``model ← model + Σ_k (n_k / Σ n) · Δ_k`` in float32 over the accepted updates, in device
order — and reports the local round (METRICS). Then, after its uplink's shaped delay, it
sends a final METRICS and its cluster update ``model − global`` in ``algorithm.encoding``
(with one cluster: the model itself, float32 — the simulator's flat-FL case).

A global coordinator that is killed and resumed (docs/emulation.md, "Coordinator kill and
resume (hierarchical)"): the LA finishes the round it is in (its report is lost), keeps its
devices, calls the GA's address again for ``reconnect_grace_s`` and says HELLO again; the
resumed GA's plans carry a wire-round ``offset``, added to every local round key on the device
frames (devices accept only rising rounds) while the plan's ``key`` stays the training key.
Exit codes: 0 normal, 3 the global coordinator is gone (and did not come back in the grace).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tinytwin.algorithms.aggregators_np import aggregate_np
from tinytwin.emulate.device import NO_COORDINATOR_EXIT, DeviceRuntime, log, proc_status_kb
from tinytwin.emulate.frame_checks import Coordinator
from tinytwin.emulate.serving import accepted_frames, read_frame, send_frame
from tinytwin.emulate.tls import client_context, server_context
from tinytwin.emulate.wire_np import Rejected
from tinytwin.wire import encoding as enc
from tinytwin.wire import frame as fm

__all__ = ["AGGREGATOR_BASE", "LocalAggregator", "aggregator_id", "aggregator_key", "main", "read_frame"]

AGGREGATOR_BASE = 0xFFFF0000
FIRMWARE_KEYS = ("insns", "firmware_compute_s", "cost_model_compute_s", "qemu_rss_kb", "qemu_pss_kb")
"""What a firmware device's METRICS add (its board's figures), passed on to the GA."""
"""Wire id of local aggregator c is ``AGGREGATOR_BASE + c`` (devices are 0..D−1, the GA 0xFFFFFFFF)."""


def aggregator_id(cluster: int) -> int:
    return AGGREGATOR_BASE + int(cluster)


def aggregator_key(run_key: bytes, cluster: int) -> bytes:
    """The key of the link local aggregator ``cluster`` ↔ global coordinator (both directions)."""
    return hmac.new(run_key, b"tinytwin-emulate-aggregator-%d" % int(cluster), hashlib.sha256).digest()


class LocalAggregator:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.cluster = int(cfg["cluster"])
        self.wire_id = aggregator_id(self.cluster)
        keys = json.loads(Path(cfg["key_file"]).read_text())
        p, sizes = int(cfg["num_params"]), [int(s) for s in cfg["tensor_sizes"]]
        self.p, self.sizes = p, sizes
        self.enc_up, self.enc_down = str(cfg["encoding"]), str(cfg["downlink_encoding"])
        # towards the global coordinator this process is a device (the device runtime's checks)
        self.up = DeviceRuntime(
            {"device": self.wire_id, "num_params": p, "tensor_sizes": sizes, "downlink_encoding": self.enc_down},
            bytes.fromhex(keys["coordinator"]),
        )
        # towards its devices it is the coordinator (the coordinator's checks, its members' keys only)
        self.down = Coordinator(0, b"", p, sizes, self.enc_up)
        self.down.keys = {int(d): bytes.fromhex(k) for d, k in keys["devices"].items()}
        self.down.on_drop = self._drop_update
        self.n_train = {int(d): int(v) for d, v in cfg["members"].items()}
        self.writers: dict[int, asyncio.StreamWriter] = {}
        self.pids: dict[int, int] = {}
        self.connected: dict[int, asyncio.Event] = {d: asyncio.Event() for d in self.n_train}
        # An orchestrated run moves devices between aggregators: members come with each round's plan,
        # a member handed over to another aggregator is let go quietly, any other lost member is
        # reported to the GA at once (a BYE), which is how the orchestrator hears of a leave.
        self.orchestrated = bool(cfg.get("orchestrated", False))
        self.handed_over: set[int] = set()
        self.gw: asyncio.StreamWriter | None = None
        self.killed: set[int] = set()
        self.lost: set[int] = set()  # connections closed during the current global round
        self.failed: dict[int, str] = {}
        self.model_bytes: dict[int, int] = {}
        self.model_sent_at: dict[int, float] = {}
        self.update_at: dict[int, float] = {}
        self.done = asyncio.Event()
        self.control_bytes = 0
        self.reconnects = 0
        self.ga_connects = 0
        self.port = 0

    # ---- devices ------------------------------------------------------------------------
    async def _serve_device(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        device: int | None = None
        try:
            async for fr, content, size in accepted_frames(
                reader,
                writer,
                self.down,
                lambda: device,
                on_reject=lambda dev, exc: log(
                    f"aggregator {self.cluster}: rejected frame header from device {dev}: {exc}; closing"
                ),
            ):
                if fr.msg_type == fm.MsgType.HELLO:
                    device = fr.sender
                    self.writers[device] = writer
                    self.pids[device] = int(content.get("pid", 0))
                    self.control_bytes += size
                    if content.get("reconnects"):
                        self.reconnects += 1
                    self.handed_over.discard(device)
                    self._connected(device).set()
                elif fr.msg_type == fm.MsgType.METRICS:
                    self.down.metrics[fr.sender] = content
                    self.control_bytes += size
                elif fr.msg_type == fm.MsgType.UPDATE:
                    if fr.sender in self.killed:
                        continue
                    self.update_at[fr.sender] = time.monotonic()
                    self.down.updates[fr.sender] = content
                    self.down.update_bytes[fr.sender] = size
                    self._check_done()
        finally:
            if device is not None and self.writers.get(device) is writer:
                del self.writers[device]
                self._connected(device).clear()
                self.lost.add(device)
                self._report_left(device)
                if device in self.down.expect and device not in self.down.updates:
                    self.failed[device] = "killed" if device in self.killed else "disconnected"
                    self.down.expect.discard(device)
                    self._check_done()
            writer.close()

    def _connected(self, device: int) -> asyncio.Event:
        return self.connected.setdefault(device, asyncio.Event())

    def _report_left(self, device: int) -> None:
        """Tell the GA (orchestrated runs) that a member's connection is gone, unless it was handed over."""
        if not self.orchestrated or device in self.handed_over or self.gw is None:
            return
        bye = json.dumps({"device": device, "cluster": self.cluster}).encode()
        try:
            self.gw.write(self.up.make(fm.MsgType.BYE, max(self.up.round, 1), "none", bye))
        except (ConnectionError, OSError, RuntimeError):
            pass

    async def _hand_over(self, moves: dict[str, int]) -> None:
        """The orchestrator's reconfiguration: tell each moved member its new aggregator's port."""
        for ds, port in sorted(moves.items()):
            d = int(ds)
            self.handed_over.add(d)
            msg = json.dumps({"cmd": "redirect", "port": int(port)}).encode()
            await self._send(d, self.down.make(fm.MsgType.CONTROL, d, max(self.down.round, 1), "none", msg))
            log(f"aggregator {self.cluster}: device {d} handed over to the aggregator on port {port}")

    def _drop_update(self, device: int, reason: str) -> None:
        """A member's update was refused for its content: it is out of this local round now."""
        self.failed[device] = reason
        self._check_done()

    def _check_done(self) -> None:
        if self.down.expect <= set(self.down.updates):
            self.done.set()

    async def _send(self, d: int, data: bytes) -> bool:
        return await send_frame(self.writers.get(d), data)

    async def _wait_connected(self, devices: list[int], timeout: float) -> None:
        waiting = [self._connected(d).wait() for d in devices if d not in self.writers]
        if waiting:
            try:
                await asyncio.wait_for(asyncio.gather(*waiting), timeout)
            except TimeoutError:
                pass

    async def _start_device(
        self, d: int, key: int, wire: int, plan: dict[str, Any], payload: bytes, kill_after_s: float | None
    ) -> None:
        """Round plan, then the shaped cluster model, to one member (then its SIGKILL, for a victim).

        ``key`` is the device's training key (the local round key), ``wire`` the frames' round:
        ``key`` plus the global coordinator's resume offset, so that a device that already played
        this key before a coordinator resume accepts the replay (its rounds only go up)."""
        msg = {"cmd": "round", "round": wire, "key": key, "up_wait_s": float(plan["up_wait_s"]), "drop_update": False}
        ctrl = self.down.make(fm.MsgType.CONTROL, d, wire, "none", json.dumps(msg).encode())
        if await self._send(d, ctrl):
            self.control_bytes += len(ctrl)
        wait = float(plan["down_wait_s"])
        if wait > 0:
            await asyncio.sleep(wait)
        data = self.down.make(fm.MsgType.MODEL, d, wire, self.enc_down, payload)
        self.model_sent_at[d] = time.monotonic()
        if not await self._send(d, data):
            return
        self.model_bytes[d] = len(data)
        if kill_after_s is not None:
            if kill_after_s > 0:
                await asyncio.sleep(kill_after_s)
            self.killed.add(d)  # whatever it sends from now on is discarded
            self.down.updates.pop(d, None)
            self.down.update_bytes.pop(d, None)
            pid = self.pids.get(d)
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            log(f"aggregator {self.cluster}: device {d} SIGKILLed {kill_after_s:.3f} s after its model (key {key})")

    # ---- one global round ------------------------------------------------------------------
    async def _local_round(
        self, l: int, lp: dict[str, Any], model: np.ndarray, kills: dict[int, float], offset: int = 0
    ) -> tuple[np.ndarray, list[int], dict[str, Any]]:
        key = int(lp["key"])
        wire = key + offset
        devs = {int(d): v for d, v in lp["devices"].items()}
        self.n_train.update({d: int(v["n_train"]) for d, v in devs.items() if "n_train" in v})  # moved-in members
        planned = sorted(devs)
        # wait for members that are (re)starting; not for those that died earlier in this global round
        await self._wait_connected(
            [d for d in planned if d not in self.killed and d not in self.lost], float(self.cfg["hello_timeout_s"])
        )
        self.down.round = wire
        self.down.updates, self.down.update_bytes, self.down.metrics = {}, {}, {}
        self.model_bytes, self.model_sent_at, self.update_at = {}, {}, {}
        self.failed = {d: "killed" for d in planned if d in self.killed}
        self.failed.update(
            {
                d: "disconnected" if d in self.lost else "no_hello"
                for d in planned
                if d not in self.failed and d not in self.writers
            }
        )
        self.down.expect = {d for d in planned if d not in self.failed}
        self.done = asyncio.Event()
        self._check_done()
        payload = enc.encode(model, self.enc_down, tensor_sizes=self.sizes)
        await asyncio.gather(
            *(
                self._start_device(d, key, wire, devs[d], payload, kills.get(d) if l == 1 else None)
                for d in sorted(self.down.expect)
            )
        )
        timeout = float(self.cfg["round_timeout_s"]) + 2 * float(lp.get("paced_s", 0.0))
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except TimeoutError:
            for d in sorted(self.down.expect - set(self.down.updates)):
                self.failed[d] = "timeout"
        completed = sorted(d for d in self.down.updates if d not in self.killed)
        if completed:
            received = np.stack([self.down.updates[d] for d in completed]).astype(np.float32, copy=False)
            w = np.array([self.n_train[d] for d in completed], dtype=np.float32)
            rule = str(self.cfg.get("rule", "fedavg"))  # the numpy twin of the engine's rule
            model = model + aggregate_np(rule, received, w, float(self.cfg.get("beta", 0.1)))
        devices = {}
        for d in planned:
            m = self.down.metrics.get(d, {})
            sent, got = self.model_sent_at.get(d), self.update_at.get(d)
            devices[str(d)] = {
                "status": "ok" if d in completed else self.failed.get(d, "failed"),
                "got_model": d in self.model_bytes,
                "bytes_down": self.model_bytes.get(d, 0),
                "bytes_up": self.down.update_bytes.get(d, 0) if d in completed else 0,
                "train_loss": m.get("train_loss") if d in completed else None,
                "busy_s": m.get("busy_s"),
                "compute_s": m.get("compute_s"),
                "rss_kb": m.get("rss_kb"),
                "torch_loaded": bool(m.get("torch_loaded", False)),
                "rejected": m.get("rejected", {}),
                "wall_down_s": m["model_at"] - sent if sent is not None and m.get("model_at") is not None else None,
                "wall_up_s": got - m["up_at"] if got is not None and m.get("up_at") is not None else None,
                **{x: m[x] for x in FIRMWARE_KEYS if d in completed and x in m},
            }  # firmware devices
        report = {
            "kind": "local",
            "local": l,
            "key": key,
            "devices": devices,
            "rejected": dict(self.down.rejected),
            "reconnects": self.reconnects,
        }
        return model, completed, report

    async def _to_ga(self, gw: asyncio.StreamWriter, data: bytes) -> None:
        """Write to the global coordinator; a coordinator that is gone loses the report (the round
        is abandoned: a resumed coordinator replays it)."""
        try:
            gw.write(data)
            await gw.drain()
        except (ConnectionError, OSError, RuntimeError):
            pass

    async def _global_round(self, r: int, plan: dict[str, Any], g: np.ndarray, gw: asyncio.StreamWriter) -> None:
        t0 = time.perf_counter()
        offset = int(plan.get("offset", 0))
        model = np.asarray(g, dtype=np.float32).copy()
        self.killed, self.lost = set(), set()  # a device that died in an earlier round runs again
        kills = {int(d): float(s) for d, s in plan.get("kill", {}).items()}
        contributed: set[int] = set()
        for l, lp in enumerate(plan["local"], 1):
            model, completed, report = await self._local_round(l, lp, model, kills, offset)
            contributed.update(completed)
            await self._to_ga(gw, self.up.make(fm.MsgType.METRICS, r, "none", json.dumps(report).encode()))
        wait = float(plan.get("up_wait_s", 0.0))
        if wait > 0:
            await asyncio.sleep(wait)
        final = {
            "kind": "final",
            "contributed": sorted(contributed),
            "wall_s": time.perf_counter() - t0,
            "rss_kb": proc_status_kb("VmRSS"),
            "hwm_kb": proc_status_kb("VmHWM"),
            "torch_loaded": "torch" in sys.modules,
            "rejected_up": dict(self.up.rejected),
            "control_bytes": self.control_bytes,
        }
        if plan.get("report") == "model":  # one cluster: flat FL, the model itself
            payload, encoding = enc.encode(model, "float32"), "float32"
        else:
            payload, encoding = (
                enc.encode(model - np.asarray(g, dtype=np.float32), self.enc_up, tensor_sizes=self.sizes),
                self.enc_up,
            )
        await self._to_ga(
            gw,
            self.up.make(fm.MsgType.METRICS, r, "none", json.dumps(final).encode())
            + self.up.make(fm.MsgType.UPDATE, r, encoding, payload),
        )  # nonces increase in send order

    # ---- the process ----------------------------------------------------------------------
    async def _connect_ga(self, grace_s: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Connect to the global coordinator's (stable) address and say HELLO, retrying every 0.2 s
        for ``grace_s`` (a resumed coordinator binds the same address); None if nobody answered.
        The devices keep their connections to this process meanwhile."""
        deadline = time.monotonic() + grace_s
        host = str(self.cfg["host"])
        tls = client_context(self.cfg["tls_ca"]) if self.cfg.get("tls_ca") else None  # --tls: the run's CA
        while True:
            try:
                greader, gw = await asyncio.open_connection(
                    host, int(self.cfg["ga_port"]), ssl=tls, server_hostname=host if tls else None
                )
                break
            except OSError as exc:
                if time.monotonic() >= deadline:
                    log(f"aggregator {self.cluster}: no global coordinator ({exc})")
                    return None
                await asyncio.sleep(0.2)
        hello = {
            "pid": os.getpid(),
            "port": self.port,
            "cluster": self.cluster,
            "torch_loaded": "torch" in sys.modules,
            "reconnects": self.ga_connects,
            "connected": sorted(self.writers),
            "device_pids": {str(d): p for d, p in sorted(self.pids.items()) if d in self.writers},
        }
        if self.ga_connects:
            log(
                f"aggregator {self.cluster}: connected to the global coordinator again "
                f"(connection {self.ga_connects + 1})"
            )
            self.up.round = 0  # a resumed coordinator replays the round it was killed in
        self.ga_connects += 1
        try:
            gw.write(self.up.make(fm.MsgType.HELLO, 0, "none", json.dumps(hello).encode()))
            await gw.drain()
        except (ConnectionError, OSError):
            gw.close()
            return None if time.monotonic() >= deadline else await self._connect_ga(deadline - time.monotonic())
        return greader, gw

    async def _stop_devices(self) -> None:
        stop = b'{"cmd": "stop"}'
        for d in list(self.writers):
            await self._send(d, self.down.make(fm.MsgType.CONTROL, d, max(self.down.round, 1), "none", stop))
        for _ in range(300):
            if not self.writers:
                break
            await asyncio.sleep(0.01)

    async def run(self) -> int:
        want = int(self.cfg.get("port", 0))
        # --tls: devices check this process with the run's CA (it serves the coordinator's certificate)
        tls = server_context(Path(self.cfg["tls_ca"]).parent) if self.cfg.get("tls_ca") else None
        try:
            server = await asyncio.start_server(self._serve_device, "127.0.0.1", want, ssl=tls)
        except OSError as exc:
            if not want:
                raise
            log(f"aggregator {self.cluster}: port {want} is taken ({exc}); listening on another")
            server = await asyncio.start_server(self._serve_device, "127.0.0.1", 0, ssl=tls)
        self.port = server.sockets[0].getsockname()[1]
        log(
            f"aggregator {self.cluster}: pid {os.getpid()} listening on port {self.port}, "
            f"{len(self.n_train)} member device(s)"
        )
        conn = await self._connect_ga(0.0)
        if conn is None:
            server.close()
            return NO_COORDINATOR_EXIT
        greader, gw = conn
        self.gw = gw
        if self.cfg.get("announce_ready"):  # first start: say when every member is connected
            await self._wait_connected(sorted(self.n_train), float(self.cfg["hello_timeout_s"]))
            ready = {"kind": "ready", "connected": sorted(self.writers)}
            gw.write(self.up.make(fm.MsgType.METRICS, 0, "none", json.dumps(ready).encode()))
            await gw.drain()
        max_frame = max(fm.frame_size(enc.encoded_size(self.p, self.enc_down, tensor_sizes=self.sizes)), 1 << 20)
        plans: dict[int, dict[str, Any]] = {}
        code = 0
        try:
            while True:
                try:
                    data = await read_frame(greader, max_frame)
                except (asyncio.IncompleteReadError, ConnectionError, Rejected) as exc:
                    grace = float(self.cfg.get("reconnect_grace_s", 0.0))
                    log(
                        f"aggregator {self.cluster}: connection to the global coordinator lost ({exc!r}); "
                        + (f"calling it again for {grace:g} s" if grace > 0 else "exiting")
                    )
                    gw.close()
                    conn = await self._connect_ga(grace) if grace > 0 else None
                    if conn is None:
                        code = NO_COORDINATOR_EXIT
                        break
                    greader, gw = conn
                    self.gw = gw
                    plans = {}
                    continue
                got = self.up.handle(data)
                if got is None:
                    continue
                fr, content = got
                if fr.msg_type == fm.MsgType.CONTROL:
                    if content["cmd"] == "round":
                        plans = {k: v for k, v in plans.items() if k > self.up.round}
                        plans[int(content["round"])] = content
                        continue
                    if content["cmd"] == "redirect":
                        await self._hand_over(content.get("devices", {}))
                        continue
                    log(f"aggregator {self.cluster}: {content['cmd']}")
                    await self._stop_devices()
                    break
                self.up.round = fr.round
                plan = plans.pop(fr.round, None)
                if plan is None:
                    log(f"aggregator {self.cluster}: model of round {fr.round} without a plan; ignored")
                    continue
                await self._global_round(fr.round, plan, content, gw)
        finally:
            server.close()
            gw.close()
        return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as fh:
        cfg = json.load(fh)
    return asyncio.run(LocalAggregator(cfg).run())


if __name__ == "__main__":
    sys.exit(main())
