"""What a decentralized emulation's coordinator holds, typed in one place: the experiment's
figures it plans rounds with, the device processes and their connections, the run's running
totals. :class:`DflState` is the base of the coordinator (:mod:`tinytwin.emulate.dfl_coordinator`)
and of each of its concerns (recording, resume, summary), so every attribute they share is
declared, with its type, once: here.

It also owns the two messages every concern sends on the coordinator links (a CONTROL to one
device, ``peer_down`` to a lost device's partners)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinytwin.algorithms.lr_schedules import LRSchedule
from tinytwin.emulate import shaper
from tinytwin.emulate.dfl_algorithms import lookup
from tinytwin.emulate.dfl_directory import link_partners
from tinytwin.emulate.firmware_fleet import firmware_configs, firmware_groups
from tinytwin.emulate.fork_fleet import ForkServer
from tinytwin.emulate.frame_checks import Coordinator
from tinytwin.emulate.lifecycle import load_run_key
from tinytwin.emulate.model_rows import mlp_rows
from tinytwin.emulate.options import EmulateOptions
from tinytwin.emulate.skeleton import CoordinatorClock
from tinytwin.engines.decentralized import memory_plans
from tinytwin.engines.experiment import Experiment
from tinytwin.engines.network import Network
from tinytwin.fleet.cost import compute_flops
from tinytwin.store.db import RunStore
from tinytwin.store.files import private_dirs
from tinytwin.wire import frame as fm


@dataclass
class DflOptions(EmulateOptions):
    merge_timeout_s: float = 30.0
    """A device stops waiting for a neighbour's model after this long (wall seconds, on top of
    pacing) and merges what arrived; normally the coordinator's ``peer_down`` comes first."""
    memory_sample_every: int = 5
    """Sample every process's RSS/PSS after round 1, every this many rounds and the last round
    (reading 200 smaps_rollup files costs the coordinator CPU)."""


