"""Everything a twin needs before round 1, built and checked from the spec.

Preparing loads the data, partitions it, builds the model and the fleet and plans every
group's memory. It raises a :class:`~tinytwin.errors.TinyTwinError` for anything wrong
*before* any run folder exists, which is how bad input never leaves half-written results.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinytwin.algorithms.attacks import flip_labels
from tinytwin.data.datasets import Dataset, load_dataset, published_stand_in
from tinytwin.data.partition import class_histogram, partition
from tinytwin.data.partition_rules import per_device_partition
from tinytwin.data.proxy import split_proxy
from tinytwin.engines.shards import Shards
from tinytwin.errors import DataError, MemoryPlanError, SpecError, TinyTwinError
from tinytwin.fleet.battery import Batteries, build_batteries
from tinytwin.fleet.build import Fleet, build_fleet
from tinytwin.fleet.failures import Timeline, build_timeline
from tinytwin.fleet.memory import MemoryPlan, message_bytes
from tinytwin.fleet.model_sizes import FleetModels, plan_fleet_models
from tinytwin.models.accounting import backward_flops, forward_flops, optimizer_step_flops
from tinytwin.models.params import ParamLayout
from tinytwin.models.zoo import ModelDef, make_model
from tinytwin.spec.schema import ExperimentSpec
from tinytwin.wire import mqtt
from tinytwin.wire.encoding import encoded_size
from tinytwin.wire.frame import MAX_PAYLOAD

if TYPE_CHECKING:  # `plan` and the other torch-free commands never build the module
    import torch

    from tinytwin.models.zoo import LayerModule


@dataclass
class Experiment:
    spec: ExperimentSpec
    dataset: Dataset
    parts: list[np.ndarray]
    class_hist: np.ndarray
    model: ModelDef
    fleet: Fleet
    memory: list[MemoryPlan]
    timeline: Timeline
    models: FleetModels  # which (sub-)model each device trains
    proxy_x: np.ndarray | None = None  # the server's unlabeled distillation set (data/proxy.py)
    batteries: Batteries | None = None  # per-device batteries (fleet/battery.py); None: mains power

    @cached_property
    def module(self) -> LayerModule:
        """The torch module, built on first use, after the memory plan ran.

        Why lazily: the plan needs only the layer shapes, and a model that fits no device must be
        refused with its numbers, not allocated first (``hidden: [100000, 100000]`` is 40 GB).
        ``build`` forks the RNG, so when it runs does not change any result.
        """
        return self.model.build(self.spec.seed)

    @cached_property
    def layout(self) -> ParamLayout:
        return ParamLayout.of(self.module)

    @cached_property
    def shards(self) -> Shards:
        """``parts`` as one flat array and offsets: a round takes its devices' indices without a
        loop over them (:mod:`tinytwin.engines.shards`)."""
        return Shards.from_list(self.parts)

    @cached_property
    def num_samples(self) -> np.ndarray:
        return np.array([len(p) for p in self.parts], dtype=np.int64)

    @property
    def flops_per_sample(self) -> int:
        """Forward + backward FLOPs of one training sample."""
        return forward_flops(self.model.layers, self.model.num_classes) + backward_flops(
            self.model.layers, self.model.num_classes
        )

    @property
    def flops_per_step(self) -> int:
        a = self.spec.algorithm
        return optimizer_step_flops(self.model.num_params, a.optimizer, a.momentum, a.weight_decay, a.prox_mu)

    def device_rows(self, num_samples: np.ndarray | None = None) -> list[dict[str, object]]:
        """The results store's per-device table: group, profile, link, sample count, class histogram.

        ``num_samples`` overrides the partition's counts (decentralized runs train on a subset)."""
        counts = self.num_samples if num_samples is None else num_samples
        return [
            {
                "device": int(d),
                "group": g.name,
                "profile": g.profile.name,
                "link": g.link.name,
                "num_samples": int(counts[d]),
                "class_hist": self.class_hist[d],
            }
            for g in self.fleet.groups
            for d in g.devices
        ]

    @cached_property
    def device_uplink_bytes(self) -> np.ndarray:
        """(D,) bytes of one update from each device: of its own (sub-)model."""
        enc = self.spec.algorithm.encoding
        frames = self.models.per_device(lambda s: message_bytes(s.model.num_params, enc, s.model.tensor_sizes))
        return self._on_transport(frames, 0)

    @cached_property
    def device_downlink_bytes(self) -> np.ndarray:
        """(D,) bytes of the model each device receives: its own (sub-)model."""
        enc = self.spec.algorithm.downlink_encoding
        frames = self.models.per_device(lambda s: message_bytes(s.model.num_params, enc, s.model.tensor_sizes))
        return self._on_transport(frames, 1)

    def _on_transport(self, frames: np.ndarray, direction: int) -> np.ndarray:
        """Frame bytes as the transport puts them on the wire: as they are on TCP; over MQTT
        each frame a PUBLISH on the device's topic, plus its PUBACK (``direction``: 0 up, 1 down)."""
        if self.spec.transport.protocol != "mqtt":
            return frames
        name = self.spec.name
        return np.array([mqtt.message_bytes(mqtt.topics(name, d)[direction], int(n)) for d, n in enumerate(frames)])

    @cached_property
    def device_flops_per_sample(self) -> np.ndarray:
        """(D,) forward + backward FLOPs of one training sample on each device's (sub-)model."""
        return self.models.per_device(
            lambda s: (
                forward_flops(s.model.layers, s.model.num_classes) + backward_flops(s.model.layers, s.model.num_classes)
            )
        )

    @cached_property
    def device_flops_per_step(self) -> np.ndarray:
        """(D,) FLOPs of one optimizer step on each device's (sub-)model."""
        a = self.spec.algorithm
        return self.models.per_device(
            lambda s: optimizer_step_flops(s.model.num_params, a.optimizer, a.momentum, a.weight_decay, a.prox_mu)
        )

    def uplink_bytes(self) -> int:
        return message_bytes(self.model.num_params, self.spec.algorithm.encoding, self.model.tensor_sizes)

    def downlink_bytes(self) -> int:
        return message_bytes(self.model.num_params, self.spec.algorithm.downlink_encoding, self.model.tensor_sizes)

    def initial_params(self) -> torch.Tensor:
        """The server's starting vector: the global model, then any shallower members' heads
        (:mod:`tinytwin.fleet.model_sizes`)."""
        import torch

        g = self.layout.flatten(self.module)
        if not self.models.heads:
            return g
        heads = self.models.initial_heads(self.spec.model.options(), self.model, self.spec.seed)
        return torch.cat([g, torch.from_numpy(heads).to(g.dtype)])


