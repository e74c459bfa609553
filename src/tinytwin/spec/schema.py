"""The experiment file, as typed objects.

Every key of the YAML file is a field here, with its type, default and allowed range.
Unknown keys are refused (``extra="forbid"``) so that a typo never silently falls back to
a default. docs/experiment-file.md documents each key; keep the two in step.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, model_validator

from tinytwin.algorithms.robust_merge import ROBUST_MERGES
from tinytwin.spec.attacks import AttackSpec
from tinytwin.spec.battery import BatterySpec, check_batteries
from tinytwin.spec.device_data import DeviceData
from tinytwin.spec.engine import EngineSpec
from tinytwin.spec.hetero import DistillationSpec, ModelRate, check_hetero
from tinytwin.spec.orchestration import OrchestrationSpec
from tinytwin.spec.presence import check_presence_events
from tinytwin.spec.robust import NormBoundSpec
from tinytwin.spec.transport import TransportSpec, check_transport

PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
# Documented maxima (docs/experiment-file.md): far above any real experiment, low enough that a
# typo such as local_epochs: 1e9 is refused at once instead of running for a lifetime.
MAX_ROUNDS = 1_000_000
MAX_STEPS = 10_000  # local_epochs, mixing_steps, local_rounds
MAX_DEVICES = 10_000_000  # per group
MAX_SEED = 10**15  # within the ±1e15 every number of a spec keeps (spec/bounds.py)
StepCount = Annotated[int, Field(ge=1, le=MAX_STEPS)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(Strict):
    name: Literal["digits", "mnist", "fashion-mnist", "cifar10", "cifar10-cat-vww", "cifar100"] = "digits"
    data_dir: str | None = Field(default=None, description="folder with the dataset files; default $TINYTWIN_DATA")
    test_size: PositiveInt | None = Field(
        default=None, description="use a fixed random subset (seed 0) of N test samples"
    )
    split: Literal["shuffled", "last"] = Field(
        default="shuffled", description="digits only: shuffled 1500/297 split, or the unshuffled last-297 test set"
    )


class PartitionSpec(Strict):
    method: Literal["iid", "dirichlet", "shards", "quantity", "per_device"] = "iid"
    devices: list[DeviceData] | None = Field(
        default=None, description="per_device: each device's classes and samples per class (spec/device_data.py)"
    )
    alpha: Annotated[float, Field(gt=0.0)] = 0.5
    shards_per_device: PositiveInt = 2
    sigma: Annotated[float, Field(gt=0.0)] = 1.0
    min_samples: NonNegInt = 1
    samples_per_device: PositiveInt | None = None
    overlap: StrictBool = Field(default=False, description="iid + samples_per_device: devices may share samples")


class ModelSpec(Strict):
    name: Literal["mlp", "lenet5", "dscnn", "wideresnet"] = "mlp"
    hidden: list[PositiveInt] = Field(default_factory=lambda: [32], description="mlp hidden widths")
    channels: list[PositiveInt] | None = Field(
        default=None, description="conv widths (lenet5: 2, dscnn: >= 1, wideresnet: one per stage)"
    )
    blocks: PositiveInt | None = Field(default=None, description="wideresnet: residual blocks per stage (4)")
    fc: list[PositiveInt] | None = Field(default=None, description="lenet5 fully connected widths")

    def options(self) -> dict[str, Any]:
        """Keyword options for :func:`tinytwin.models.zoo.make_model`."""
        if self.name == "mlp":
            return {"hidden": tuple(self.hidden)}
        opts: dict[str, Any] = {}
        if self.channels is not None:
            opts["channels"] = tuple(self.channels)
        if self.name == "lenet5" and self.fc is not None:
            opts["fc"] = tuple(self.fc)
        if self.name == "wideresnet" and self.blocks is not None:
            opts["blocks"] = self.blocks
        return opts

    @model_validator(mode="after")
    def _check_widths(self) -> ModelSpec:
        if self.name == "lenet5" and self.channels is not None and len(self.channels) != 2:
            raise ValueError("channels: lenet5 takes exactly 2 conv widths, e.g. [6, 16]")
        return self


class GroupSpec(Strict):
    name: str | None = None
    profile: str = Field(description="a device catalog name (tinytwin devices) or a custom profile name")
    count: Annotated[int, Field(ge=1, le=MAX_DEVICES)]
    link: str = Field(default="wifi", description="a link catalog name: wifi, ble, ieee802154, lora, ethernet, uart")
    overrides: dict[str, Any] = Field(default_factory=dict, description="device profile fields to change")
    link_overrides: dict[str, Any] = Field(default_factory=dict, description="link model fields to change")
    medium: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] | None = Field(
        default=None,
        description="radio medium (access point / BLE central / LoRa gateway) these devices share with every "
        "group naming the same medium; 'dedicated' or 'none': one independent link per device; unset: one "
        "medium per group on a radio link (wifi, ble, ieee802154, lora), dedicated on wired links",
    )
    twin: Literal["process", "firmware", "wasm"] = Field(
        default="process",
        description="tinytwin emulate: run these devices as numpy processes, as the C "
        "firmware on emulated Cortex-M boards (QEMU), or as the C client compiled to "
        "WebAssembly under Wasmtime (wasm)",
    )
    model_rate: ModelRate = Field(
        default=1.0,
        description="fraction of each hidden layer these devices train (nested sub-model, aggregator "
        "nested), or auto: the largest of 1, 0.5, 0.25, 0.125 that fits the device's memory",
    )
    model_depth: PositiveInt | None = Field(
        default=None,
        description="mlp: how many of the model's hidden layers these devices keep (a shallower member "
        "of the family; its classifier is averaged among the devices of that depth); unset: all",
    )
    battery: BatterySpec | None = Field(
        default=None,
        description="a battery per device: {capacity_j | capacity_mah + voltage, initial, rejoin_at, "
        "harvest_w | harvest_profile_w}; an empty device is offline until recharged (docs/energy.md)",
    )
    firmware_transport: Literal["files", "uart"] = Field(
        default="files",
        description="firmware and wasm devices: weights through files (fast) or through the "
        "emulated UART (realistic serial cost, ~36 KiB/s into the device)",
    )


class FleetSpec(Strict):
    groups: Annotated[list[GroupSpec], Field(min_length=1)]
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict, description="custom device profiles inline")
    profiles_file: str | None = Field(default=None, description="YAML file of extra device profiles")
    links_file: str | None = Field(default=None, description="YAML file of extra link models")

    @property
    def num_devices(self) -> int:
        return sum(g.count for g in self.groups)


class AggregatorSpec(Strict):
    name: Literal["fedavg", "median", "trimmed_mean", "krum", "nested"] = "fedavg"
    beta: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.1
    num_byzantine: NonNegInt = 0
    num_selected: PositiveInt = 1
    norm_bound: NormBoundSpec | None = Field(
        default=None, description="bound every update's L2 norm before the rule: clip or reject (every twin)"
    )
    scaler: StrictBool = Field(
        default=False,
        description="nested: HeteroFL's static scaler, a rate-r member's hidden outputs times 1/r while it trains",
    )


class ServerOptimizerSpec(Strict):
    name: Literal["fedavg", "fedavgm", "fedadam", "fedyogi"] = "fedavg"
    lr: Annotated[float, Field(gt=0.0)] = 1.0
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    beta1: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    beta2: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.99
    tau: Annotated[float, Field(gt=0.0)] = 1e-3


# ---- decentralized and hierarchical learning (docs/algorithms.md) ----------------------

CENTRALIZED = ("fedavg", "fedprox")
DECENTRALIZED = ("decfedavg", "gossip", "serverfree", "segmented_gossip", "gist")
HIERARCHICAL = ("hierarchical",)
ASYNC_CAPABLE = ("gossip", "gist")
PeerMode = Literal["random", "neighbour"]


class LRScheduleSpec(Strict):
    name: Literal["none", "adastair", "adaloss", "both"] = "none"
    stair_fractions: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        default_factory=lambda: [0.40, 0.65, 0.75], description="AdaStair: stair rounds ceil(f*T)"
    )
    stair_factor: Annotated[float, Field(gt=1.0)] = 8.0
    patience_fractions: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        default_factory=lambda: [0.30, 0.20, 0.20, 0.10], description="AdaLoss: patience ceil(f*T), in order"
    )
    loss_factor: Annotated[float, Field(gt=1.0)] = 2.0
    min_lr: Annotated[float, Field(gt=0.0)] = 1e-5


class DecFedAvgSpec(Strict):
    mixing_steps: StepCount = 1


class GossipSpec(Strict):
    peer: PeerMode = "neighbour"
    exchange: Literal["push", "push_pull"] = "push"
    merge: Literal["average", "fifo", "age"] = "average"
    buffer_size: PositiveInt = 2
    sends: PositiveInt = 1

    @model_validator(mode="after")
    def _check_exchange(self) -> GossipSpec:
        if self.exchange == "push_pull" and self.merge == "fifo":
            raise ValueError(
                "exchange: push_pull merges both ends of a pair (average or age); "
                "the fifo merge takes pushed models only"
            )
        return self


class SegmentsSpec(Strict):
    count: PositiveInt = 5
    replicas: PositiveInt = 2
    peer: PeerMode = "neighbour"


class GistSpec(Strict):
    segments: PositiveInt = 5
    segmentation: Literal["importance", "random"] = "importance"
    selection: Literal["proportional", "softmax", "uniform"] = "proportional"
    exp_base: Annotated[float, Field(gt=1.0)] = 2.718281828459045
    drop_lowest: StrictBool = False
    sends: PositiveInt = 7
    peer: PeerMode = "neighbour"
    buffer_size: PositiveInt = 10
    min_received: PositiveInt = 5
    merge: Literal["success", "vanilla"] = "success"
    validation_size: PositiveInt = 500

    @model_validator(mode="after")
    def _check_buffer(self) -> GistSpec:
        if self.min_received > self.buffer_size:
            raise ValueError(
                f"min_received: {self.min_received} is more than buffer_size {self.buffer_size}; "
                "the buffer could never hold enough segments to merge"
            )
        return self


class HierarchicalSpec(Strict):
    local_rounds: StepCount = 1
    num_clusters: PositiveInt = 1
    assignment: Literal["balanced", "given", "min_comm_cost"] = "balanced"
    clusters: list[list[NonNegInt]] | None = Field(default=None, description="device ids of each cluster")
    client_costs: list[list[Annotated[float, Field(ge=0.0)]]] | None = Field(
        default=None, description="cost per MB of each device's link to each local aggregator (D x K)"
    )
    aggregator_costs: list[Annotated[float, Field(ge=0.0)]] | None = Field(
        default=None, description="cost per MB of each local aggregator's link to the global aggregator (K)"
    )
    aggregator_link: str = Field(default="ethernet", description="link of the local aggregators to the global one")
    orchestration: OrchestrationSpec | None = Field(
        default=None, description="reconfigure on joins and leaves, budget stop, RVA (docs/orchestration.md)"
    )


class AsyncSpec(Strict):
    round_s: Annotated[float, Field(gt=0.0)] | None = Field(
        default=None, description="virtual seconds per reported round; default: the slowest device's period"
    )
    tick_s: Annotated[float, Field(gt=0.0)] | None = Field(
        default=None, description="event batching step; default: half the fastest device's period"
    )


Encoding = Literal["float32", "float16", "int8"]


MIXING = ("decfedavg", "serverfree")  # decentralized averaging with graph neighbours: attacks and robust merges


class AlgorithmSpec(Strict):
    name: Literal[
        "fedavg", "fedprox", "decfedavg", "gossip", "serverfree", "segmented_gossip", "gist", "hierarchical"
    ] = "fedavg"
    mu: Annotated[float, Field(ge=0.0)] = 0.01
    aggregator: AggregatorSpec = Field(default_factory=AggregatorSpec)
    distillation: DistillationSpec | None = Field(
        default=None, description="server-side ensemble distillation (FedDF) after nested averaging"
    )
    server_optimizer: ServerOptimizerSpec = Field(default_factory=ServerOptimizerSpec)
    clients_per_round: StrictInt | StrictFloat = Field(
        default=1.0, description="a fraction in (0, 1] of the available devices, or a whole count >= 1"
    )
    local_epochs: StepCount = 1
    batch_size: PositiveInt = 16
    lr: Annotated[float, Field(gt=0.0)] = 0.1
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    deadline_s: Annotated[float, Field(gt=0.0)] | None = None
    encoding: Encoding = "float32"
    downlink_encoding: Encoding = "float32"
    schedule: Literal["sync", "async"] = "sync"
    asynchronous: AsyncSpec = Field(default_factory=AsyncSpec)
    train_samples: PositiveInt | None = Field(
        default=None, description="train on only the first N samples of each device's data"
    )
    lr_schedule: LRScheduleSpec = Field(default_factory=LRScheduleSpec)
    decfedavg: DecFedAvgSpec = Field(default_factory=DecFedAvgSpec)
    gossip: GossipSpec = Field(default_factory=GossipSpec)
    segments: SegmentsSpec = Field(default_factory=SegmentsSpec)
    gist: GistSpec = Field(default_factory=GistSpec)
    hierarchical: HierarchicalSpec = Field(default_factory=HierarchicalSpec)

    @model_validator(mode="after")
    def _check_participation(self) -> AlgorithmSpec:
        c = self.clients_per_round
        if isinstance(c, float) and not 0.0 < c <= 1.0:
            raise ValueError("clients_per_round: a fraction must be in (0, 1]; write a whole number for a count")
        if isinstance(c, int) and c < 1:
            raise ValueError("clients_per_round: a count must be >= 1")
        if self.schedule == "async" and self.name not in ASYNC_CAPABLE:
            raise ValueError(
                f"schedule: async runs gossip and gist; {self.name} runs in lock-step rounds (schedule: sync)"
            )
        if self.family != "decentralized" and self.lr_schedule.name != "none":
            raise ValueError(
                f"lr_schedule: per-device schedules are for decentralized algorithms "
                f"({', '.join(DECENTRALIZED)}), not {self.name}"
            )
        if self.family == "decentralized" and self.server_optimizer.name != "fedavg":
            raise ValueError(
                f"server_optimizer.name: {self.name} has no server; server optimizers apply to "
                "fedavg, fedprox and hierarchical (at the global aggregator)"
            )
        if self.family == "centralized":
            if self.train_samples is not None:
                raise ValueError(f"train_samples: is for decentralized and hierarchical algorithms, not {self.name}")
        robust_merge = self.name in MIXING and self.aggregator.name in ROBUST_MERGES
        if (
            self.family != "centralized"
            and self.name != "hierarchical"
            and self.aggregator.name != "fedavg"
            and not robust_merge
        ):
            raise ValueError(
                f"aggregator.name: {self.name} merges with its own rule; robust aggregators apply to fedavg, "
                "fedprox and hierarchical, and median / trimmed_mean to decfedavg and serverfree (robust merge)"
            )
        if self.family != "centralized" and self.aggregator.norm_bound is not None:
            raise ValueError(
                f"aggregator.norm_bound: applies to fedavg and fedprox (the server bounds each update); "
                f"not yet to {self.name}"
            )
        return self

    @property
    def family(self) -> str:
        """``centralized`` (fedavg, fedprox), ``decentralized`` or ``hierarchical``."""
        if self.name in CENTRALIZED:
            return "centralized"
        return "hierarchical" if self.name in HIERARCHICAL else "decentralized"

    @property
    def prox_mu(self) -> float:
        return self.mu if self.name == "fedprox" else 0.0


class DeviceRound(Strict):
    device: NonNegInt
    round: PositiveInt


class LinkOutage(Strict):
    """The links of ``devices`` to the server are down from ``after_s`` modelled seconds into round
    ``round`` until the start of round ``round + rounds`` (several devices: a partition)."""

    devices: Annotated[list[NonNegInt], Field(min_length=1)]
    round: PositiveInt
    rounds: PositiveInt = 1
    after_s: Annotated[float, Field(ge=0.0)] = 0.0


class FailureSpec(Strict):
    dropout: Probability = 0.0
    permanent_probability: Probability = 0.0
    leave: list[DeviceRound] = Field(default_factory=list, description="devices that go offline at a round")
    join: list[DeviceRound] = Field(
        default_factory=list, description="devices that come (back) online at a round; offline before it if new"
    )
    permanent: list[DeviceRound] = Field(default_factory=list, description="devices that fail for good at a round")
    link_down: list[LinkOutage] = Field(
        default_factory=list, description="device-server links down for an interval (fedavg, fedprox)"
    )

    @model_validator(mode="after")
    def _check_presence_timelines(self) -> FailureSpec:
        check_presence_events(self.leave, self.join)
        return self


class LinkEvent(Strict):
    round: PositiveInt
    edges: Annotated[list[tuple[NonNegInt, NonNegInt]], Field(min_length=1)]
    state: Literal["down", "up"]


class TopologySpec(Strict):
    kind: Literal["full", "ring", "grid", "torus", "star", "erdos_renyi", "small_world", "geometric", "file"] = "full"
    p: Annotated[float, Field(gt=0.0, le=1.0)] = 0.2
    k: PositiveInt = 4
    beta: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    rows: PositiveInt | None = None
    hub: NonNegInt = 0
    area_m: tuple[Annotated[float, Field(gt=0.0)], Annotated[float, Field(gt=0.0)]] = (100.0, 100.0)
    radius_m: Annotated[float, Field(gt=0.0)] | None = Field(
        default=None, description="radio range for geometric; default: each group's link range"
    )
    positions_file: str | None = Field(default=None, description="CSV of x,y metres per device (geometric)")
    file: str | None = Field(default=None, description="edge list CSV u,v[,cost] (kind file)")
    link_events: list[LinkEvent] = Field(default_factory=list, description="links going down / up at a round")
    link_down_probability: Probability = 0.0

    @model_validator(mode="after")
    def _check_kind(self) -> TopologySpec:
        if self.kind == "file" and self.file is None:
            raise ValueError("file: topology kind 'file' needs an edge-list file (u,v per line)")
        return self


class EvaluationSpec(Strict):
    every: PositiveInt = 1
    per_device: StrictBool = False


class ExperimentSpec(Strict):
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")] = "experiment"
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    rounds: Annotated[int, Field(ge=1, le=MAX_ROUNDS)] = 10
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    partition: PartitionSpec = Field(default_factory=PartitionSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    fleet: FleetSpec
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec)
    failures: FailureSpec = Field(default_factory=FailureSpec)
    attacks: list[AttackSpec] = Field(default_factory=list, max_length=100)  # spec/attacks.py
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    topology: TopologySpec = Field(default_factory=TopologySpec)
    engine: EngineSpec = Field(default_factory=EngineSpec)
    transport: TransportSpec = Field(default_factory=TransportSpec)  # spec/transport.py

    @model_validator(mode="after")
    def _check_devices(self) -> ExperimentSpec:
        n = self.fleet.num_devices
        if self.attacks and self.algorithm.family == "decentralized" and self.algorithm.name not in MIXING:
            raise ValueError(
                "attacks: applied to fedavg, fedprox, hierarchical, decfedavg and serverfree runs only so far; "
                "remove the block"
            )
        if self.algorithm.family != "centralized" and any(a.kind == "stale" for a in self.attacks):
            raise ValueError(
                f"attacks: kind stale (replayed old updates) applies to fedavg and fedprox so far, not {self.algorithm.name}"
            )
        if self.algorithm.name in MIXING and any(a.kind == "nan" for a in self.attacks):
            raise ValueError(
                f"attacks: kind nan in {self.algorithm.name}: every peer refuses a non-finite model, so it is "
                "a peer that never sends; model that with failures.leave, or use another kind"
            )
        for key in ("leave", "join", "permanent"):
            for i, item in enumerate(getattr(self.failures, key)):
                if item.device >= n:
                    raise ValueError(
                        f"failures.{key}.{i}.device: {item.device} is not a device; the fleet has devices 0..{n - 1}"
                    )
                if item.round > self.rounds:
                    raise ValueError(f"failures.{key}.{i}.round: {item.round} is after the last round ({self.rounds})")
        for i, item in enumerate(self.failures.link_down):
            bad = [d for d in item.devices if d >= n]
            if bad:
                raise ValueError(
                    f"failures.link_down.{i}.devices: {bad[0]} is not a device; the fleet has devices 0..{n - 1}"
                )
            if item.round > self.rounds:
                raise ValueError(f"failures.link_down.{i}.round: {item.round} is after the last round ({self.rounds})")
        c = self.algorithm.clients_per_round
        if isinstance(c, int) and c > n:
            raise ValueError(f"algorithm.clients_per_round: {c} is more than the {n} devices of the fleet")
        self._check_krum(c if isinstance(c, int) else max(1, math.ceil(c * n)))
        names = [g.name for g in self.fleet.groups if g.name]
        if len(names) != len(set(names)):
            raise ValueError("fleet.groups: group names must be unique")
        self._check_topology(n)
        self._check_hierarchical(n)
        check_hetero(self)
        check_batteries(self)
        check_transport(self)
        a = self.algorithm
        if a.family != "centralized":
            if self.failures.dropout:
                raise ValueError(
                    f"failures.dropout: {a.name} has no server round to drop out of; model absence with "
                    "failures.leave / join / permanent or permanent_probability"
                )
            if a.deadline_s is not None:
                raise ValueError(f"algorithm.deadline_s: round deadlines apply to fedavg and fedprox, not {a.name}")
            if self.failures.link_down:
                raise ValueError(
                    f"failures.link_down: takes down device-server links (fedavg, fedprox); {a.name} "
                    "has none: use topology.link_events for links between devices"
                )
            if a.clients_per_round != 1.0:
                raise ValueError(
                    f"algorithm.clients_per_round: every online device takes part in {a.name}; leave it at 1.0"
                )
        return self

    def _check_krum(self, k: int) -> None:
        """Krum scores each update against its K - f - 2 nearest: it needs K >= 2f + 3 updates
        per round and selects m <= K - f of them (Blanchard et al. 2017)."""
        agg = self.algorithm.aggregator
        if agg.name != "krum":
            return
        f, m = agg.num_byzantine, agg.num_selected
        if k < 2 * f + 3:
            raise ValueError(
                f"algorithm.aggregator.num_byzantine: krum with f={f} needs at least {2 * f + 3} clients per "
                f"round, this experiment has {k}; lower num_byzantine or raise clients_per_round"
            )
        if m > k - f:
            raise ValueError(
                f"algorithm.aggregator.num_selected: {m} is more than the {k - f} honest clients "
                f"(clients per round {k} minus num_byzantine {f})"
            )

    def _check_topology(self, n: int) -> None:
        t = self.topology
        if t.hub >= n:
            raise ValueError(f"topology.hub: {t.hub} is not a device; the fleet has devices 0..{n - 1}")
        for i, ev in enumerate(t.link_events):
            for j, (u, v) in enumerate(ev.edges):
                if u >= n or v >= n or u == v:
                    raise ValueError(
                        f"topology.link_events.{i}.edges.{j}: [{u}, {v}] is not a link between two "
                        f"devices of 0..{n - 1}"
                    )
            if ev.round > self.rounds:
                raise ValueError(f"topology.link_events.{i}.round: {ev.round} is after the last round ({self.rounds})")

    def _check_hierarchical(self, n: int) -> None:
        h = self.algorithm.hierarchical
        where = "algorithm.hierarchical"
        if h.clusters is not None:
            flat = [d for c in h.clusters for d in c]
            bad = [d for d in flat if d >= n]
            if bad:
                raise ValueError(f"{where}.clusters: device {bad[0]} is not in the fleet (devices 0..{n - 1})")
            if sorted(flat) != list(range(n)):
                missing = sorted(set(range(n)) - set(flat))
                twice = sorted({d for d in flat if flat.count(d) > 1})
                what = f"device {twice[0]} is in two clusters" if twice else f"device {missing[0]} is in no cluster"
                raise ValueError(f"{where}.clusters: every device must be in exactly one cluster; {what}")
            if any(not c for c in h.clusters):
                raise ValueError(f"{where}.clusters: a cluster is empty")
        if self.algorithm.name != "hierarchical":
            return
        if h.assignment == "given" and h.clusters is None:
            raise ValueError(f"{where}.clusters: assignment 'given' needs the clusters (lists of device ids)")
        k = len(h.clusters) if h.assignment == "given" and h.clusters is not None else h.num_clusters
        if k > n:
            raise ValueError(f"{where}.num_clusters: {k} clusters for {n} devices; a cluster needs a device")
        if h.client_costs is not None:
            if len(h.client_costs) != n or any(len(row) != k for row in h.client_costs):
                raise ValueError(f"{where}.client_costs: must be {n} rows (devices) of {k} costs (clusters)")
        if h.aggregator_costs is not None and len(h.aggregator_costs) != k:
            raise ValueError(f"{where}.aggregator_costs: must list {k} costs, one per cluster")
        for i, ch in enumerate(h.orchestration.cost_changes if h.orchestration is not None else []):
            at = f"{where}.orchestration.cost_changes.{i}"
            if ch.device >= n:
                raise ValueError(f"{at}.device: device {ch.device} is not in the fleet (devices 0..{n - 1})")
            if len(ch.client_costs) != k:
                raise ValueError(f"{at}.client_costs: must list {k} costs, one per cluster")
            if ch.round > self.rounds:
                raise ValueError(f"{at}.round: {ch.round} is after the last round ({self.rounds})")

    def group_names(self) -> list[str]:
        return [g.name or f"{g.profile}-{i}" for i, g in enumerate(self.fleet.groups)]
