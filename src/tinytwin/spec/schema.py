"""The experiment file, as typed objects.

Every key of the YAML file is a field here, with its type, default and allowed range.
Unknown keys are refused (``extra="forbid"``) so that a typo never silently falls back to
a default. docs/experiment-file.md documents each key; keep the two in step.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, model_validator

PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Probability = Annotated[float, Field(ge=0.0, lt=1.0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(Strict):
    name: Literal["digits", "mnist", "fashion-mnist", "cifar10"] = "digits"
    data_dir: str | None = Field(default=None, description="folder with the dataset files; default $TINYTWIN_DATA")
    test_size: PositiveInt | None = Field(default=None, description="use only the first N test samples")
    split: Literal["shuffled", "last"] = Field(
        default="shuffled", description="digits only: shuffled 1500/297 split, or the unshuffled last-297 test set")


class PartitionSpec(Strict):
    method: Literal["iid", "dirichlet", "shards", "quantity"] = "iid"
    alpha: Annotated[float, Field(gt=0.0)] = 0.5
    shards_per_device: PositiveInt = 2
    sigma: Annotated[float, Field(gt=0.0)] = 1.0
    min_samples: NonNegInt = 1
    samples_per_device: PositiveInt | None = None


class ModelSpec(Strict):
    name: Literal["mlp", "lenet5", "dscnn"] = "mlp"
    hidden: list[PositiveInt] = Field(default_factory=lambda: [32], description="mlp hidden widths")
    channels: list[PositiveInt] | None = Field(default=None, description="conv widths (lenet5: 2, dscnn: >= 1)")
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
        return opts

    @model_validator(mode="after")
    def _check_widths(self) -> "ModelSpec":
        if self.name == "lenet5" and self.channels is not None and len(self.channels) != 2:
            raise ValueError("channels: lenet5 takes exactly 2 conv widths, e.g. [6, 16]")
        return self


class GroupSpec(Strict):
    name: str | None = None
    profile: str = Field(description="a device catalog name (tinytwin devices) or a custom profile name")
    count: PositiveInt
    link: str = Field(default="wifi", description="a link catalog name: wifi, ble, ieee802154, lora, ethernet, uart")
    overrides: dict[str, Any] = Field(default_factory=dict, description="device profile fields to change")
    link_overrides: dict[str, Any] = Field(default_factory=dict, description="link model fields to change")


class FleetSpec(Strict):
    groups: Annotated[list[GroupSpec], Field(min_length=1)]
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict, description="custom device profiles inline")
    profiles_file: str | None = Field(default=None, description="YAML file of extra device profiles")
    links_file: str | None = Field(default=None, description="YAML file of extra link models")

    @property
    def num_devices(self) -> int:
        return sum(g.count for g in self.groups)


class AggregatorSpec(Strict):
    name: Literal["fedavg", "median", "trimmed_mean", "krum"] = "fedavg"
    beta: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.1
    num_byzantine: NonNegInt = 0
    num_selected: PositiveInt = 1


class ServerOptimizerSpec(Strict):
    name: Literal["fedavg", "fedavgm", "fedadam", "fedyogi"] = "fedavg"
    lr: Annotated[float, Field(gt=0.0)] = 1.0
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    beta1: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    beta2: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.99
    tau: Annotated[float, Field(gt=0.0)] = 1e-3


Encoding = Literal["float32", "float16", "int8"]


class AlgorithmSpec(Strict):
    name: Literal["fedavg", "fedprox"] = "fedavg"
    mu: Annotated[float, Field(ge=0.0)] = 0.01
    aggregator: AggregatorSpec = Field(default_factory=AggregatorSpec)
    server_optimizer: ServerOptimizerSpec = Field(default_factory=ServerOptimizerSpec)
    clients_per_round: Union[StrictInt, StrictFloat] = Field(
        default=1.0, description="a fraction in (0, 1] of the available devices, or a whole count >= 1")
    local_epochs: PositiveInt = 1
    batch_size: PositiveInt = 16
    lr: Annotated[float, Field(gt=0.0)] = 0.1
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    deadline_s: Annotated[float, Field(gt=0.0)] | None = None
    encoding: Encoding = "float32"
    downlink_encoding: Encoding = "float32"

    @model_validator(mode="after")
    def _check_participation(self) -> "AlgorithmSpec":
        c = self.clients_per_round
        if isinstance(c, float) and not 0.0 < c <= 1.0:
            raise ValueError("clients_per_round: a fraction must be in (0, 1]; write a whole number for a count")
        if isinstance(c, int) and c < 1:
            raise ValueError("clients_per_round: a count must be >= 1")
        return self

    @property
    def prox_mu(self) -> float:
        return self.mu if self.name == "fedprox" else 0.0


class DeviceRound(Strict):
    device: NonNegInt
    round: PositiveInt


class FailureSpec(Strict):
    dropout: Probability = 0.0
    permanent_probability: Probability = 0.0
    leave: list[DeviceRound] = Field(default_factory=list, description="devices that go offline from a round on")
    join: list[DeviceRound] = Field(default_factory=list, description="devices that are offline until a round")
    permanent: list[DeviceRound] = Field(default_factory=list, description="devices that fail for good at a round")


class EvaluationSpec(Strict):
    every: PositiveInt = 1
    per_device: bool = False


class ExperimentSpec(Strict):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")] = "experiment"
    seed: NonNegInt = 0
    rounds: PositiveInt = 10
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    partition: PartitionSpec = Field(default_factory=PartitionSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    fleet: FleetSpec
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec)
    failures: FailureSpec = Field(default_factory=FailureSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)

    @model_validator(mode="after")
    def _check_devices(self) -> "ExperimentSpec":
        n = self.fleet.num_devices
        for key in ("leave", "join", "permanent"):
            for i, item in enumerate(getattr(self.failures, key)):
                if item.device >= n:
                    raise ValueError(f"failures.{key}.{i}.device: {item.device} is not a device; "
                                     f"the fleet has devices 0..{n - 1}")
        c = self.algorithm.clients_per_round
        if isinstance(c, int) and c > n:
            raise ValueError(f"algorithm.clients_per_round: {c} is more than the {n} devices of the fleet")
        names = [g.name for g in self.fleet.groups if g.name]
        if len(names) != len(set(names)):
            raise ValueError("fleet.groups: group names must be unique")
        return self

    def group_names(self) -> list[str]:
        return [g.name or f"{g.profile}-{i}" for i, g in enumerate(self.fleet.groups)]