def prepare(
    spec: ExperimentSpec, base_dir: Path | None = None, *, check_memory: bool = True, plan_only: bool = False
) -> Experiment:
    """Build and check everything; raises before any result is written.

    ``plan_only`` (``tinytwin plan``): a dataset whose files are absent but whose published
    sizes tinytwin knows is replaced by a pixel-free stand-in (``data.datasets.published_stand_in``);
    the plan needs shapes and labels only.
    """
    fleet = build_fleet(spec, base_dir)
    data_dir = spec.dataset.data_dir
    if (
        data_dir is not None
        and base_dir is not None
        and not Path(data_dir).is_absolute()
        and not Path(data_dir).exists()
        and (base_dir / data_dir).exists()
    ):
        data_dir = str(base_dir / data_dir)
    try:
        dataset = load_dataset(
            spec.dataset.name, data_dir, test_size=spec.dataset.test_size, digits_split=spec.dataset.split
        )
    except DataError:
        stand_in = published_stand_in(spec.dataset.name) if plan_only else None
        if stand_in is None:
            raise
        dataset = stand_in
    proxy_x = None
    if spec.algorithm.distillation is not None:
        from tinytwin.engines.distill_round import server_profile

        server_profile(spec.algorithm.distillation)  # an unknown name is refused before any run folder
        dataset, proxy_x = split_proxy(dataset, spec.algorithm.distillation.proxy, spec.seed, base_dir)
    p = spec.partition
    n = fleet.num_devices
    if n > len(dataset.y_train) and not p.overlap:
        raise SpecError(
            "fleet",
            f"{n} devices but {spec.dataset.name} has only {len(dataset.y_train)} training samples; use fewer devices",
        )
    try:
        parts = (
            per_device_partition(dataset.y_train, p.devices or [], n, spec.seed)
            if p.method == "per_device"
            else _partition(dataset.y_train, n, p, spec.seed)
        )
    except ValueError as exc:
        raise SpecError("partition", str(exc)) from None
    if spec.attacks:
        dataset, parts = flip_labels(dataset, parts, [a.model_dump() for a in spec.attacks], spec.seed)
    model = _make_model(spec, dataset)
    models, memory = _plan(spec, model, fleet, parts)  # before any tensor of the model exists (see Experiment.module)
    if check_memory:
        refuse_if_unfit(memory, models)
    _refuse_unsendable(spec, model, memory)
    timeline = build_timeline(spec.failures, n, spec.rounds, spec.seed)
    return Experiment(
        spec,
        dataset,
        parts,
        class_histogram(dataset.y_train, parts, dataset.num_classes),
        model,
        fleet,
        memory,
        timeline,
        models,
        proxy_x,
        build_batteries(spec.fleet.groups, [np.asarray(g.devices) for g in fleet.groups], n),
    )


