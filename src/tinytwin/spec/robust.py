"""``algorithm.aggregator.norm_bound``: bound the L2 norm of every received update (every twin)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class NormBoundSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["clip", "reject"] = Field(default="clip", description="clip onto the bound, or drop the update")
    multiple: Annotated[float, Field(gt=0.0, le=1e6)] | None = Field(
        default=None, description="the bound as a multiple of the round's median update norm"
    )
    max_norm: Annotated[float, Field(gt=0.0, le=1e30)] | None = Field(default=None, description="an absolute bound")

    @model_validator(mode="after")
    def _one_bound(self) -> NormBoundSpec:
        if (self.multiple is None) == (self.max_norm is None):
            raise ValueError(
                "algorithm.aggregator.norm_bound: give exactly one of multiple (× the median norm) or max_norm"
            )
        return self
