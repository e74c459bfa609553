"""``fleet.groups[i].battery``: a battery per device of the group, and what charges it.

The capacity is given in joules or in mAh at a voltage; the device starts at ``initial`` of
it, drops out when it is empty and rejoins at ``rejoin_at`` of it; harvesting is a constant
power or 24 hourly powers (a daily profile, the simulated clock starting at midnight).
See :mod:`tinytwin.fleet.battery` for how the twins apply it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

Fraction = Annotated[float, Field(gt=0.0, le=1.0)]


class BatterySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    capacity_j: Annotated[float, Field(gt=0.0)] | None = Field(default=None, description="capacity in joules")
    capacity_mah: Annotated[float, Field(gt=0.0)] | None = Field(default=None, description="capacity in mAh")
    voltage: Annotated[float, Field(gt=0.0, le=1000.0)] = Field(default=3.7, description="nominal volts (with mAh)")
    initial: Fraction = Field(default=1.0, description="starting charge, a fraction of the capacity")
    rejoin_at: Fraction = Field(default=0.5, description="an emptied device is back online from this charge")
    harvest_w: Annotated[float, Field(ge=0.0)] = Field(default=0.0, description="constant harvest power (W)")
    harvest_profile_w: Annotated[list[Annotated[float, Field(ge=0.0)]], Field(min_length=24, max_length=24)] | None = (
        Field(default=None, description="24 hourly harvest powers (W), the simulated clock starting at midnight")
    )

    @model_validator(mode="after")
    def _one_of_each(self) -> BatterySpec:
        if (self.capacity_j is None) == (self.capacity_mah is None):
            raise ValueError("give the capacity once: capacity_j, or capacity_mah (with voltage)")
        if self.harvest_profile_w is not None and self.harvest_w:
            raise ValueError("give harvest_w (constant) or harvest_profile_w (24 hourly values), not both")
        return self


def check_batteries(spec: Any) -> None:
    """Batteries are applied by the centralized twins' round loop; refuse them elsewhere."""
    where = next((i for i, g in enumerate(spec.fleet.groups) if g.battery is not None), None)
    if where is not None and spec.algorithm.family != "centralized":
        raise ValueError(
            f"fleet.groups.{where}.battery: batteries apply to fedavg and fedprox runs so far, "
            f"not {spec.algorithm.name}; remove the block"
        )