def _make_model(spec: ExperimentSpec, dataset: Dataset) -> ModelDef:
    try:
        return make_model(spec.model.name, dataset.input_shape, dataset.num_classes, **spec.model.options())
    except ValueError as exc:
        raise SpecError("model", f"{exc} for {spec.dataset.name} inputs {dataset.input_shape}") from None


def _plan(
    spec: ExperimentSpec, model: ModelDef, fleet: Fleet, parts: list[np.ndarray]
) -> tuple[FleetModels, list[MemoryPlan]]:
    """Each group's model size (``model_rate``, ``auto`` resolved) and its memory plan."""
    a = spec.algorithm
    options = {
        "batch_size": a.batch_size,
        "optimizer": a.optimizer,
        "momentum": a.momentum,
        "prox_mu": a.prox_mu,
        "uplink_encoding": a.encoding,
        "downlink_encoding": a.downlink_encoding,
    }
    try:
        return plan_fleet_models(
            fleet.groups,
            [g.model_rate for g in spec.fleet.groups],
            model,
            spec.model.options(),
            fleet.num_devices,
            [max(len(parts[d]) for d in g.devices) for g in fleet.groups],
            options,
            [g.model_depth for g in spec.fleet.groups],
            scaler=spec.algorithm.aggregator.scaler,
        )
    except ValueError as exc:
        raise SpecError("fleet", str(exc)) from None


def _refuse_unsendable(spec: ExperimentSpec, model: ModelDef, memory: list[MemoryPlan]) -> None:
    """Refuse a model whose update does not fit in one frame (wire.frame.MAX_PAYLOAD).

    A model that large fits no device either, so the memory numbers come first (even for
    ``tinytwin plan``, which cannot cost a round whose message cannot be sent).
    """
    a = spec.algorithm
    biggest = max(
        encoded_size(model.num_params, enc, tensor_sizes=model.tensor_sizes)
        for enc in (a.encoding, a.downlink_encoding)
    )
    if biggest <= MAX_PAYLOAD:
        return
    refuse_if_unfit(memory)
    raise SpecError(
        "model",
        f"one model update is {biggest:,} B, more than a frame carries ({MAX_PAYLOAD:,} B); "
        "use a smaller model or a smaller encoding (algorithm.encoding: int8)",
    )


def refuse_if_unfit(plans: list[MemoryPlan], models: FleetModels | None = None) -> None:
    """Memory is a hard constraint: refuse the run, naming every group that does not fit
    (for a ``model_rate: auto`` group, every rate it was planned at)."""
    bad = [p for p in plans if not p.fits]
    choices = models.choices if models is not None else {}
    if bad:
        msg = "; ".join(
            f"group {p.group!r}: " + (choices[p.group].explain() if p.group in choices else p.explain()) for p in bad
        )
        raise MemoryPlanError(
            f"local training does not fit: {msg}. Use a smaller model or batch size, "
            "or a device with more memory (see `tinytwin plan`)."
        )


__all__ = ["Experiment", "prepare", "refuse_if_unfit", "TinyTwinError"]


def _partition(labels: Any, n: int, p: Any, seed: int) -> list[Any]:
    """The built-in partition methods of ``partition`` (data/partition.py)."""
    return partition(
        labels,
        n,
        method=p.method,
        seed=seed,
        alpha=p.alpha,
        shards_per_device=p.shards_per_device,
        sigma=p.sigma,
        min_samples=p.min_samples,
        samples_per_device=p.samples_per_device,
        overlap=p.overlap,
    )
