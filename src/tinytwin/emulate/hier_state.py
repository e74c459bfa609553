"""What a hierarchical emulation's coordinator (the global aggregator, GA) holds, typed in one
place: the simulator's engine object it plans with, the processes (local aggregators and
devices) and their connections, the round in flight, the run's running totals.
:class:`HierState` is the base of the coordinator (:mod:`tinytwin.emulate.hier_coordinator`)
and of each of its concerns (recording, resume, process files, summary), so every attribute
they share is declared, with its type, once: here."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinytwin.emulate.aggregator import aggregator_id, aggregator_key
from tinytwin.emulate.device import OOM_EXIT
from tinytwin.emulate.firmware_fleet import firmware_configs, firmware_groups
from tinytwin.emulate.fork_fleet import HierForkServer
from tinytwin.emulate.frame_checks import Coordinator
from tinytwin.emulate.lifecycle import load_run_key
from tinytwin.emulate.model_rows import model_rows
from tinytwin.emulate.options import EmulateOptions
from tinytwin.emulate.processes import exit_kind
from tinytwin.emulate.skeleton import CoordinatorClock
from tinytwin.emulate.wire_np import derive_key
from tinytwin.engines.experiment import Experiment
from tinytwin.engines.hierarchical import HierarchicalSimulator
from tinytwin.store.db import RunStore
from tinytwin.store.files import private_dirs


@dataclass
class HierOptions(EmulateOptions):
    kill_devices: dict[int, list[int]] = field(default_factory=dict)
    """round -> devices SIGKILLed during that round's first local round (restarted at the next round)."""
    kill_aggregators: dict[int, list[int]] = field(default_factory=dict)
    """round -> clusters whose local aggregator is SIGKILLed once it has reported its first local round."""
    memory_sample_every: int = 5
    """Sample every process's RSS/PSS (and its mappings, for torch) after round 1, every this many
    rounds and the last round."""


@dataclass
class RoundState:
    """What the GA collects from the local aggregators during one global round."""

    clusters: list[int]
    local: dict[int, list[dict[str, Any]]]
    final: dict[int, dict[str, Any]] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    kill: set[int] = field(default_factory=set)
    killed: set[int] = field(default_factory=set)
    model_bytes: dict[int, int] = field(default_factory=dict)


