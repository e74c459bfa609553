"""The forecasting experiment file (issue #13): a sensor graph, ST-GCN, cloudlets, setups.

A file of its own kind (``task: forecasting``), read by ``tinytwin forecast``: its work unit is a
cloudlet's subgraph, not a device's flat model, so it does not pass through ``ExperimentSpec``.
Same rules as every spec: unknown keys refused, one line naming the key on any error.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from tinytwin.errors import SpecError
from tinytwin.spec.bounds import check_values
from tinytwin.spec.load import apply_override
from tinytwin.spec.schema import PositiveInt, Strict
from tinytwin.spec.strict_yaml import decode, parse

SetupName = Literal["centralized", "traditional", "serverfree", "gossip", "gossip-merge"]


def _four_setups() -> list[SetupName]:
    return ["centralized", "traditional", "serverfree", "gossip"]


class GraphDatasetSpec(Strict):
    name: Literal["metr-la-week"] = "metr-la-week"
    data_dir: str | None = Field(default=None, description="folder holding metr-la-week.npz; default $TINYTWIN_DATA")
    history: Annotated[int, Field(ge=5, le=48)] = 12
    horizons: list[Annotated[int, Field(ge=1, le=48)]] = Field(default_factory=lambda: [3, 6, 12], min_length=1)


class StgcnSpec(Strict):
    name: Literal["stgcn"] = "stgcn"
    blocks: Annotated[int, Field(ge=1, le=4)] = 2
    channels: Annotated[list[PositiveInt], Field(min_length=3, max_length=3)] = Field(
        default_factory=lambda: [64, 16, 64]
    )
    out_hidden: PositiveInt = 128
    kt: Annotated[int, Field(ge=2, le=5)] = 3
    ks: Annotated[int, Field(ge=1, le=5)] = 3
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5


class CloudletSpec(Strict):
    centres: str | None = Field(default=None, description="CSV of centres (x_m,y_m), relative to the file")
    count: PositiveInt = 7
    radius_km: Annotated[float, Field(gt=0.0)] = 8.0
    profile: str = Field(default="raspberry-pi-4", description="device catalog profile of every cloudlet")
    link: str = Field(default="ethernet", description="link catalog entry between cloudlets (and to the master)")
    server_profile: str = Field(
        default="jetson-agx-orin-cpu", description="the master (traditional FL) and the centralized setup's machine"
    )


class GraphTrainSpec(Strict):
    epochs: Annotated[int, Field(ge=1, le=1000)] = 40
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-4
    weight_decay: Annotated[float, Field(ge=0.0)] = 1e-5
    step_size: PositiveInt = 5
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 0.7
    threads: PositiveInt | None = None


class ForecastSpec(Strict):
    name: str
    task: Literal["forecasting"]
    seed: int = 0
    dataset: GraphDatasetSpec = Field(default_factory=GraphDatasetSpec)
    model: StgcnSpec = Field(default_factory=StgcnSpec)
    cloudlets: CloudletSpec = Field(default_factory=CloudletSpec)
    setups: list[SetupName] = Field(default_factory=_four_setups, min_length=1)
    train: GraphTrainSpec = Field(default_factory=GraphTrainSpec)


def validate_forecast(raw: dict[str, Any]) -> ForecastSpec:
    """A validated spec; the first problem becomes one :class:`SpecError` naming its key path."""
    check_values(raw)
    try:
        return ForecastSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise SpecError(
            loc, f"{msg} (got {err.get('input')!r})" if err["type"] != "missing" else "is required"
        ) from None


def load_forecast_spec(path: str | Path, overrides: Iterable[str] = ()) -> ForecastSpec:
    """Read a forecasting experiment file with ``--set`` overrides applied."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(
            "", f"experiment file {path} not found; pass a file such as examples/graph/stgnn-metr-la-short.yaml"
        )
    raw = parse(decode(path.read_bytes(), str(path)), str(path))
    if not isinstance(raw, dict):
        raise SpecError(
            "", f"{path} must contain a mapping of keys (name, task, dataset, model, cloudlets, setups, train)"
        )
    for item in overrides:
        apply_override(raw, item)
    return validate_forecast(raw)
