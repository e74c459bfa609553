"""``partition.devices`` (method ``per_device``): each device's own data, as the seed's RVA
experiments state it (seed 004 §2.3.2: "all 10 classes, 100 samples per class"; "classes 0 and
1, 1000 samples each"). Rules apply in device order; ``count`` repeats a rule for that many
consecutive devices, and the counts must add up to the fleet's devices."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class DeviceData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    classes: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None, description="labels this device holds; default: every class"
    )
    per_class: Annotated[int, Field(ge=1, le=10_000_000)] = Field(description="training samples of each class")
    count: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        default=1, description="consecutive devices with this rule"
    )
