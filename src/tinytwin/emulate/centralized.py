"""The emulation twin's centralized coordinator: an asyncio TCP server that runs centralized FedAvg
with one real OS process per device (:mod:`tinytwin.emulate.device`).

Per round it does what :class:`tinytwin.engines.simulate.Simulator` does — same client
selection, same dropout draws, the same cost figures (:mod:`tinytwin.engines.round_costs`:
times, lost packets, link outages, deadline, energy), same aggregators and server
optimizer — but the devices train in their own processes, every message is an
authenticated frame on a TCP connection paced by the link shaper (userspace, or tbf with
``--netns``), a dropout is a real ``SIGKILL``, a link outage really drops frames. Rounds
carry the cost model's time (``sim_time_s``, as the simulator's) and the wall clock
(``wall_time_s``). Every round commits a checkpoint, so a killed coordinator resumes and
its devices reconnect. See docs/emulation.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinytwin.algorithms.server_optimizers import make_server_optimizer
from tinytwin.emulate import layers_np, measured, mlp_np, shaper
from tinytwin.emulate.centralized_files import write_device_configs, write_shards
from tinytwin.emulate.centralized_rows import Draw, Gathered, Sent, device_rows, measured_rows
from tinytwin.emulate.centralized_state import EmuState
from tinytwin.emulate.device import OOM_EXIT
from tinytwin.emulate.firmware_fleet import firmware_configs, firmware_groups
from tinytwin.emulate.frame_checks import Coordinator
from tinytwin.emulate.lifecycle import (
    ProgressFn,
    await_hello,
    load_run_key,
)
from tinytwin.emulate.model_rows import model_rows
from tinytwin.emulate.mqtt_link import MqttTransport
from tinytwin.emulate.netns import NetnsFleet
from tinytwin.emulate.options import EmulateOptions, options_to_json
from tinytwin.emulate.processes import DeviceProcesses, exit_kind
from tinytwin.emulate.run_stats import emulation_figures
from tinytwin.emulate.rundir import COORDINATOR_FILE, NETNS_FILE, read_json, write_json
from tinytwin.emulate.serving import accepted_frames, send_frame
from tinytwin.emulate.sizes import EmulatedSizes, model_sizes_summary
from tinytwin.emulate.skeleton import CoordinatorClock, firmware_metrics
from tinytwin.emulate.tls import server_context_for
from tinytwin.engines.distill_round import distillation_summary
from tinytwin.engines.experiment import Experiment
from tinytwin.engines.round_costs import RoundCosts, round_costs
from tinytwin.engines.simulate import centralized_summary, link_events, select_participants
from tinytwin.errors import TinyTwinError
from tinytwin.fleet.battery import powered, settle_round
from tinytwin.fleet.cost import compute_flops
from tinytwin.rng import Stream, stream_rng
from tinytwin.spec.schema import ExperimentSpec
from tinytwin.store.db import RunStore
from tinytwin.store.files import private_dirs
from tinytwin.wire import frame as fm
from tinytwin.wire.roundtrip import roundtrip_torch

log = logging.getLogger("tinytwin.emulate")


def check_centralized_emulatable(spec: ExperimentSpec) -> None:
    """Refuse, with the reason, a centralized spec this coordinator cannot run."""
    a = spec.algorithm
    if a.family != "centralized":
        raise TinyTwinError(f"emulate runs centralized FL only for now; algorithm.family is {a.family!r}")
    if a.encoding == "bitmap" or a.downlink_encoding == "bitmap":
        raise TinyTwinError("emulate: the bitmap encoding is not supported for centralized updates")


class Emulation(CoordinatorClock):
    """One emulated run: spawns the device processes, serves them, drives the rounds."""

    def __init__(
        self,
        exp: Experiment,
        store: RunStore,
        run_id: str,
        run_dir: Path,
        options: EmulateOptions,
        resume: bool = False,
        net: NetnsFleet | None = None,
    ) -> None:
        self.exp, self.store, self.run_id, self.run_dir, self.opt = exp, store, run_id, run_dir, options
        a = exp.spec.algorithm
        self.n_dev = exp.fleet.num_devices
        self.edir = run_dir / "emulate"
        mqtt_on = exp.spec.transport.protocol == "mqtt"
        self.transport = MqttTransport(exp.spec.name, self.edir, options.broker_url) if mqtt_on else None
        self._on_wire = self.transport.on_wire if self.transport else lambda d, n, direction: n  # bytes as carried
        private_dirs(self.edir, *(self.edir / sub for sub in ("keys", "devices", "logs")))
        self.run_key = load_run_key(self.edir, resume)
        self.linears_rows, self.layer_rows = model_rows(exp)  # MLP rows, or a CNN's layer list (layers_np)
        self.linears = mlp_np.linears_from(self.linears_rows) if self.linears_rows else None
        self.cnn = layers_np.Net.from_rows(self.layer_rows) if self.layer_rows else None
        # Firmware images are built (and a model too big for a board refused) before any process starts.
        self.firmware = firmware_configs(
            exp,
            self.linears_rows or [],
            self.edir / "firmware",
            firmware_groups(exp, options.firmware_all),
            arena_override=options.firmware_arena_override,
        )
        self.coord = Coordinator(
            self.n_dev, self.run_key, exp.model.num_params, list(exp.model.tensor_sizes), a.encoding
        )
        self.coord.on_drop = self._drop_update
        self.sizes = EmulatedSizes(exp, self.coord)  # which (sub-)model each device trains
        so = a.server_optimizer
        self.server_opt = make_server_optimizer(
            so.name, lr=so.lr, momentum=so.momentum, beta1=so.beta1, beta2=so.beta2, tau=so.tau
        )
        L = exp.fleet.links
        self.links = [
            shaper.Link(
                float(L.latency_s[d]),
                float(L.up_bps[d]),
                float(L.down_bps[d]),
                float(L.loss[d]),
                int(L.mtu_bytes[d]),
                int(L.header_bytes[d]),
            )
            for d in range(self.n_dev)
        ]
        f_sample, f_step = exp.device_flops_per_sample, exp.device_flops_per_step
        flops = compute_flops(exp.num_samples, a.local_epochs, a.batch_size, f_sample, f_step)
        self.compute_s = flops / exp.fleet.flops_per_s
        self.up_bytes, self.down_bytes = exp.uplink_bytes(), exp.downlink_bytes()
        self.x_test = exp.dataset.x_test.reshape(len(exp.dataset.x_test), -1).astype(np.float32)
        self.y_test = exp.dataset.y_test.astype(np.int64)
        self.net = net
        self.kernel = net.kernel if net is not None else shaper.KERNEL_NONE
        self.host = net.bridge_ip if net is not None else "127.0.0.1"
        self.devices = DeviceProcesses(self.edir, net.exec_prefix if net is not None else None)
        self.writers: dict[int, asyncio.StreamWriter] = {}
        self.hello: dict[int, asyncio.Event] = {}
        self.failed: dict[int, str] = {}  # device -> failure kind in the current round
        self.killed: set[int] = set()
        self.update_at: dict[int, float] = {}  # device -> time.monotonic() its UPDATE was complete
        self.pending: list[dict[str, Any]] = []  # events that happened between rounds
        self.mem_max: dict[int, dict[str, int]] = {}
        self.qemu_mem: dict[int, dict[str, int]] = {}
        self.fw_rounds: list[tuple[int, float, float]] = []  # (insns, firmware s, cost-model s) per device-round
        self.done = asyncio.Event()
        self.port = 0
        self.control_bytes = 0
        self.reconnects = 0
        self.torch_devices: set[int] = set()
        self._start_clock()

    @property
    def procs(self) -> dict[int, Any]:
        return self.devices.procs

    @property
    def spawns(self) -> Counter[int]:
        return self.devices.spawns

    # ---- device processes ----------------------------------------------------------
    def _spawn(self, d: int) -> None:
        self.hello[d] = asyncio.Event()
        self.devices.spawn(d)

    async def _await_hellos(self, devices: list[int], events: list[dict[str, Any]], r: int) -> None:
        async def one(d: int) -> None:
            got = await await_hello(self.hello[d], lambda: self.devices.running(d), self.opt.start_timeout_s)
            if got != "hello":
                self.failed[d] = kind = await self._exit_kind(d) if got == "exited" else "no_hello"
                wait = f"did not say HELLO in {self.opt.start_timeout_s} s"
                why = f"exited before its HELLO ({kind})" if got == "exited" else wait
                events.append(self._event(r, d, kind.split(" ")[0], f"device {d} {why}"))

        await asyncio.gather(*(one(d) for d in devices))

    def _alive(self, d: int) -> bool:
        return self.devices.running(d) and d in self.writers

    async def _exit_kind(self, d: int) -> str:
        if d not in self.procs:
            return "crash"
        for _ in range(200):
            if not self.devices.running(d):
                break
            await asyncio.sleep(0.01)
        rc = self.devices.returncode(d)
        # here an OOM exit wins over a fault file (one a restarted device's earlier process left)
        fw = d in self.firmware and rc != OOM_EXIT
        return exit_kind(
            rc,
            killed=d in self.killed,
            workdir=Path(self.firmware[d]["firmware"]["workdir"]) if fw else None,
            log_file=self.edir / "logs" / f"d{d}.log",
        )

    def _kernel_links(self, reachable: np.ndarray) -> None:
        """Namespaces: a device's veth is down while its link is down for a whole round
        (nothing gets through, in either direction); a cut inside a round is the shaper's."""
        if self.net is None:
            return
        for d in range(self.n_dev):
            if bool(reachable[d]) == (d in self.net.links_down):
                self.net.set_link(d, bool(reachable[d]))
                self.net.save(self.edir / NETNS_FILE)

    # ---- connections ----------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        device: int | None = None
        try:
            async for fr, content, total in accepted_frames(
                reader,
                writer,
                self.coord,
                lambda: device,
                body_timeout=60,
                on_reject=lambda dev, exc: log.warning("rejected frame header from device %s: %s; closing", dev, exc),
            ):
                if fr.msg_type == fm.MsgType.HELLO:
                    device = fr.sender
                    self.writers[device] = writer
                    self.control_bytes += total
                    if content.get("reconnects"):
                        self.reconnects += 1
                        self.pending.append(
                            self._event(
                                self.coord.round,
                                device,
                                "reconnect",
                                f"device {device} (pid {content.get('pid')}) reconnected "
                                f"(connection {int(content['reconnects']) + 1})",
                            )
                        )
                    if device in self.hello:
                        self.hello[device].set()
                elif fr.msg_type == fm.MsgType.METRICS:
                    self.coord.metrics[fr.sender] = content
                    if content.get("torch_loaded"):
                        self.torch_devices.add(fr.sender)
                    self.control_bytes += total
                elif fr.msg_type == fm.MsgType.UPDATE:
                    if fr.sender in self.killed:
                        continue
                    self.update_at[fr.sender] = time.monotonic()
                    self.coord.updates[fr.sender] = content
                    self.coord.update_bytes[fr.sender] = self._on_wire(fr.sender, total, 0)
                    self._check_done()
        finally:
            if device is not None and self.writers.get(device) is writer:
                del self.writers[device]
                if device in self.coord.expect and device not in self.coord.updates:
                    self.failed[device] = await self._exit_kind(device)
                    self.coord.expect.discard(device)
                    self._check_done()
            writer.close()

    def _drop_update(self, device: int, reason: str) -> None:  # its update was refused: out of the round
        self.failed[device] = reason
        self._check_done()

    def _check_done(self) -> None:
        if self.coord.expect <= set(self.coord.updates):
            self.done.set()

    async def _send(self, d: int, data: bytes) -> bool:
        return await send_frame(self.writers.get(d), data)

    async def _start_device_round(self, i: int, d: int, r: int, payload: bytes, victim: bool, plan: RoundCosts) -> Sent:
        """Round plan, then the shaped global model, to one selected device (then its SIGKILL, for a victim).

        The plan tells the device how long its uplink takes beyond what the kernel shapes and
        whether its update is dropped (its link goes down, or the deadline passes, before the
        upload would be done). A link that goes down during the download drops the model.
        """
        t0, mono0 = time.perf_counter(), time.monotonic()
        link, ts = self.links[d], self.opt.time_scale
        cut = bool(plan.link_down[i] or plan.straggler[i])
        if cut and plan.down_s[i] < plan.down.time_s[i]:
            return Sent(mono0=mono0)  # the link is gone before the model is through: dropped by the shaper
        up_bytes = int(self.exp.device_uplink_bytes[d])
        up_wait = self._sender_wait_s(plan.up.time_s[i], up_bytes, link.up_bps, link, plan.up_wait_s[i])
        plan_msg: dict[str, Any] = {"cmd": "round", "round": r, "up_wait_s": up_wait, "drop_update": cut}
        if cut:  # the device gives up where the model cuts its round (link down / deadline), then drops its update
            plan_msg["why"] = "link down" if plan.link_down[i] else "deadline"
            plan_msg["cut_after_s"] = float(plan.cpu_s[i] + plan.up_s[i]) * ts
        ctrl = self.coord.make(fm.MsgType.CONTROL, d, r, "none", json.dumps(plan_msg).encode())
        if await self._send(d, ctrl):
            self.control_bytes += len(ctrl)
        data = self.coord.make(fm.MsgType.MODEL, d, r, self.exp.spec.algorithm.downlink_encoding, payload)
        wait = self._sender_wait_s(plan.down.time_s[i], len(data), link.down_bps, link, plan.down_wait_s[i])
        if wait > 0:
            await asyncio.sleep(wait)
        if not await self._send(d, data):
            return Sent(mono0=mono0, shaped_s=wait)
        if victim:
            frac = float(stream_rng(self.exp.spec.seed, Stream.FAILURES, r, d).random())
            delay = frac * float(self.compute_s[d]) * ts
            if delay > 0:
                await asyncio.sleep(delay)
            self.killed.add(d)
            self.devices.kill(d)
        return Sent(self._on_wire(d, len(data), 1), time.perf_counter() - t0, mono0, wait)

    # ---- rounds -----------------------------------------------------------------------
    def _sender_wait_s(self, link_s: float, nbytes: int, bps: float, link: Any, medium_wait_s: float) -> float:
        """Wall seconds the sender sleeps for a transfer: the part of its modelled time no kernel qdisc shapes."""
        wait = shaper.userspace_share(float(link_s), nbytes, bps, link, self.kernel, float(medium_wait_s))
        return wait * self.opt.time_scale

    def _sample_memory(self) -> None:
        self.devices.sample_memory(self.mem_max)
        firmware_metrics(self.coord.metrics, self.qemu_mem, self.fw_rounds)  # firmware devices: QEMU, insns

    async def _draw(self, r: int, events: list[dict[str, Any]], empty: np.ndarray | None) -> Draw:
        """The round's participants and dropout victims (the simulator's draws), its timeline
        events, every reachable dead device restarted, and the cost model's plan."""
        exp, spec = self.exp, self.exp.spec
        a, seed = spec.algorithm, spec.seed
        for d, kind in exp.timeline.changes(r):
            events.append(self._event(r, d, kind, f"device {d} {kind}"))
        events += link_events(exp, r, self.modelled_s)
        online_ids = np.flatnonzero(powered(exp.timeline.online(r), empty))  # an empty battery: offline
        reachable = exp.timeline.reachable(r)
        self._kernel_links(reachable)
        selected = select_participants(online_ids[reachable[online_ids]], a.clients_per_round, seed, r)
        victim = stream_rng(seed, Stream.DROPOUT, r).random(self.n_dev)[selected] < spec.failures.dropout
        # Reboot every reachable device that died earlier (killed, out of memory, crashed).
        restart = [int(d) for d in online_ids if reachable[d] and not self._alive(int(d))]
        for d in restart:
            self.killed.discard(d)
            self._spawn(d)
            events.append(self._event(r, d, "restart", f"device {d} process restarted"))
        await self._await_hellos(restart, events, r)
        self.killed = set()
        plan = round_costs(exp, r, online_ids, selected, victim)
        for d, t in zip(selected[plan.straggler], plan.total_s[plan.straggler]):
            events.append(self._event(r, int(d), "straggler", f"needed {t:.3f} s, deadline {a.deadline_s} s"))
        return Draw(online_ids, reachable, selected, victim, plan)

    async def _serve_round(
        self, r: int, draw: Draw, g: torch.Tensor, events: list[dict[str, Any]]
    ) -> tuple[list[Sent], float, Gathered]:
        """Send the global model (and the plans, and the kills), wait for the updates; return what
        was sent, when the round started (monotonic) and what came back."""
        a, plan, selected = self.exp.spec.algorithm, draw.plan, draw.selected
        self.coord.round = r
        self.coord.updates, self.coord.update_bytes, self.coord.metrics = {}, {}, {}
        self.update_at = {}
        self.coord.expect = {int(d) for d, ok in zip(selected, plan.completed) if ok and int(d) not in self.failed}
        self.done = asyncio.Event()
        self._check_done()
        payloads = self.sizes.payloads(g, a.downlink_encoding)
        round_mono = time.monotonic()
        sends = await asyncio.gather(
            *(
                self._start_device_round(i, int(d), r, payloads[self.sizes.key_of(d)], bool(draw.victim[i]), plan)
                for i, d in enumerate(selected)
            )
        )
        for d in selected[draw.victim]:
            events.append(
                self._event(r, int(d), "killed", "SIGKILL during the round, after receiving the global model")
            )
        timeout = self.opt.round_timeout_s + float(plan.total_s.max(initial=0.0)) * self.opt.time_scale * 2
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except TimeoutError:
            for d in sorted(self.coord.expect - set(self.coord.updates)):
                self.failed[d] = "timeout"
        self._sample_memory()
        for d, kind in sorted(self.failed.items()):
            if kind != "killed":
                events.append(self._event(r, d, kind.split(" ")[0], f"device {d}: {kind}"))
        for dev, detail in self.coord.drain_rejects():
            events.append(self._event(r, dev, "frame_rejected", detail))
        got = Gathered(self.coord.updates, self.coord.update_bytes, self.coord.metrics, self.update_at, self.failed)
        return list(sends), round_mono, got

    def _next_global(
        self, r: int, state: EmuState, got: Gathered, events: list[dict[str, Any]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The aggregate of the updates that arrived, stepped by the server optimizer (the
        global model unchanged when none did), as the devices will receive it."""
        a, exp = self.exp.spec.algorithm, self.exp
        completed = np.array(sorted(got.updates), dtype=np.int64)
        g, new_global, server_state = state.global_params, state.global_params, state.server_state
        if completed.size:
            agg, refused = self.sizes.aggregate(a.aggregator, got.updates, completed, g, r)
            if refused is not None:
                events.append(self._event(r, None, "aggregation_skipped", f"{a.aggregator.name}: {refused}"))
            if agg is not None:
                new_global, server_state = self.server_opt.step(g, g + agg, server_state)
        else:
            events.append(self._event(r, None, "empty_round", "no device completed the round"))
        if a.downlink_encoding != "float32":
            new_global = roundtrip_torch(new_global[None], a.downlink_encoding, tensor_sizes=exp.model.tensor_sizes)[0]
        return new_global, server_state

    def _evaluate(self, r: int, params: torch.Tensor) -> tuple[float | None, float | None]:
        """Test accuracy and loss of the global model in the spec's evaluation rounds (numpy)."""
        spec = self.exp.spec
        if not (r % spec.evaluation.every == 0 or r == spec.rounds):
            return None, None
        flat = params.numpy()[: self.exp.model.num_params]  # the global model (shallower heads follow it)
        if self.cnn is None:
            assert self.linears is not None  # an MLP run: its rows were read at start
            return mlp_np.evaluate(self.linears, flat, self.x_test, self.y_test)
        return layers_np.evaluate(self.cnn, flat, self.x_test, self.y_test)

    def _final_costs(self, r: int, draw: Draw, got: Gathered) -> RoundCosts:
        """The cost model's figures with the failures that really happened (a device that
        crashed, ran out of memory or timed out counts like one that dropped out)."""
        plan, selected = draw.plan, draw.selected
        failed = np.array([plan.completed[i] and int(d) not in got.updates for i, d in enumerate(selected)], dtype=bool)
        if not failed.any():
            return plan
        return round_costs(self.exp, r, draw.online_ids, selected, draw.victim | failed)

    async def _round(self, r: int, state: EmuState) -> EmuState:
        """One round: draw, serve, aggregate, evaluate, record (one transaction with its checkpoint)."""
        wall0 = time.perf_counter()
        events, self.pending = self.pending, []
        self.failed = {}
        draw = await self._draw(r, events, state.battery_empty)
        sends, round_mono, got = await self._serve_round(r, draw, state.global_params, events)
        new_global, server_state = self._next_global(r, state, got, events)
        distilled, server_s = self.sizes.take_distilled(r, self.modelled_s, events)  # the server's FedDF step
        acc, loss = self._evaluate(r, new_global)
        round_s = time.perf_counter() - wall0
        final = self._final_costs(r, draw, got)
        rows, losses = device_rows(r, self.exp.num_samples, draw, final, got, sends)
        bytes_up, bytes_down = int(sum(got.update_bytes.values())), int(sum(s.bytes for s in sends))
        t1 = state.sim_time_s + final.round_s + server_s
        charge, empty, battery = settle_round(
            self.exp.batteries, state.battery_j, state.battery_empty, final.energy_j, state.sim_time_s, t1, r, events
        )
        new = EmuState(
            r,
            new_global,
            server_state,
            t1,
            state.energy_j + final.energy_j,
            self._wall(),
            state.bytes_up + bytes_up,
            state.bytes_down + bytes_down,
            state.accuracies + ([(r, acc)] if acc is not None else []),
            state.round_walls + [round_s],
            state.distillation + distilled,
            charge,
            empty,
        )
        row = {
            "round": r,
            "sim_time_s": new.sim_time_s,
            "duration_s": round_s,
            "selected": int(draw.selected.size),
            "completed": len(got.updates),
            "dropped": int(draw.victim.sum()),
            "stragglers": int(draw.plan.straggler.sum()),
            "train_loss": float(np.mean(losses)) if losses else None,
            "test_accuracy": acc,
            "test_loss": loss,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "energy_j": float(final.energy_j.sum()),
            "wall_time_s": round_s,
        }
        measured_ = measured_rows(r, draw, got, sends, round_mono)
        measured.write_round(self.store, self.run_id, measured_, row, rows, events, new.to_checkpoint(), battery)
        return new

    async def run(self, state: EmuState, progress: ProgressFn | None = None, resume: bool = False) -> EmuState:
        """Serve the devices and emulate rounds ``state.round + 1 ..``; ``resume``: adopt the
        device processes a killed coordinator left running (they reconnect to the same address)."""
        exp = self.exp
        self._start_clock(state.wall_s, state.sim_time_s)
        self.coord.round = state.round
        saved = read_json(self.edir / COORDINATOR_FILE) if resume else None
        want = int(saved["port"]) if saved and saved.get("host") == self.host else 0
        self.hello = {d: asyncio.Event() for d in range(self.n_dev)}  # before anyone can say HELLO
        tls = server_context_for(self.edir, self.host) if self.opt.tls else None
        try:
            server = await asyncio.start_server(self._serve, self.host, want, ssl=tls)
        except OSError as exc:
            if not want:
                raise
            self.pending.append(
                self._event(
                    state.round,
                    None,
                    "address_changed",
                    f"{self.host}:{want} is taken ({exc}); device processes restarted",
                )
            )
            server = await asyncio.start_server(self._serve, self.host, 0, ssl=tls)
        self.port = server.sockets[0].getsockname()[1]
        same_address = saved is not None and (saved.get("host"), saved.get("port")) == (self.host, self.port)
        if self.transport is not None:  # a fresh broker: every device gets its address anew
            self.transport.start((self.host, self.port))
            same_address = False
        write_json(
            self.edir / COORDINATOR_FILE, {"host": self.host, "port": self.port, "options": options_to_json(self.opt)}
        )
        try:
            if not resume:
                write_shards(self.edir, self.exp, self.coord.keys)
            if not same_address:
                self._write_configs()
            adopted = self.devices.adopt(range(self.n_dev)) if resume else []
            if resume and not same_address:
                for d in adopted:  # they keep calling the old address
                    self.devices.kill(d)
                adopted = []
            start_events: list[dict[str, Any]] = []
            for d in range(self.n_dev):
                if d not in adopted:
                    self._spawn(d)
            await self._await_hellos(list(range(self.n_dev)), start_events, state.round)
            self.startup_s = time.perf_counter() - self.t_start
            self._sample_memory()
            if resume:
                start_events.append(
                    self._event(
                        state.round,
                        None,
                        "devices_resumed",
                        f"{len(adopted)} device processes of the killed coordinator "
                        f"adopted, {self.n_dev - len(adopted)} started again",
                    )
                )
            if start_events:
                self.store.add_events(self.run_id, start_events)
            for r in range(state.round + 1, exp.spec.rounds + 1):
                state = await self._round(r, state)
                self.modelled_s = state.sim_time_s
                if progress is not None:
                    acc = state.accuracies[-1][1] if state.accuracies and state.accuracies[-1][0] == r else None
                    progress(r, {"accuracy": acc, "sim_time_s": state.sim_time_s})
            await self._stop_devices()
        finally:
            self.devices.kill_all()
            if self.transport is not None:
                self.transport.stop()
            server.close()
            await server.wait_closed()
        return state

    def _write_configs(self) -> None:
        """Every device's configuration, naming this coordinator's address (or the broker's)."""
        rows = {"linears": self.linears_rows, "layers": self.layer_rows}
        write_device_configs(
            self.exp,
            self.opt,
            (self.host, self.port),
            self.compute_s,
            lambda d: {
                **self.sizes.device_model(d, rows),
                **(self.transport.device_extra(d) if self.transport else {}),
            },
            self.firmware,
            self.devices.config_file,
        )

    async def _stop_devices(self) -> None:
        for d in list(self.writers):
            await self._send(d, self.coord.make(fm.MsgType.CONTROL, d, self.coord.round, "none", b'{"cmd": "stop"}'))
        for d in self.procs:
            for _ in range(300):
                if not self.devices.running(d):
                    break
                await asyncio.sleep(0.01)

    def initial_state(self) -> EmuState:
        g = self.exp.initial_params()
        state = EmuState(0, g, self.server_opt.init(g), 0.0, np.zeros(self.n_dev))
        if self.exp.batteries is not None:
            state.battery_j, state.battery_empty = self.exp.batteries.start()
        return state

    def summary(self, state: EmuState, wall_time_s: float) -> dict[str, Any]:
        return {
            **centralized_summary(self.exp, state, wall_time_s, self.up_bytes, self.down_bytes),
            **model_sizes_summary(self, state),
            **distillation_summary(state.distillation),
            "emulate": emulation_figures(self, state),
        }

    def shaping(self) -> dict[str, Any]:
        """Which mechanism shapes which part of every link time in this run."""
        if self.net is not None:
            return self.net.shaping()
        return {"mode": "userspace", "rate": "userspace", "latency_loss": "userspace"}
