"""``algorithm.hierarchical.orchestration``: the adaptive orchestrator of a hierarchical run.

Seed 004 §2 / reference §5: on every join or leave the orchestrator recomputes the cluster
configuration with a strategy, charges the change cost, and (with RVA) validates a costlier
configuration over a window of rounds, reverting when the original is predicted better at the
round the budget runs out. Training stops once the communication-cost budget is spent.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator


class RvaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: StrictBool = True
    window: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=5, description="rounds W the new configuration runs before RVA keeps or reverts it"
    )


class CostChange(BaseModel):
    """A client's link costs change from a round on (a link degrades, a tariff changes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    round: Annotated[int, Field(ge=1)]
    device: Annotated[int, Field(ge=0)]
    client_costs: list[Annotated[float, Field(ge=0.0)]] = Field(
        min_length=1, description="the device's new cost to each local aggregator"
    )


class OrchestrationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["min_comm_cost", "balanced"] = Field(
        default="min_comm_cost", description="how a configuration is recomputed after a join or leave"
    )
    budget: Annotated[float, Field(gt=0.0, le=1e15)] | None = Field(
        default=None, description="communication-cost budget (cost units); training stops once it is spent"
    )
    target_accuracy: Annotated[float, Field(gt=0.0, le=1.0)] | None = Field(
        default=None, description="stop once the global model reaches this test accuracy (least cost to a target)"
    )
    energy_budget_j: Annotated[float, Field(gt=0.0, le=1e15)] | None = Field(
        default=None, description="the fleet's energy budget (J, from the cost model); training stops once spent"
    )
    model_mb: Annotated[float, Field(gt=0.0, le=1e9)] | None = Field(
        default=None, description="M of the cost model (the reference's model size factor); default: the model's MB"
    )
    rva: RvaSpec = Field(default_factory=lambda: RvaSpec(enabled=False))
    cost_changes: list[CostChange] = Field(
        default_factory=list, description="link costs that change at a round; each triggers a reconfiguration"
    )

    @model_validator(mode="after")
    def _rva_needs_an_objective(self) -> OrchestrationSpec:
        if self.rva.enabled and self.budget is None and self.target_accuracy is None:
            raise ValueError(
                "orchestration.rva: RVA compares configurations against a budget or a target; "
                "set orchestration.budget or orchestration.target_accuracy"
            )
        return self