class HierState(CoordinatorClock):
    """The state of one hierarchical emulated run (see the module's docstring)."""

    port: int = 0
    """The GA's listening port (known once it is bound)."""
    startup_s: float | None = None
    """Wall seconds from the start until every local aggregator was ready (None until then)."""
    coordinator_cpu_s: float | None = None
    change_cost: float = 0.0
    """The orchestrator's change cost charged in the round in flight."""

    _COUNTERS = (  # what a checkpoint keeps of the coordinator, by attribute name
        "gone",
        "local_rounds",
        "modelled_s",
        "wall_s",
        "round_walls",
        "cluster_failures",
        "restarts",
        "control_bytes",
        "la_ga_bytes",
        "la_rejected",
        "device_rejected",
        "rejected_retired",
        "mem_max",
        "total_mem_kb",
        "la_torch",
        "device_torch",
        "torch_mapped",
        "fw_rounds",
        "qemu_mem",
        "devices_cpu_s",
        "sampling_s",
        "la_port",
        "reconnects",
        "final_models",
    )

    def __init__(
        self,
        exp: Experiment,
        store: RunStore,
        run_id: str,
        run_dir: Path,
        options: HierOptions,
        base_dir: Path | None,
        resume: bool = False,
    ) -> None:
        self.exp, self.store, self.run_id, self.run_dir, self.opt = exp, store, run_id, run_dir, options
        # the simulator's engine object: assignment, sample counts, compute times, links, optimizer, ledger
        self.sim = HierarchicalSimulator(exp, store, run_id, None, base_dir)
        sim, a = self.sim, exp.spec.algorithm
        self.a = a
        self.n, self.k, self.L = sim.n, sim.k, sim.h.local_rounds
        self.attacks = sim.attacks  # poisoned devices: their configs carry the attack
        self.edir = run_dir / "emulate"
        private_dirs(self.edir, *(self.edir / sub for sub in ("keys", "devices", "aggregators", "logs")))
        self.resume = resume
        # resumed: the processes of the killed coordinator hold keys from it
        self.run_key = load_run_key(self.edir, resume)
        self.linears_rows, self.layer_rows = model_rows(exp)  # MLP rows, or a CNN's layer list (layers_np)
        # Firmware images are built (and a model too big for a board refused) before any process starts;
        # a firmware device under a local aggregator is the centralized twin's firmware device, unchanged.
        self.firmware = firmware_configs(
            exp,
            self.linears_rows or [],
            self.edir / "firmware",
            firmware_groups(exp, options.firmware_all),
            arena_override=options.firmware_arena_override,
        )
        p = exp.model.num_params
        self.sizes = list(exp.model.tensor_sizes)
        # the LA -> GA report: the cluster update in the spec's encoding (one cluster: the model, float32)
        self.report_enc = a.encoding if self.k > 1 else "float32"
        self.coord = Coordinator(0, self.run_key, p, self.sizes, self.report_enc)
        self.coord.keys = {aggregator_id(c): aggregator_key(self.run_key, c) for c in range(self.k)}
        self.coord.max_frame = max(self.coord.max_frame, 1 << 20)
        # orchestrated (hier_orchestration): the first configuration holds the devices online in
        # round 1 (as the engine's initial state); a joiner registers at the GA with its own key
        self.orchestrated = sim.orch is not None
        first = sim.assign.copy()
        if sim.orch is not None:
            first = sim.orch.configure(exp.timeline.online(1))
            self.coord.keys.update({d: derive_key(self.run_key, d) for d in range(self.n)})
        self.placed = first  # the LA each device's process was sent to (-1: none, or the GA)
        self.spawned = first >= 0  # devices whose process was started once
        self.members = {c: [int(d) for d in np.flatnonzero(first == c)] for c in range(self.k)}
        by_group = {pl.group: pl for pl in exp.memory}
        self.plan_of = {int(d): by_group[g.name] for g in exp.fleet.groups for d in g.devices}
        self._init_processes()
        self._init_totals()

    def _init_processes(self) -> None:
        """The fork server, the local aggregators' connections, the round in flight."""
        self.procs = HierForkServer()
        self.la_writers: dict[int, asyncio.StreamWriter] = {}
        self.la_hello: dict[int, asyncio.Event] = {c: asyncio.Event() for c in range(self.k)}
        self.la_ready: dict[int, asyncio.Event] = {c: asyncio.Event() for c in range(self.k)}
        self.la_port: dict[int, int] = {}
        self.la_hello_info: dict[int, dict[str, Any]] = {}
        self.rs: RoundState | None = None
        self.done = asyncio.Event()
        self.gone: set[int] = set()  # devices failed for good (failures.permanent)
        self.killed_now: set[int] = set()
        self.t_start = time.perf_counter()
        # coordinator resume: the wire-round offset (k-th resume: k * WIRE_STRIDE), the wall seconds of
        # earlier coordinators, reconnects of local aggregators
        self.offset = 0
        self.wall_offset = 0.0
        self.reconnects = 0
        # the orchestrator's view (hier_orchestration): joiners registered at the GA, what it heard when
        self.registered: dict[int, asyncio.StreamWriter] = {}
        self.heard: dict[tuple[str, int], asyncio.Event] = {}
        self.heard_at: dict[tuple[str, int], float] = {}
        self.reactions: list[dict[str, Any]] = []
        self.orchestrator_cpu_s = 0.0

    def _init_totals(self) -> None:
        """The run's running totals (``_COUNTERS``: checkpointed with every round)."""
        self.qemu_mem: dict[int, dict[str, int]] = {}
        self.fw_rounds: list[tuple[int, float, float]] = []  # (insns, firmware s, cost-model s) per device-round
        self.la_torch: set[int] = set()
        self.device_torch: set[int] = set()
        self.torch_mapped: set[str] = set()
        self.mem_max: dict[str, dict[str, int]] = {}
        self.total_mem_kb: dict[str, int] = {}
        self.sampling_s = 0.0
        self.devices_cpu_s = 0.0
        self.control_bytes = 0
        self.la_ga_bytes = 0
        self.la_rejected: dict[int, dict[str, int]] = {}
        self.device_rejected: dict[int, dict[str, int]] = {}
        self.rejected_retired: Counter[str] = Counter()  # counts of processes that were replaced
        self.local_rounds = np.zeros(self.n, dtype=np.int64)
        self.modelled_s = 0.0  # the cost model's clock (HState.sim_time_s after each round)
        self.wall_s = 0.0  # wall seconds of the run at the last committed round (resume: the offset)
        self.round_walls: list[float] = []
        self.cluster_failures: list[tuple[int, int, str]] = []
        self.restarts: Counter[str] = Counter()
        self.final_models: dict[str, np.ndarray] = {}  # the last global and cluster models

    # ---- small questions every concern asks ----------------------------------------------
    async def _spawn_device(self, d: int) -> None:
        await self.procs.spawn(d, self.edir / "devices" / f"d{d}.json", self.edir / "logs" / f"d{d}.log")

    def _la_key(self, c: int) -> int:
        return self.n + c  # fork-server key of local aggregator c (devices: 0..D-1)

    def _delivered(self, c: int) -> bool:
        """Local aggregator c's round is in: its final report and its update."""
        rs = self.rs
        return rs is not None and c in rs.final and aggregator_id(c) in self.coord.updates

    def _exit_kind(self, key: int) -> str:
        rc = self.procs.exits.get(key)
        # a firmware device's fault file decides (its trainer removes a stale one at start); an OOM exit wins
        fw = key in self.firmware and rc != OOM_EXIT
        log_file = self.edir / "logs" / (f"d{key}.log" if key < self.n else f"la{key - self.n}.log")
        return exit_kind(
            rc,
            killed=rc == -9,
            workdir=Path(self.firmware[key]["firmware"]["workdir"]) if fw else None,
            log_file=log_file,
        )
