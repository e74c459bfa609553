"""The ``attacks`` block: poisoned devices, for measuring what a robust rule withstands.

Each entry names a kind and its devices (``devices: [3, 7]`` or ``fraction: 0.1`` of the fleet,
drawn from the seed). The transform of an attacked device's update is one definition,
:func:`tinytwin.algorithms.attacks.attack_update`, applied by every twin; ``label_flip`` poisons
the device's data instead (label y becomes C-1-y, :func:`tinytwin.algorithms.attacks.flip_labels`),
once, when the experiment is prepared, so every twin trains on the same flipped shard.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

AttackKind = Literal["sign_flip", "scale", "gaussian", "nan", "free_ride", "label_flip", "huge", "stale"]


class AttackSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: AttackKind
    devices: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list, description="attacked device ids")
    fraction: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.0, description="or this fraction of the fleet (seeded draw)"
    )
    scale: Annotated[float, Field(ge=-1e15, le=1e15)] = Field(
        default=-1.0, description="sign_flip / scale: the update is multiplied by this"
    )
    sigma: Annotated[float, Field(ge=0.0, le=1e6)] = Field(default=1.0, description="gaussian: noise std added")
    delay: Annotated[int, Field(ge=1, le=100)] = Field(
        default=1, description="stale: it sends the update of its delay-th previous participation (zeros before)"
    )