class DflState(CoordinatorClock):
    """The state of one decentralized emulated run (see the module's docstring)."""

    startup_s: float | None = None
    """Wall seconds from the start to the directory handed out (None until then, or resumed)."""

    def __init__(
        self,
        exp: Experiment,
        network: Network,
        store: RunStore,
        run_id: str,
        run_dir: Path,
        options: DflOptions,
        resume: bool = False,
    ) -> None:
        self.exp, self.net, self.store, self.run_id, self.run_dir, self.opt = (
            exp,
            network,
            store,
            run_id,
            run_dir,
            options,
        )
        self.a = exp.spec.algorithm
        self.n = exp.fleet.num_devices
        self.edir = run_dir / "emulate"
        private_dirs(self.edir, *(self.edir / sub for sub in ("keys", "devices", "logs")))
        # resumed: the devices of the killed coordinator hold keys from it
        self.run_key = load_run_key(self.edir, resume)
        self.resume = resume
        self.linears_rows = mlp_rows(exp)
        p = exp.model.num_params
        # HELLO / METRICS / model reports on the coordinator links: the centralized twin's checks
        self.coord = Coordinator(self.n, self.run_key, p, list(exp.model.tensor_sizes), "float32")
        self.coord.max_frame = max(self.coord.max_frame, fm.frame_size(4 * p) + 1024, 1 << 20)
        self.partners = link_partners(self.a, network)
        self._init_figures()
        self._init_processes()
        self._init_totals()

    def _init_figures(self) -> None:
        """The experiment's figures the rounds are planned and recorded with."""
        exp, a = self.exp, self.a
        self.train_idx = [q[: a.train_samples] if a.train_samples else q for q in exp.parts]
        self.n_train = np.array([len(q) for q in self.train_idx], dtype=np.int64)
        flops = compute_flops(self.n_train, a.local_epochs, a.batch_size, exp.flops_per_sample, exp.flops_per_step)
        self.compute_s: np.ndarray = flops / exp.fleet.flops_per_s
        ls = a.lr_schedule
        self.lr_sched = LRSchedule(
            ls.name,
            a.lr,
            np.full(self.n, exp.spec.rounds, dtype=np.int64),
            tuple(ls.stair_fractions),
            ls.stair_factor,
            tuple(ls.patience_fractions),
            ls.loss_factor,
            ls.min_lr,
        )
        self.plans = memory_plans(exp)
        ds = exp.dataset
        self.x_test, self.y_test = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)
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
            for d in range(self.n)
        ]
        # the largest message
        self.payload_bytes = lookup(a).payload_bytes(a, exp.model.num_params, list(exp.model.tensor_sizes))

    def _init_processes(self) -> None:
        """Firmware images, the fork server, the connections and who is gone."""
        # Firmware devices: images built (and a model too big for a board refused) before any
        # process starts; merges=True sizes the arena for the M / G merge buffers.
        self.firmware = firmware_configs(
            self.exp,
            self.linears_rows,
            self.edir / "firmware",
            firmware_groups(self.exp, self.opt.firmware_all),
            merges=True,
            arena_override=self.opt.firmware_arena_override,
        )
        self.procs = ForkServer()
        self.writers: dict[int, asyncio.StreamWriter] = {}
        self.hello: dict[int, asyncio.Event] = {d: asyncio.Event() for d in range(self.n)}
        self.ports: dict[int, int] = {}
        self.dead: dict[int, str] = {}  # device -> how it ended (killed, crash, oom, ...)
        self.killed: set[int] = set()
        self.models: dict[int, np.ndarray] = {}
        self.reporting: set[int] = set()  # devices whose report the round waits for
        self.want_models = True  # evaluation round: devices also send their models
        self.done = asyncio.Event()
        self.stopping = False  # after the last round: connections closing is normal
        # coordinator resume: wire round offset, wall seconds of earlier coordinators, devices that
        # did not come back but are killed in the replayed round anyway, reconnects, acks
        self.offset = 0
        self.wall_offset = 0.0
        self.modelled_s = 0.0  # the cost model's clock at the start of the round in flight
        self.absent: set[int] = set()
        self.resolving: set[int] = set()  # devices whose connection closed, exit status awaited
        self.resumed: dict[int, dict[str, Any]] = {}
        self.resume_done = asyncio.Event()
        self.t_start = time.perf_counter()

    def _init_totals(self) -> None:
        """The run's running totals (checkpointed with every round)."""
        self.qemu_mem: dict[int, dict[str, int]] = {}
        self.fw_rounds: list[tuple[int, float, float]] = []  # (insns, firmware s, cost-model s) per device-round
        self.fw_merge_insns: list[int] = []
        self.gist_merges = 0
        self.mem_max: dict[int | str, dict[str, int]] = {}
        self.total_mem_kb: dict[str, int] = {}
        self.devices_cpu_s = 0.0
        self.sampling_s = 0.0
        self.torch_devices: set[int] = set()
        self.control_bytes = 0
        self.peer_down_sent = 0
        self.merge_timeouts = 0
        self.reconnects = 0
        self.local_rounds = np.zeros(self.n, dtype=np.int64)
        self.energy = np.zeros(self.n)

    # ---- messages on the coordinator links ---------------------------------------------------
    async def _send_control(self, d: int, r: int, msg: dict[str, Any]) -> None:
        w = self.writers.get(d)
        if w is None:
            return
        data = self.coord.make(fm.MsgType.CONTROL, d, r, "none", json.dumps(msg).encode())
        try:
            w.write(data)
            self.control_bytes += len(data)
            await w.drain()
        except ConnectionError:
            pass

    async def _notify_down(self, d: int) -> None:
        msg = json.dumps({"cmd": "peer_down", "device": d}).encode()
        for j in self.partners[d]:
            w = self.writers.get(j)
            if w is None:
                continue
            data = self.coord.make(fm.MsgType.CONTROL, j, self.coord.round, "none", msg)
            try:
                w.write(data)
                self.control_bytes += len(data)
                self.peer_down_sent += 1
            except ConnectionError:
                pass
